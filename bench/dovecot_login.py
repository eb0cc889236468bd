"""Login latency through Dovecot, next to the checkpassword path, measured in one run.

    python bench/dovecot_login.py [--logins 200]

Brings up a sandbox (private MariaDB + qmailsqld) with one mailbox (sha512-crypt, the
default scheme) and four private Dovecots (qmailsql.sandbox.dovecot.Private, IMAP only):

  static         Dovecot's static passdb/userdb: what a login costs Dovecot itself
  lua_uncached   `qmailsql dovecot-config`: every login asks qmailsqld, which checks
                 the hash
  lua_cached     the same with --auth-cache: repeat logins answered by Dovecot
  checkpassword  Dovecot's checkpassword passdb running the compiled checkpassword
                 (the old recipe: auth as root, INSECURE_SETUID)

and times, interleaved, the median IMAP LOGIN round trip (command sent to tagged OK,
which includes starting the imap process) of N logins on fresh connections, plus:

  checkpassword_exec_ms   the compiled checkpassword alone (fork+exec+wait), as
                          qmail-popup runs it, its program a static trivial one
  verify_ms               one check of the stored hash in qmailsqld's Python
  dovecot_userdb_cold_ms  a userdb lookup through Dovecot's auth-userdb socket (the
                          path of doveadm user and LMTP), qmailsqld's cache flushed
  dovecot_userdb_warm_ms  the same with the answer in qmailsqld's cache

Prints a table, then one last line of JSON. Needs root (Dovecot's master changes
uids). Everything it starts is stopped at the end.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qmailsql.core import client, passwords  # the installed package
from qmailsql.sandbox import dovecot as private_dovecot
from qmailsql.admin import dovecot as dovecot_admin
from qmailsql.sandbox import host as sandbox

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import benchlib  # noqa: E402
import latency  # noqa: E402  (its fork/exec timer; imported after qmailsql on purpose)

UID = GID = 5000
USER, PASSWORD = "alice", "bench-pw"  # no space: the static passdb's args split at them

STATIC = """\
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home} mail=maildir:~/Maildir
}}
"""

def quoted(text):
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_login(port, user=USER, password=PASSWORD):
    """ms from sending LOGIN to its tagged answer; raises unless it is OK."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        f = s.makefile("rb")
        if not f.readline().startswith(b"* OK"):
            raise SystemExit("bench: no IMAP greeting on port %d" % port)
        t0 = time.perf_counter()
        s.sendall(b"a LOGIN " + quoted(user) + b" " + quoted(password) + b"\r\n")
        while True:
            line = f.readline()
            if not line or line.startswith(b"a "):
                break
        ms = (time.perf_counter() - t0) * 1000
        if not line.startswith(b"a OK"):
            raise SystemExit("bench: LOGIN on port %d answered %r" % (port, line))
        s.sendall(b"b LOGOUT\r\n")
        return ms
    finally:
        s.close()


class Userdb:
    """Dovecot's auth-userdb socket (doveadm user's way in): USER lookups, one line each."""

    def __init__(self, base_dir):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(os.path.join(base_dir, "auth-userdb"))
        self.f = self.sock.makefile("rb")
        self.sock.sendall(b"VERSION\t1\t0\n")
        self.n = 0

    def lookup(self, user):
        self.n += 1
        t0 = time.perf_counter()
        self.sock.sendall(b"USER\t%d\t%s\tservice=bench\n" % (self.n, user.encode()))
        while True:
            line = self.f.readline()
            if not line:
                raise SystemExit("bench: auth-userdb closed the connection")
            if line.split(b"\t")[:2] in ([b"USER", b"%d" % self.n], [b"NOTFOUND", b"%d" % self.n],
                                         [b"FAIL", b"%d" % self.n]):
                break
        ms = (time.perf_counter() - t0) * 1000
        if not line.startswith(b"USER\t"):
            raise SystemExit("bench: userdb lookup of %s answered %r" % (user, line))
        return ms

    def close(self):
        self.sock.close()


def userdb_latency(server, daemon_socket, runs, user=USER):
    """(cold ms, warm ms) medians of userdb lookups of USER through SERVER (a Private
    running the dovecot-config fragment without auth cache)."""
    u = Userdb(os.path.join(server.top, "run"))
    try:
        cold, warm = [], []
        for _ in range(runs):
            client.flush(daemon_socket)
            cold.append(u.lookup(user))
            warm.append(u.lookup(user))
    finally:
        u.close()
    return round(statistics.median(cold), 3), round(statistics.median(warm), 3)


def start(top, name, body):
    d = os.path.join(top, name)
    os.mkdir(d)
    os.chmod(d, 0o755)
    return private_dovecot.Private(d, body, {"imap": sandbox.free_port()}).start()


def open_sandbox(paths):
    for d in (paths.root, paths.run, paths.bin):
        os.chmod(d, 0o755)  # Dovecot's user reaches the socket and reads the script


def measure(args, top, root):
    paths = sandbox.Paths(root)
    sandbox.up(str(root))
    open_sandbox(paths)
    home = os.path.join(top, "home")
    for sub in ("", "/Maildir", "/Maildir/new", "/Maildir/cur", "/Maildir/tmp"):
        os.mkdir(home + sub, 0o700)
        os.chown(home + sub, UID, GID)
    import qmailsql
    ptype, stored = passwords.hash_password("sha512-crypt", PASSWORD.encode())
    with qmailsql.connect(str(root)) as q:
        q.directory.query("INSERT INTO mailbox (username, uid, gid, home, password, "
                          "password_type) VALUES (%s,%s,%s,%s,%s,%s)",
                          (USER, UID, GID, home, stored, ptype), write=True)
    sock = str(paths.daemon_socket)
    servers = {
        "static": start(top, "static", STATIC.format(password=PASSWORD, uid=UID, gid=GID,
                                                     home=home)),
        "lua_uncached": start(top, "lua", dovecot_admin.fragment(str(root), sock, "2.3")),
        "lua_cached": start(top, "luacache", dovecot_admin.fragment(str(root), sock, "2.3",
                                                              auth_cache="10M")),
        "checkpassword": start(top, "checkpassword", private_dovecot.CHECKPASSWORD_RECIPE.format(
            socket=sock, checkpassword=paths.bin / "checkpassword")),
    }
    try:
        for server in servers.values():  # warm-up: processes, DB buffers, caches
            for _ in range(args.warmup):
                imap_login(server.ports["imap"])
        samples = {name: [] for name in servers}
        rounds = max(1, args.logins // 20)
        per = max(1, args.logins // rounds)
        for _ in range(rounds):  # interleaved, so drift hits every case alike
            for name, server in servers.items():
                for _ in range(per):
                    samples[name].append(imap_login(server.ports["imap"]))
        result = {"%s_login_ms" % name: round(statistics.median(v), 3)
                  for name, v in samples.items()}
        result["logins"] = min(len(v) for v in samples.values())
        cold, warm = userdb_latency(servers["lua_uncached"], sock, args.userdb)
        result["dovecot_userdb_cold_ms"], result["dovecot_userdb_warm_ms"] = cold, warm
    finally:
        for server in servers.values():
            server.stop()
    result["checkpassword_exec_ms"] = exec_latency(top, paths, args.logins)
    t = []
    for _ in range(args.userdb):
        t0 = time.perf_counter()
        passwords.verify(ptype, stored, PASSWORD.encode())
        t.append((time.perf_counter() - t0) * 1000)
    result["verify_ms"] = round(statistics.median(t), 3)
    return result


def exec_latency(top, paths, runs):
    """Median ms of the compiled checkpassword, run as qmail-popup runs it."""
    work = Path(top) / "exec"
    work.mkdir()
    os.chmod(work, 0o755)  # its program runs as the mailbox's uid
    (work / "timer.c").write_text(latency.TIMER_C)
    benchlib.cc(work / "timer", [work / "timer.c"])
    benchlib.cc(work / "exec_floor", [ROOT / "bench" / "exec_floor.c"], static=True)
    env = dict(os.environ, QMAILSQL_SOCKET=str(paths.daemon_socket))
    argv = [paths.bin / "checkpassword", work / "exec_floor"]
    fd3 = "%s\0%s\0\0" % (USER, PASSWORD)
    latency.timed(work, argv, 10, env, fd3)  # warm-up
    runs_ = latency.timed(work, argv, runs, env, fd3)
    bad = [s for s, _ in runs_ if s != 0]
    if bad:
        raise SystemExit("bench: checkpassword exited %d" % bad[0])
    return round(statistics.median(ms for _, ms in runs_), 3)


def report(result):
    def ratio(a, b):
        return round(result[a] / result[b], 3) if result.get(a) and result.get(b) else None
    result["lua_uncached_over_checkpassword"] = ratio("lua_uncached_login_ms",
                                                      "checkpassword_login_ms")
    result["lua_cached_over_static"] = ratio("lua_cached_login_ms", "static_login_ms")
    result["lua_uncached_over_static"] = ratio("lua_uncached_login_ms", "static_login_ms")
    rows = [("static_login_ms", "Dovecot static passdb: Dovecot's own cost (floor)"),
            ("lua_uncached_login_ms", "qmailsql Lua passdb, no auth cache (the default)"),
            ("lua_cached_login_ms", "qmailsql Lua passdb, Dovecot auth cache, repeat login"),
            ("checkpassword_login_ms", "Dovecot checkpassword passdb (old recipe, root auth)"),
            ("checkpassword_exec_ms", "compiled checkpassword alone (qmail-popup's way)"),
            ("verify_ms", "one sha512-crypt check in qmailsqld's Python"),
            ("dovecot_userdb_cold_ms", "userdb via auth-userdb, qmailsqld cache flushed"),
            ("dovecot_userdb_warm_ms", "userdb via auth-userdb, qmailsqld cache hit")]
    print("%-24s %10s  %s" % ("measure", "median ms", "what"))
    for key, what in rows:
        print("%-24s %10.3f  %s" % (key, result[key], what))
    print("%d IMAP logins per Dovecot (LOGIN sent -> tagged OK, fresh connection each)"
          % result["logins"])
    print("ratios: lua uncached / checkpassword = %s, lua cached / static = %s, "
          "lua uncached / static = %s" % (result["lua_uncached_over_checkpassword"],
                                          result["lua_cached_over_static"],
                                          result["lua_uncached_over_static"]))
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logins", type=int, default=200,
                   help="timed IMAP logins per Dovecot (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="untimed logins first (default 10)")
    p.add_argument("--userdb", type=int, default=200,
                   help="userdb lookups, cold and warm each (default 200)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (Dovecot's master changes uids)")
    top = tempfile.mkdtemp(prefix="qsdvb-", dir="/tmp")
    root = tempfile.mkdtemp(prefix="qsb-", dir="/tmp")
    os.chmod(top, 0o755)
    try:
        result = measure(args, top, Path(root))
    finally:
        try:
            sandbox.down(root)
        except Exception as e:  # still remove what we made
            sys.stderr.write("bench: sandbox down: %s\n" % e)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
