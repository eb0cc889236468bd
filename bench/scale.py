"""Does a lookup cost more when the directory or a domain is big?

    python bench/scale.py [--sizes 1000,100000,1000000] [--domain 100000] [--samples 300]

Brings up a sandbox and grows its tables step by step: mailbox rows m0000000...
(plain passwords; homes shared by a few real directories, so every row passes
qmail-getpw's home checks) and for each one a virtual row, u0000000@dNNNNNN.example,
in domains of --domain-users mailboxes. At each size, and once more after adding one
domain (big.example) of --domain users, it asks qmailsqld, on one open connection,
for users it has not been asked about since its cache was flushed (each measure has
its own users, so every answer is a cache miss and comes from MariaDB):

  plain_lookup    getpw mNNNNNNN
  virtual_lookup  getpw dNNNNNN.example-uNNNNNNN (as qmail-send passes u@host for a
                  virtual domain): known-host check, virtual row, mailbox
  plain_login     auth mNNNNNNN, right password
  virtual_login   auth uNNNNNNN@dNNNNNN.example, right password

Each figure is the median request round trip in ms, and its ratio to the same
measure at the first (smallest) size; the target is a ratio of at most 1.3 for every
figure. Measures alternate in rounds. The rows are loaded with multi-row
parameterised INSERTs; the server gets an InnoDB buffer pool big enough for the
largest table (--buffer-pool), as a server for that many mailboxes would.

Prints a table, then one last line of JSON:
  {"sizes": [...], "domain": N, "plain_lookup_ms": {"1k": ..., "dom100k": ...},
   "plain_lookup_ratio": {...}, ..., "max_ratio": ..., "worst": "...", "load_s": ...}
"""
import argparse
import json
import random
import statistics
import sys
import time

import benchlib
from qmailsql import client, db, sandbox
from qmailsql import config as configmod

MEASURES = ("plain_lookup", "virtual_lookup", "plain_login", "virtual_login")
HOMES = 8
BASE_UID = 7100
PASSWORD = b"secret"
BIG = "big.example"


def label(n):
    for unit, name in ((1000000, "m"), (1000, "k")):
        if n >= unit and n % unit == 0:
            return "%d%s" % (n // unit, name)
    return str(n)


class Directory:
    """The growing tables; user I is (mailbox, virtual user, virtual host)."""

    def __init__(self, cfg, homes, domain_users):
        self.cfg = cfg
        self.homes = homes
        self.domain_users = domain_users
        self.size = 0      # small-domain users loaded
        self.big = 0       # users of BIG loaded

    def user(self, i):
        return ("m%07d" % i, "u%07d" % i, "d%06d.example" % (i // self.domain_users))

    def big_user(self, i):
        return ("b%07d" % i, "u%07d" % i, BIG)

    def _load(self, user, lo, hi):
        """Mailbox and virtual rows of users USER(i), LO <= i < HI."""
        conn = db.connect(self.cfg, self.cfg.write_server)
        try:
            benchlib.insert_rows(conn, "mailbox", ("username", "uid", "gid", "home", "password",
                                                   "password_type"),
                                 ((user(i)[0],) + self.homes[i % len(self.homes)]
                                  + (PASSWORD.decode(), "Password") for i in range(lo, hi)),
                                 progress=self.progress)
            benchlib.insert_rows(conn, "virtual", ("username", "virtual_username",
                                                   "virtual_host"),
                                 (user(i) for i in range(lo, hi)), progress=self.progress)
        finally:
            conn.close()

    @staticmethod
    def progress(n):
        if n % 200000 == 0:
            sys.stderr.write("  %d rows\n" % n)

    def grow(self, size):
        self._load(self.user, self.size, size)
        self.size = size

    def add_big(self, count):
        self._load(self.big_user, 0, count)
        self.big = count


def requests(kind, users):
    """(request fields, expected first answer field) for each (mailbox, vuser, vhost)."""
    out = []
    for mailbox, vuser, vhost in users:
        m = mailbox.encode()
        if kind == "plain_lookup":
            out.append(([b"getpw", m], m))
        elif kind == "virtual_lookup":
            out.append(([b"getpw", ("%s-%s" % (vhost, vuser)).encode()], m))
        elif kind == "plain_login":
            out.append(([b"auth", m, PASSWORD, b""], m))
        else:
            out.append(([b"auth", ("%s@%s" % (vuser, vhost)).encode(), PASSWORD, b""], m))
    return out


def measure(sock, user, count, samples, rounds, rnd):
    """{measure: median ms} over SAMPLES of the users USER(i), i < COUNT, per measure,
    each a cache miss."""
    picked = {kind: requests(kind, [user(i) for i in rnd.sample(range(count),
                                                                min(samples, count))])
              for kind in MEASURES}
    times = {kind: [] for kind in MEASURES}
    with client.Connection(sock) as conn:
        def call(request):
            fields, want = request
            status, body = conn.call(fields)
            if status or body.split(b"\0")[0] != want:
                raise SystemExit("bench: %r answered %d %r, expected user %r"
                                 % (fields[:2], status, body[:200], want))
        for r in range(rounds):
            for kind in MEASURES[r % 4:] + MEASURES[:r % 4]:
                client.flush(sock)  # what another measure asked is not this one's hit
                times[kind] += benchlib.timed_calls(call, picked[kind][r::rounds])
    return {kind: statistics.median(v) for kind, v in times.items()}


def run(args):
    def bigger_pool(paths):
        sandbox.start_db(paths, extra_args=["--innodb-buffer-pool-size=%s" % args.buffer_pool])
    rnd = random.Random(args.seed)
    figures = {}
    order = []
    with benchlib.scratch("qsscale-") as work, benchlib.sandbox_up("qsc-", bigger_pool) as (
            root, env):
        cfg = configmod.load(str(root))
        directory = Directory(cfg, [(uid, gid, home) for uid, gid, home in
                                    benchlib.make_homes(str(work), HOMES, BASE_UID)],
                              args.domain_users)
        sock = env["QMAILSQL_SOCKET"]
        t0 = time.monotonic()
        load_s = 0.0
        steps = [(label(n), n, None) for n in args.sizes]
        if args.domain:
            steps.append(("dom" + label(args.domain), None, args.domain))
        for name, size, big in steps:
            t = time.monotonic()
            if size is not None:
                directory.grow(size)
                user, count = directory.user, size
            else:
                directory.add_big(big)
                user, count = directory.big_user, big
            load_s += time.monotonic() - t
            sys.stderr.write("%s: %d mailboxes in all, measuring\n"
                             % (name, directory.size + directory.big))
            figures[name] = measure(sock, user, count, args.samples, args.rounds, rnd)
            order.append(name)
        total_s = time.monotonic() - t0
    base = order[0]
    out = {"sizes": args.sizes, "domain": args.domain, "domain_users": args.domain_users,
           "samples": args.samples, "base": base}
    worst = (0.0, "")
    for kind in MEASURES:
        out[kind + "_ms"] = {n: round(figures[n][kind], 4) for n in order}
        out[kind + "_ratio"] = {n: round(figures[n][kind] / figures[base][kind], 3)
                                for n in order}
        for n in order:
            worst = max(worst, (out[kind + "_ratio"][n], "%s %s" % (kind, n)))
    out.update(max_ratio=worst[0], worst=worst[1], load_s=round(load_s, 1),
               total_s=round(total_s, 1))
    return out, order


def report(out, order):
    print("median ms of a cold request (ratio to %s); target: every ratio <= 1.3" % out["base"])
    print("%-15s" % "measure" + "".join("%18s" % n for n in order))
    for kind in MEASURES:
        print("%-15s" % kind + "".join("%10.3f (%4.2fx)" % (out[kind + "_ms"][n],
                                                            out[kind + "_ratio"][n])
                                       for n in order))
    print("worst: %s at %.2fx; rows loaded in %.0fs, run %.0fs"
          % (out["worst"], out["max_ratio"], out["load_s"], out["total_s"]))
    print(json.dumps(out))


def sizes(text):
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("--sizes takes numbers, e.g. 1000,100000")
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("--sizes needs at least one size of 1 or more")
    return values


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--sizes", type=sizes, default=[1000, 100000, 1000000],
                   help="mailbox counts to measure at, smallest first is the base "
                        "(default 1000,100000,1000000)")
    p.add_argument("--domain", type=int, default=100000, help="users of the one big domain "
                   "added at the end (default 100000; 0: none)")
    p.add_argument("--domain-users", type=int, default=10, help="users per domain in the "
                   "sized tables (default 10)")
    p.add_argument("--samples", type=int, default=300, help="cold requests per measure and "
                   "size (default 300; at most the size)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--buffer-pool", default="1G", help="MariaDB's innodb_buffer_pool_size "
                   "(default 1G)")
    p.add_argument("--seed", type=int, default=1, help="which users are asked (default 1)")
    args = p.parse_args(argv)
    if min(args.samples, args.rounds, args.domain_users) < 1 or args.domain < 0:
        p.error("--samples, --rounds and --domain-users must be at least 1, --domain 0 or more")
    out, order = run(args)
    report(out, order)
    return 0


if __name__ == "__main__":
    sys.exit(main())
