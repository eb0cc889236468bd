"""Soak: the three compiled helpers hammering one qmailsqld, every answer checked.

    python bench/soak.py [--seconds 60] [--clients 4] [--users 200]

Brings up a primary and a replica of it (the daemon on the replica, whose
control/sqlserver names the primary as write_server), loads USERS mailboxes (half with
an alias row), then CLIENTS threads run, for SECONDS, random qmail-getpw, qmail-local
(with a stand-in for the stock program) and checkpassword (right and wrong passwords)
executions. The expected answer of each comes from the DB directly (qmailsql.Session,
on the replica alone), so the check is against the DB, not against a copy.

It also counts the SELECTs the primary ran (its Com_select, which nothing but the
daemon touches here) per delivery (qmail-getpw or qmail-local run): during the soak
(answers cached as configured), and then with the cache flushed before every
delivery, for existing users and for unknown ones. A replica's hits must cost the
primary nothing; only answers that would send mail to the alias user are asked there.

Prints counts, errors, those figures and the daemon's RSS before and after, then one
line of JSON. tests/test_soak.py runs a short one.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

import qmailsql
from qmailsql.admin import tables as admin
from qmailsql.core import config as configmod
from qmailsql.sandbox import demo, host as sandbox
from qmailsql.core.client import flush

UID, GID = 800, 100


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def load(q, root, users):
    homes = os.path.join(root, "home")
    os.makedirs(homes, exist_ok=True)
    for d in (root, homes):
        os.chmod(d, 0o711)
    for i in range(users):
        name = "user%d" % i
        home = os.path.join(homes, name)
        admin.add_mailbox(q.directory, name, UID, GID, home, "pw%d" % i, "Password",
                          replace=True)
        demo.make_home(home, UID, GID)
        if i % 2:
            admin.add_alias(q.directory, name, "box", ".", "/Maildir/")
    admin.add_mailbox(q.directory, "alias", UID, GID, os.path.join(homes, "user0"),
                      replace=True)


def primary_selects(primary):
    """The primary's Com_select counter (SHOW STATUS is not a SELECT: it adds nothing)."""
    rows = sandbox.root_sql(primary, [("SHOW GLOBAL STATUS LIKE 'Com_select'", ())])
    return int(rows[0][1])


def replica_only(root):
    """A Session on the first server of ROOT's control/sqlserver alone: the checks of
    the soak must not add queries on the primary."""
    cfg = configmod.load(str(root))
    cfg.servers = cfg.servers[:1]
    cfg.write_server = cfg.servers[0]
    return qmailsql.Session(config=cfg)


def expected_getpw(q, local):
    try:
        return 0, q.getpw(local.encode()).fields()
    except qmailsql.Refusal as r:
        return r.code, b""


def soak(root, seconds, clients, users, seed=1, primary=None):
    """Run the soak against the daemon of ROOT; PRIMARY (sandbox Paths): also count the
    SELECTs that primary runs."""
    paths = sandbox.Paths(root)
    env = dict(os.environ, QMAILSQL_SOCKET=str(paths.daemon_socket))
    local_env = dict(env, QMAILSQL_QMAIL_LOCAL=demo.write_stand_in(str(root)))
    bin_ = {name: str(paths.bin / name) for name in ("qmail-getpw", "qmail-local",
                                                     "checkpassword")}
    counts = {"getpw": 0, "local": 0, "checkpassword": 0}
    errors = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n):
        rnd = random.Random(seed * 1000 + n)
        with replica_only(root) as q:  # the DB's own answer, for checking
            while time.monotonic() < deadline:
                i = rnd.randrange(users + users // 4)  # some unknown users too
                kind = rnd.choice(("getpw", "local", "checkpassword"))
                try:
                    problem = one(q, rnd, kind, i)
                except Exception as e:  # a crash of the check itself is an error too
                    problem = "%s: %r" % (kind, e)
                with lock:
                    counts[kind] += 1
                    if problem:
                        errors.append(problem)

    def getpw(q, local):
        r = subprocess.run([bin_["qmail-getpw"], local], capture_output=True, env=env,
                           timeout=60)
        want = expected_getpw(q, local)
        if (r.returncode, r.stdout) != want:
            return "getpw %s: got %d %r, DB says %d %r" % (local, r.returncode,
                                                          r.stdout[:60], *want)
        return None

    def local(q, name):
        """qmail-local for an address that exists: NAME-box where NAME has that row,
        else plain NAME (stock qmail-local would bounce NAME-box there)."""
        home = os.path.join(root, "home", name)
        dash, ext = ("-", "box") if int(name[4:]) % 2 else ("", "")
        argv = [bin_["qmail-local"], "--", name, home, name + dash + ext, dash, ext,
                "example.org", "s@example.net", "./Maildir/"]
        r = subprocess.run(argv, capture_output=True, env=local_env, timeout=60)
        got = r.stdout.split(b"\0")
        rows = q.directory.query("SELECT COUNT(*) FROM alias WHERE username=%s", (name,))
        want_aliasempty = b"./Maildir/\n" if rows[0][0] else b"./Maildir/"
        if r.returncode or got[8:9] != [want_aliasempty]:
            return "local %s: exit %d aliasempty %r, want %r" % (
                name, r.returncode, got[8:9], want_aliasempty)
        return None

    def one(q, rnd, kind, i):
        name = "user%d" % i
        if kind == "getpw":
            return getpw(q, name + rnd.choice(("", "-box", "-x-y")))
        elif kind == "local":
            if i >= users:
                return None
            return local(q, name)
        else:
            right = i < users and rnd.random() < 0.7
            password = ("pw%d" % i if right else "wrong").encode()
            # login and password go in on stdin, which the shell moves to descriptor 3
            # (no preexec_fn: it is not safe with threads)
            r = subprocess.run(["/bin/sh", "-c", 'exec "$0" /bin/true 3<&0 </dev/null',
                                bin_["checkpassword"]], capture_output=True, env=env,
                               input=name.encode() + b"\0" + password + b"\0\0", timeout=60)
            # the limiter may refuse a right password after wrong ones from the same
            # login: 1 is then correct too; 0 for a wrong password never is
            if (right and r.returncode not in (0, 1)) or (not right and r.returncode != 1):
                return "checkpassword %s right=%s: exit %d %r" % (name, right, r.returncode,
                                                                  r.stderr[:80])
        return None

    def uncached(q, names, with_local):
        """Primary SELECTs per delivery, the daemon's cache flushed before each one."""
        before = primary_selects(primary)
        n = 0
        for name in names:
            for suffix in ("", "-box", "-x-y"):
                flush(str(paths.daemon_socket))
                errors.extend(filter(None, [getpw(q, name + suffix)]))
                n += 1
            if with_local:
                flush(str(paths.daemon_socket))
                errors.extend(filter(None, [local(q, name)]))
                n += 1
        return round((primary_selects(primary) - before) / n, 3)

    pid = int(paths.daemon_pid.read_text())
    rss_before = rss_kb(pid)
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    p0 = primary_selects(primary) if primary else 0
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    result = {"seconds": round(elapsed, 1), "clients": clients, "runs": sum(counts.values()),
              "getpw": counts["getpw"], "local": counts["local"],
              "checkpassword": counts["checkpassword"]}
    if primary:
        deliveries = max(1, counts["getpw"] + counts["local"])
        result["primary_queries_per_delivery"] = round(
            (primary_selects(primary) - p0) / deliveries, 3)
        sample = min(users, 20)
        with replica_only(root) as q:
            result["primary_queries_per_uncached_delivery"] = uncached(
                q, ["user%d" % i for i in range(sample)], True)
            result["primary_queries_per_unknown_delivery"] = uncached(
                q, ["nobody%d" % i for i in range(sample)], False)
    result.update({"errors": len(errors), "first_errors": errors[:5],
                   "daemon_rss_kb_before": rss_before, "daemon_rss_kb_after": rss_kb(pid)})
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--users", type=int, default=200)
    args = ap.parse_args()
    proot = tempfile.mkdtemp(prefix="qsoakp-", dir="/tmp")
    root = tempfile.mkdtemp(prefix="qsoak-", dir="/tmp")
    try:
        sandbox.up(proot, port=sandbox.free_port(), log_bin=True, daemon=False)
        sandbox.up_replica(proot, root, daemon=True)
        with qmailsql.connect(proot) as q:
            load(q, root, args.users)
        sandbox.wait_caught_up(sandbox.Paths(proot), sandbox.Paths(root))
        result = soak(root, args.seconds, args.clients, args.users,
                      primary=sandbox.Paths(proot))
    finally:
        for r in (root, proot):
            try:
                sandbox.down(r)
            except sandbox.SandboxError as e:
                print("soak: %s" % e, file=sys.stderr)
    print("soak: %(runs)d helper runs in %(seconds)ss (%(getpw)d getpw, %(local)d local, "
          "%(checkpassword)d checkpassword), %(errors)d errors; daemon RSS "
          "%(daemon_rss_kb_before)d kB -> %(daemon_rss_kb_after)d kB" % result)
    print("soak: primary SELECTs per delivery: %(primary_queries_per_delivery)s (cache on), "
          "%(primary_queries_per_uncached_delivery)s (uncached, existing users), "
          "%(primary_queries_per_unknown_delivery)s (uncached, unknown addresses)" % result)
    for e in result["first_errors"]:
        print("  error:", e)
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
