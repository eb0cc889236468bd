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

import benchlib
from qmailsql.core import db, passwords
from qmailsql.admin import doctor
from qmailsql.sandbox import host as sandbox
from qmailsql.core import config as configmod

HOMES = 8
BASE_UID = 7100


def load(cfg, homes, rows):
    _, hashed = passwords.hash_password("sha512-crypt", b"secret")
    conn = db.connect(cfg, cfg.write_server)
    started = time.monotonic()

    def progress(done):
        if done % 100000 == 0:
            sys.stderr.write("\rloaded %d rows (%.0f rows/s)" % (
                done, done / (time.monotonic() - started)))
    try:
        conn.autocommit(False)
        conn.cursor().execute("SET SESSION unique_checks=0")
        benchlib.insert_rows(
            conn, "mailbox", ("username", "uid", "gid", "home", "password", "password_type",
                              "suspended"),
            (("user%07d" % k,) + homes[k % len(homes)] + (hashed, "Crypt-Password", "N")
             for k in range(rows)), progress=progress)
        sys.stderr.write("\n")
        # the alias user, so a healthy directory has nothing to report but the bench's
        uid, gid, home = homes[0]
        conn.cursor().execute("INSERT INTO mailbox (username, uid, gid, home, password) "
                              "VALUES (%s,%s,%s,%s,'')", ("alias", uid, gid, home))
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
        homes = benchlib.make_homes(root, HOMES, BASE_UID)
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
