"""What one local delivery costs as qmail-lspawn pays it: stock qmail, qmailsql, and
qmailsql with its cache off, measured in one run.

    python bench/delivery.py [--messages 1000] [--rounds 7] [--users 200]

bench/lspawn_harness.c does per message what qmail-lspawn(8) does: fork; in the child
look the local part up in users/cdb, else fork+exec bin/qmail-getpw (stdout on a
pipe, as a qmailp-like uid when run as root) and read its answer; then exec
bin/qmail-local with qmail-lspawn's argv (-- user homedir local dash ext domain
sender aliasempty), the mailbox's uid and gid, the message on fd 0 and a report
pipe on fds 1 and 2. It runs against three qmail homes:

  stock     users/cdb (qmail-users format, built here) holds every user; bin/qmail-local
            is the stand-in (bench/maildir_writer.c), no qmail-getpw runs
  qmailsql  a sandbox: compiled qmail-getpw and the qmail-local wrapper, which execs
            the same stand-in; qmailsqld with its cache (warmed before timing)
  nocache   the same helpers against a second qmailsqld on the same MariaDB whose
            control/sqlserver says cache_ttl 0: every request goes to the DB

The stand-in writes the message into the user's Maildir as stock qmail-local does
(tmp/, fsync with --fsync, link into new/), so a delivery is a real one; the bench
checks afterwards that every message arrived in the right Maildir.

CPU per delivery is the harness's own CPU time plus that of all its children
(getrusage RUSAGE_SELF + RUSAGE_CHILDREN: the spawn child, qmail-getpw, the
wrapper, the stand-in). qmailsqld and mariadbd are not children: their CPU comes from
/proc/PID/stat before and after each run and is shown separately, per delivery and
per request (two requests per qmailsql delivery: getpw and local). spawn_floor is
one fork+exec+wait of bench/exec_floor.c by the same harness, in the same run;
added_over_floor = (qmailsql - stock) / spawn_floor, whose floor is 2.0 (qmailsql
adds two program starts: qmail-getpw, and the wrapper's exec of the stock program).
Each mode runs ROUNDS times, modes alternating (order rotated each round); figures
are medians over rounds. Prints a table, then one last line of JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import benchlib
from qmailsql.core import cdb, db
from qmailsql.sandbox import host as sandbox
from qmailsql.core import config as configmod

QMAILP_UID, NOFILES_GID = 7791, 2108   # qmail-getpw runs as these, like qmailp/nofiles
BASE_UID = 7200                         # mailbox i belongs to uid BASE_UID + i
MODES = ("stock", "qmailsql", "nocache")
REQUESTS_PER_DELIVERY = 2               # getpw, then the wrapper's local


def message(size):
    head = (b"From: bench@example.net\nTo: user@example.org\nSubject: delivery bench\n"
            b"Message-ID: <bench@example.net>\n\n")
    line = b"x" * 71 + b"\n"
    return head + line * max(0, (size - len(head)) // len(line))


def users_cdb(path, users):
    """users/cdb as qmail-newu writes it for `=name:name:uid:gid:home:::` lines."""
    pairs = [(b"!" + name.lower().encode() + b"\0",
              b"\0".join([name.encode(), b"%d" % uid, b"%d" % gid, home.encode(), b"", b""]))
             for name, uid, gid, home in users]
    pairs.append((b"", b""))  # no wildcard entries
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cdb.write(path, pairs)


class Setup:
    def __init__(self, args, work, root):
        self.args = args
        self.work = work
        for name, src in (("harness", "lspawn_harness.c"), ("standin", "maildir_writer.c"),
                          ("exec_floor", "exec_floor.c")):
            benchlib.cc(work / name, [benchlib.HERE / src], static=True)
        self.harness = work / "harness"
        homes = benchlib.make_homes(str(work), args.users, BASE_UID)
        self.users = [("duser%d" % i, uid, gid, home) for i, (uid, gid, home) in enumerate(homes)]
        self.locals = [u[0] for u in self.users]
        self.message = work / "message"
        self.message.write_bytes(message(args.size))
        os.chmod(self.message, 0o644)

        cfg = configmod.load(str(root))
        conn = db.connect(configmod.as_admin(cfg), cfg.write_server)  # the sandbox's administrator
        try:
            benchlib.insert_rows(conn, "mailbox", ("username", "uid", "gid", "home", "password",
                                                   "password_type"),
                                 [(n, u, g, h, "", "Password") for n, u, g, h in self.users])
        finally:
            conn.close()

        self.stock = work / "stock"
        (self.stock / "bin").mkdir(parents=True)
        os.link(work / "standin", self.stock / "bin" / "qmail-local")
        users_cdb(str(self.stock / "users" / "cdb"), self.users)

        # the same helpers against a second daemon whose cache is off
        self.nocache = benchlib.second_home(root, work / "nc", extra="cache_ttl 0\n")

        self.qmailsql = sandbox.Paths(root)
        base = {k: v for k, v in os.environ.items() if not k.startswith("QMAILSQL_")}
        if not args.fsync:
            base["QMAILSQL_STANDIN_NOFSYNC"] = "1"
        standin = {"QMAILSQL_QMAIL_LOCAL": str(work / "standin")}
        self.env = {
            "stock": base,
            "qmailsql": dict(base, QMAILSQL_SOCKET=str(self.qmailsql.daemon_socket), **standin),
            "nocache": dict(base, QMAILSQL_SOCKET=str(self.nocache.daemon_socket), **standin),
        }
        self.home = {"stock": self.stock, "qmailsql": self.qmailsql.root,
                     "nocache": self.nocache.root}
        self.db_pid = benchlib.pid_of(self.qmailsql.db_pid)
        self.sent = {name: 0 for name in self.locals}
        sandbox.start_daemon(self.nocache)  # last: close() stops it
        self.daemon = {"qmailsql": benchlib.pid_of(self.qmailsql.daemon_pid),
                       "nocache": benchlib.pid_of(self.nocache.daemon_pid)}

    def close(self):
        sandbox.stop_daemon(self.nocache)

    def harness_run(self, argv, env):
        r = subprocess.run([str(self.harness)] + [str(a) for a in argv], capture_output=True,
                           text=True, env=env, stdin=subprocess.DEVNULL)
        if r.returncode:
            raise SystemExit("bench: the harness failed (%d): %s" % (r.returncode, r.stderr))
        count, self_ns, kids_ns, wall_ns = (int(x) for x in r.stdout.split())
        return {"cpu_ms": (self_ns + kids_ns) / count / 1e6, "per_s": count / (wall_ns / 1e9)}

    def deliver(self, mode, count):
        """COUNT deliveries in MODE: {cpu_ms, per_s, daemon_ms, db_ms} per delivery."""
        argv = ["-p", "%d:%d" % (QMAILP_UID, NOFILES_GID)] if os.geteuid() == 0 else []
        argv += [self.home[mode], self.message, count] + self.locals
        pid = self.daemon.get(mode)
        d0 = benchlib.cpu_seconds(pid) if pid else 0.0
        m0 = benchlib.cpu_seconds(self.db_pid)
        out = self.harness_run(argv, self.env[mode])
        out["daemon_ms"] = ((benchlib.cpu_seconds(pid) - d0) * 1000 / count) if pid else 0.0
        out["db_ms"] = (benchlib.cpu_seconds(self.db_pid) - m0) * 1000 / count
        for i in range(count):
            self.sent[self.locals[i % len(self.locals)]] += 1
        return out

    def floor(self, count):
        return self.harness_run(["-f", count, self.work / "exec_floor"], self.env["stock"])

    def alone(self, what, count):
        """COUNT fork+exec+wait of one program on its own, as root, warm cache: getpw
        (qmail-getpw), wrapper (the qmail-local wrapper, which execs the stand-in) or
        standin (the stand-in itself); both of the last two deliver an empty message."""
        name, uid, gid, home = self.users[0]
        local = ["--", name, home, name, "", "", "example.org", "bench@example.net",
                 "./Maildir/"]
        argv = {"getpw": [self.qmailsql.bin / "qmail-getpw", name],
                "wrapper": [self.qmailsql.bin / "qmail-local"] + local,
                "standin": [self.work / "standin"] + local}[what]
        if what != "getpw":
            self.sent[name] += count
        return self.harness_run(["-f", count] + argv, self.env["qmailsql"])

    def check_maildirs(self):
        """Every message in the right Maildir/new, none left in tmp/."""
        for name, uid, gid, home in self.users:
            got = len(os.listdir(os.path.join(home, "Maildir", "new")))
            left = os.listdir(os.path.join(home, "Maildir", "tmp"))
            if got != self.sent[name] or left:
                raise SystemExit("bench: %s's Maildir has %d messages in new/ (%d sent) and %d "
                                 "in tmp/" % (name, got, self.sent[name], len(left)))
        return sum(self.sent.values())


def measure(args, work, root):
    s = Setup(args, work, root)
    try:  # from here on, close() stops the second daemon
        for mode in MODES:  # untimed: every user cached, files and DB pages warm
            s.deliver(mode, max(args.warmup, args.users))
        s.floor(args.warmup)
        alone = ("getpw", "wrapper", "standin")
        for what in alone:
            s.alone(what, args.warmup)
        samples = {m: [] for m in MODES + ("floor",) + alone}
        for r in range(args.rounds):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            for mode in order:
                samples[mode].append(s.deliver(mode, args.messages))
            samples["floor"].append(s.floor(args.messages))
            for what in alone:
                samples[what].append(s.alone(what, args.messages))
        delivered = s.check_maildirs()
    finally:
        s.close()
    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in samples.items()}
    return med, delivered


def summarize(med, args, delivered):
    def r(x, n=4):
        return round(x, n)
    floor = med["floor"]["cpu_ms"]
    out = {"stock_cpu_ms": r(med["stock"]["cpu_ms"]),
           "qmailsql_cpu_ms": r(med["qmailsql"]["cpu_ms"]),
           "nocache_cpu_ms": r(med["nocache"]["cpu_ms"]),
           "spawn_floor_cpu_ms": r(floor)}
    stock = med["stock"]["cpu_ms"]
    out["added_over_floor"] = r((med["qmailsql"]["cpu_ms"] - stock) / floor, 3)
    out["nocache_added_over_floor"] = r((med["nocache"]["cpu_ms"] - stock) / floor, 3)
    for m in MODES:
        out[m + "_deliveries_per_s"] = round(med[m]["per_s"], 1)
    for m in ("qmailsql", "nocache"):
        out[m + "_over_stock"] = r(med[m]["cpu_ms"] / stock, 3)
        out[m + "_per_s_over_stock"] = r(med[m]["per_s"] / med["stock"]["per_s"], 3)
        out[m + "_daemon_cpu_ms_per_request"] = r(med[m]["daemon_ms"] / REQUESTS_PER_DELIVERY)
        out[m + "_db_cpu_ms_per_delivery"] = r(med[m]["db_ms"])
        out[m + "_added_over_floor_with_daemon"] = r(
            (med[m]["cpu_ms"] + med[m]["daemon_ms"] + med[m]["db_ms"] - stock) / floor, 3)
    for what in ("getpw", "wrapper", "standin"):
        out[what + "_alone_cpu_ms"] = r(med[what]["cpu_ms"])
    out.update(messages=args.messages, rounds=args.rounds, users=args.users,
               delivered=delivered, fsync=bool(args.fsync))
    return out


def report(out, med):
    floor = out["spawn_floor_cpu_ms"]
    print("%-9s %14s %8s %13s %16s %13s" % ("mode", "cpu ms/deliv.", "x stock", "deliveries/s",
                                            "daemon ms/req", "db ms/deliv."))
    for m in MODES:
        print("%-9s %14.3f %8s %13.0f %16s %13.3f" % (
            m, med[m]["cpu_ms"], "%.3f" % (med[m]["cpu_ms"] / out["stock_cpu_ms"]),
            med[m]["per_s"],
            "%.3f" % (med[m]["daemon_ms"] / REQUESTS_PER_DELIVERY) if m != "stock" else "-",
            med[m]["db_ms"]))
    print("%-9s %14.3f %8s %13.0f   one fork+exec+wait of a static trivial program"
          % ("floor", floor, "", med["floor"]["per_s"]))
    added = out["qmailsql_cpu_ms"] - out["stock_cpu_ms"]
    getpw = out["getpw_alone_cpu_ms"]
    wrapper = out["wrapper_alone_cpu_ms"] - out["standin_alone_cpu_ms"]
    print("added_over_floor = (qmailsql - stock) / floor = %.3f / %.3f = %.3f  (target <= 2.3;"
          " two program starts = 2.0)" % (added, floor, out["added_over_floor"]))
    print("  of that, run alone: qmail-getpw (fork+exec, request) %.3f ms = %.2f floors; the "
          "wrapper (exec, request; wrapper+stand-in minus stand-in) %.3f ms = %.2f floors; "
          "the rest (the answer's pipe, setuid, noise) %.3f ms"
          % (getpw, getpw / floor, wrapper, wrapper / floor, added - getpw - wrapper))
    print("  outside the harness: qmailsqld %.3f ms per delivery (%.3f per request), "
          "mariadbd %.3f ms; with them, added_over_floor = %.3f"
          % (med["qmailsql"]["daemon_ms"], out["qmailsql_daemon_cpu_ms_per_request"],
             med["qmailsql"]["db_ms"], out["qmailsql_added_over_floor_with_daemon"]))
    print("  cache off: added_over_floor %.3f, with qmailsqld (%.3f ms/request) and mariadbd "
          "(%.3f ms/delivery) %.3f" % (out["nocache_added_over_floor"],
                                       out["nocache_daemon_cpu_ms_per_request"],
                                       out["nocache_db_cpu_ms_per_delivery"],
                                       out["nocache_added_over_floor_with_daemon"]))
    print("%d messages delivered, each found in its Maildir" % out["delivered"])
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--messages", type=int, default=1000, help="deliveries per mode and round "
                   "(default 1000)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7: on "
                   "a busy machine the median of many short rounds drifts least)")
    p.add_argument("--users", type=int, default=200, help="mailboxes the messages cycle "
                   "through (default 200)")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    p.add_argument("--warmup", type=int, default=200, help="untimed deliveries per mode first "
                   "(default 200, at least one per user)")
    p.add_argument("--fsync", action="store_true", help="the stand-in fsyncs each message, "
                   "as stock qmail-local does (adds disk waits, little CPU)")
    args = p.parse_args(argv)
    if min(args.messages, args.rounds, args.users) < 1:
        p.error("--messages, --rounds and --users must be at least 1")
    if os.geteuid() == 0:  # qmailsqld answers getpw to qmail-getpw's uid
        os.environ["QMAILSQL_CLIENT_UIDS"] = str(QMAILP_UID)
    with benchlib.scratch() as work, benchlib.sandbox_up("qsd-") as (root, _):
        med, delivered = measure(args, work, root)
    out = summarize(med, args, delivered)
    report(out, med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
