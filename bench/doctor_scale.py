"""How fast is `qmailsql doctor` on a large directory?

Brings up a sandbox (private MariaDB + qmailsqld) in a short /tmp directory, loads
ROWS mailbox rows (default 1,000,000) with multi-row parameterised INSERTs, whose
homes all point at a few real directories (so every row passes the home checks and
the run measures the scan, not a flood of findings), runs the doctor once and prints
the elapsed time and rows/s, then tears the sandbox down.

    python bench/doctor_scale.py [ROWS]

The last line is JSON: {"rows": N, "load_s": ..., "doctor_s": ..., "rows_per_s": ...,
"findings": {...}}.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from qmailsql import db, doctor, passwords, sandbox
from qmailsql import config as configmod

HOMES = 8
BASE_UID = 7100
BATCH = 5000


def make_homes(root):
    """HOMES real homes (with Maildir), each owned by its own uid."""
    out = []
    os.chmod(root, 0o755)
    for i in range(HOMES):
        uid = BASE_UID + i if os.geteuid() == 0 else os.getuid()
        gid = BASE_UID + i if os.geteuid() == 0 else os.getgid()
        home = os.path.join(root, "home", "h%d" % i)
        for sub in ("", "/Maildir", "/Maildir/new", "/Maildir/cur", "/Maildir/tmp"):
            os.makedirs(home + sub, exist_ok=True)
            os.chown(home + sub, uid, gid)
        os.chmod(home, 0o700)
        out.append((uid, gid, home))
    os.chmod(os.path.join(root, "home"), 0o755)
    return out


def load(cfg, homes, rows):
    _, hashed = passwords.hash_password("sha512-crypt", b"secret")
    conn = db.connect(cfg, cfg.write_server)
    try:
        conn.autocommit(False)
        cur = conn.cursor()
        cur.execute("SET SESSION unique_checks=0")
        sql = ("INSERT INTO mailbox (username, uid, gid, home, password, password_type, "
               "suspended) VALUES ")
        done = 0
        started = time.monotonic()
        while done < rows:
            n = min(BATCH, rows - done)
            params = []
            for k in range(done, done + n):
                uid, gid, home = homes[k % len(homes)]
                params += ["user%07d" % k, uid, gid, home, hashed, "Crypt-Password", "N"]
            cur.execute(sql + ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * n), params)
            done += n
            if done % 100000 == 0:
                conn.commit()
                sys.stderr.write("\rloaded %d rows (%.0f rows/s)" % (
                    done, done / (time.monotonic() - started)))
        conn.commit()
        sys.stderr.write("\n")
        # the alias user, so a healthy directory has nothing to report but the bench's
        uid, gid, home = homes[0]
        cur.execute("INSERT INTO mailbox (username, uid, gid, home, password) VALUES "
                    "(%s,%s,%s,%s,'')", ("alias", uid, gid, home))
        conn.commit()
    finally:
        conn.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="?", type=int, default=1000000,
                    help="mailbox rows to load (default 1,000,000)")
    rows = ap.parse_args(argv).rows
    root = tempfile.mkdtemp(prefix="qsb-", dir="/tmp")
    try:
        print("sandbox %s ..." % root)
        env = sandbox.up(root)
        os.environ.update(env)
        cfg = configmod.as_admin(configmod.load(root))  # the sandbox's administrator
        homes = make_homes(root)
        # a stand-in for the stock qmail-local the wrapper runs (no qmail here)
        orig = os.path.join(root, "bin", "qmail-local.orig")
        with open(orig, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(orig, 0o755)
        t0 = time.monotonic()
        load(cfg, homes, rows)
        load_s = time.monotonic() - t0
        print("loaded %d mailbox rows in %.1fs" % (rows + 1, load_s))
        t0 = time.monotonic()
        report = doctor.run(root, progress=doctor.Progress())
        doctor_s = time.monotonic() - t0
        scanned = sum(report.rows.values())
        for f in report.capped():
            print("  finding: [%s] %s" % (f.check, f.what[:150]))
        print(report.summary())
        print("doctor on %d mailbox rows: %.2fs, %.0f rows/s" % (
            report.rows.get("mailbox", 0), doctor_s, scanned / doctor_s))
        print(json.dumps({"rows": report.rows.get("mailbox", 0), "load_s": round(load_s, 2),
                          "doctor_s": round(doctor_s, 2),
                          "rows_per_s": round(scanned / doctor_s),
                          "findings": dict(report.counts)}))
    finally:
        try:
            sandbox.down(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
