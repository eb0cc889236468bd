"""Does a lookup cost more when the directory or a domain is big?

    python bench/scale.py [--sizes 1000,100000,1000000] [--domain 100000] [--samples 300]

Brings up a sandbox and gives each case its own database on its MariaDB, its own
qmail home and its own qmailsqld, so that the cases can be measured in alternating
rounds (drift on a busy machine hits them all alike):

  each of --sizes N   N mailbox rows m0000000... (plain passwords; homes shared by a
                      few real directories, so every row passes qmail-getpw's home
                      checks) and for each a virtual row u0000000@dNNNNNN.example, in
                      domains of --domain-users mailboxes
  dom<D>              the smallest size's rows plus one domain, big.example, of
                      --domain D users (mailboxes b0000000..., virtual rows
                      u0000000@big.example); its figures are for that domain's users

Each case is asked, on one open connection to its daemon, about users it has not
been asked about since its cache was flushed (each measure its own users, the
cache flushed before each batch), so every answer is a cache miss from MariaDB:

  plain_lookup    getpw mNNNNNNN
  virtual_lookup  getpw <host>-uNNNNNNN, as qmail-send passes u@host of a virtual
                  domain: the known-host check, the virtual row, the mailbox
  plain_login     auth mNNNNNNN with the right password
  virtual_login   auth uNNNNNNN@<host> with the right password

Each figure is the median request round trip in ms, and its ratio to the same
measure in the first (smallest) size; the target is a ratio of at most 1.3 for every
figure. The rows are loaded with multi-row parameterised INSERTs; the server gets an
InnoDB buffer pool that holds every case (--buffer-pool), as a server for that many
mailboxes would.

Prints a table, then one last line of JSON:
  {"sizes": [...], "domain": D, "base": "1k", "plain_lookup_ms": {"1k": ..., "dom100k": ...},
   "plain_lookup_ratio": {...}, ..., "max_ratio": ..., "worst": "...", "load_s": ...}
"""
import argparse
import contextlib
import json
import random
import statistics
import sys
import time

import benchlib
from qmailsql.core import client, db, schema
from qmailsql.sandbox import host as sandbox
from qmailsql.core import config as configmod

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


def progress(n):
    if n % 200000 == 0:
        sys.stderr.write("  %d rows\n" % n)


class Case:
    """One database of SMALL users in small domains and BIG users in BIG, its qmail
    home and its daemon. User I is (mailbox, virtual user, virtual host)."""

    def __init__(self, name, small, big, domain_users):
        self.name, self.small, self.big, self.domain_users = name, small, big, domain_users
        self.db = "qmail_" + name

    def user(self, i):
        return ("m%07d" % i, "u%07d" % i, "d%06d.example" % (i // self.domain_users))

    def big_user(self, i):
        return ("b%07d" % i, "u%07d" % i, BIG)

    def asked(self):
        """(USER function, count) of the users the measures ask about."""
        return (self.big_user, self.big) if self.big else (self.user, self.small)

    def set_up(self, root, work, homes):
        paths = sandbox.Paths(root)
        cfg = configmod.load(str(root))
        sandbox.root_sql(paths, [("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % self.db, ())]
                         + [("GRANT SELECT, INSERT, CREATE, INDEX ON `%s`.* TO %%s@%%s" % self.db,
                             (cfg.login, host)) for host in ("localhost", "127.0.0.1")])
        self.paths = benchlib.second_home(root, work / self.name, db=self.db)
        cfg = configmod.load(str(self.paths.root))
        directory = db.Directory(cfg)
        try:
            schema.initdb(directory)
        finally:
            directory.close()
        conn = db.connect(cfg, cfg.write_server)
        try:
            for user, count in ((self.user, self.small), (self.big_user, self.big)):
                benchlib.insert_rows(conn, "mailbox", ("username", "uid", "gid", "home",
                                                       "password", "password_type"),
                                     ((user(i)[0],) + homes[i % len(homes)]
                                      + (PASSWORD.decode(), "Password") for i in range(count)),
                                     progress=progress)
                benchlib.insert_rows(conn, "virtual", ("username", "virtual_username",
                                                       "virtual_host"),
                                     (user(i) for i in range(count)), progress=progress)
        finally:
            conn.close()
        sandbox.start_daemon(self.paths)

    def stop(self):
        sandbox.stop_daemon(self.paths)


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


def rotated(items, r):
    r %= len(items)
    return list(items[r:]) + list(items[:r])


def measure(cases, samples, rounds, rnd):
    """{case name: {measure: median ms}}, the cases and measures alternating in rounds."""
    picked, times = {}, {}
    for case in cases:
        user, count = case.asked()
        for kind in MEASURES:
            chosen = [user(i) for i in rnd.sample(range(count), min(samples, count))]
            picked[case.name, kind] = requests(kind, chosen)
            times[case.name, kind] = []
    with contextlib.ExitStack() as stack:
        conns = {c.name: stack.enter_context(client.Connection(c.paths.daemon_socket))
                 for c in cases}
        for r in range(rounds):
            for case in rotated(cases, r):
                conn = conns[case.name]

                def call(request):
                    fields, want = request
                    status, body = conn.call(fields)
                    if status or body.split(b"\0")[0] != want:
                        raise SystemExit("bench: %s: %r answered %d %r, expected user %r"
                                         % (case.name, fields[:2], status, body[:200], want))
                for kind in rotated(MEASURES, r):
                    client.flush(case.paths.daemon_socket)  # another measure's users are not hits
                    times[case.name, kind] += benchlib.timed_calls(
                        call, picked[case.name, kind][r::rounds])
    return {c.name: {kind: statistics.median(times[c.name, kind]) for kind in MEASURES}
            for c in cases}


def run(args):
    def bigger_pool(paths):
        sandbox.start_db(paths, extra_args=["--innodb-buffer-pool-size=%s" % args.buffer_pool])
    cases = [Case(label(n), n, 0, args.domain_users) for n in args.sizes]
    if args.domain:
        cases.append(Case("dom" + label(args.domain), args.sizes[0], args.domain,
                          args.domain_users))
    t0 = time.monotonic()
    with benchlib.scratch("qsscale-") as work, \
            benchlib.sandbox_up("qsc-", bigger_pool) as (root, _), \
            contextlib.ExitStack() as running:
        homes = benchlib.make_homes(str(work), HOMES, BASE_UID)
        for case in cases:
            sys.stderr.write("%s: %d + %d mailboxes\n" % (case.name, case.small, case.big))
            case.set_up(root, work, homes)
            running.callback(case.stop)
        load_s = time.monotonic() - t0
        figures = measure(cases, args.samples, args.rounds, random.Random(args.seed))
    total_s = time.monotonic() - t0
    base = cases[0].name
    out = {"sizes": args.sizes, "domain": args.domain, "domain_users": args.domain_users,
           "samples": args.samples, "rounds": args.rounds, "base": base}
    worst = (0.0, "")
    for kind in MEASURES:
        out[kind + "_ms"] = {c.name: round(figures[c.name][kind], 4) for c in cases}
        out[kind + "_ratio"] = {c.name: round(figures[c.name][kind] / figures[base][kind], 3)
                                for c in cases}
        for c in cases:
            worst = max(worst, (out[kind + "_ratio"][c.name], "%s %s" % (kind, c.name)))
    out.update(max_ratio=worst[0], worst=worst[1], load_s=round(load_s, 1),
               total_s=round(total_s, 1))
    return out, [c.name for c in cases]


def report(out, order):
    print("median ms of a cold request (ratio to %s); target: every ratio <= 1.3" % out["base"])
    print("%-15s" % "measure" + "".join("%18s" % n for n in order))
    for kind in MEASURES:
        print("%-15s" % kind + "".join("%10.3f (%4.2fx)" % (out[kind + "_ms"][n],
                                                            out[kind + "_ratio"][n])
                                       for n in order))
    print("worst: %s at %.2fx; set-up and loading %.0fs, whole run %.0fs"
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
                   help="mailbox counts, one case each; the smallest is the base "
                        "(default 1000,100000,1000000)")
    p.add_argument("--domain", type=int, default=100000, help="users of the one big domain "
                   "(default 100000; 0: no such case)")
    p.add_argument("--domain-users", type=int, default=10, help="users per domain in the "
                   "sized cases (default 10)")
    p.add_argument("--samples", type=int, default=300, help="cold requests per measure and "
                   "case (default 300; at most the case's users)")
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
