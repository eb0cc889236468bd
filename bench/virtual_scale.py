"""Does a virtual lookup stay cheap when one domain has many users?

Brings up a sandbox (private MariaDB, no daemon: every lookup is a cache miss and
goes to the DB), loads ROWS virtual rows for big.example and one for small.example,
all mapped to one mailbox, then times qmail-getpw's resolution (qmailsql.Session.getpw)
of an address at each domain, and of an unknown address at the big one, over RUNS
runs each. The figure is the ratio of the big domain's median to the small one's,
measured in the same run: it should stay near 1 whatever ROWS is.

    python bench/virtual_scale.py [--rows 100000] [--runs 200]

The last line is JSON: {"rows": N, "small_ms": ..., "big_ms": ..., "big_unknown_ms": ...,
"big_over_small": ...}.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import qmailsql
from qmailsql.core import db
from qmailsql.sandbox import host as sandbox
from qmailsql.core import config as configmod

BATCH = 5000
UID, GID = 7200, 7200


def load(root, rows):
    cfg = configmod.load(root)
    home = os.path.join(root, "home", "vuser")
    os.makedirs(home)
    if os.geteuid() == 0:
        os.chown(home, UID, GID)
    uid, gid = (UID, GID) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    conn = db.connect(configmod.as_admin(cfg), cfg.write_server)  # the sandbox's administrator
    try:
        cur = conn.cursor()
        for name, h in (("vuser", home), ("alias", home)):
            cur.execute("INSERT INTO mailbox (username, uid, gid, home) VALUES (%s,%s,%s,%s)",
                        (name, uid, gid, h))
        cur.execute("INSERT INTO virtual (username, ext, virtual_username, virtual_host) "
                    "VALUES ('vuser', '', 'u1', 'small.example')")
        conn.autocommit(False)
        for start in range(0, rows, BATCH):
            cur.executemany("INSERT INTO virtual (username, ext, virtual_username, "
                            "virtual_host) VALUES ('vuser', %s, %s, 'big.example')",
                            [("u%d" % i, "u%d" % i) for i in range(start, min(rows,
                                                                              start + BATCH))])
        conn.commit()
        cur.execute("ANALYZE TABLE virtual")
        cur.fetchall()
    finally:
        conn.close()


def median_ms(q, local, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        q.getpw(local)
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="qsvs-", dir="/tmp")
    try:
        sandbox.up(root, daemon=False)
        t = time.monotonic()
        load(root, args.rows)
        load_s = time.monotonic() - t
        with qmailsql.connect(root) as q:
            assert q.getpw(b"big.example-u7").ext == b"u7"
            median_ms(q, b"small.example-u1", 20)  # warm the connection and buffer pool
            small = median_ms(q, b"small.example-u1", args.runs)
            big = median_ms(q, b"big.example-u%d" % (args.rows // 2), args.runs)
            unknown = median_ms(q, b"big.example-nobody", args.runs)
    finally:
        sandbox.down(root)
    result = {"rows": args.rows, "load_s": round(load_s, 1), "small_ms": small,
              "big_ms": big, "big_unknown_ms": unknown,
              "big_over_small": round(big / small, 2)}
    print("virtual lookup, cache miss: %(small_ms)s ms at a 1-row domain, %(big_ms)s ms at a "
          "%(rows)d-row domain (%(big_over_small)sx), %(big_unknown_ms)s ms for an unknown "
          "address there" % result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
