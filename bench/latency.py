"""Latency of the compiled helpers against qmailsqld, and of the old one-shot design.

    python bench/latency.py [--runs 300] [--clients 4] [--seconds 3] [--cold 1000]

Builds bench/exec_floor.c (static, trivial) and bench/oneshot.c (links libmariadb
like the original patch), a small fork/exec/wait timer (C, written here) and
bench/request_load.c, brings up a sandbox (private MariaDB + qmailsqld) with the FAQ's
rows, and measures medians in milliseconds:

  exec_floor_ms      fork+exec+wait of the static trivial program
  getpw_ms           compiled qmail-getpw iain-slowlaris, warm daemon cache
  local_ms           compiled qmail-local wrapper, no alias rows, stock = exec_floor
  checkpassword_ms   compiled checkpassword, plain `Password` row, program = exec_floor
  oneshot_ms         the libmariadb one-shot program for the same local
  daemon_rps         cached getpw requests per second, concurrent clients each on
                     one connection sending requests in sequence
  daemon_cpu_ms_per_request   qmailsqld's CPU (/proc/PID/stat before and after)
                     per request of that load

and the cold path (a cache miss), as request round trips on one open connection,
no program start, so that they compare with Dovecot's auth process:

  getpw_cold_ms      getpw for a user the daemon has not been asked about (COLD
                     distinct mailboxes, each asked once)
  getpw_warm_rtt_ms  getpw for one user, cached, the same way
  dovecot_userdb_cold_ms / dovecot_userdb_warm_ms   where Dovecot and its MySQL
                     driver (dovecot-core, dovecot-mysql) are installed: a private
                     Dovecot 2.3 auth process with an SQL userdb on the same MariaDB
                     (SELECT home, uid, gid FROM mailbox), asked over its
                     auth-userdb socket with the auth-master protocol (USER id name
                     service=...) for the same users: cold = a user not in its auth
                     cache, warm = one user again, auth cache on
  daemon_cpu_ms_per_cold_request   qmailsqld's CPU per cold getpw

Cold and warm lookups alternate between qmailsqld and Dovecot in rounds. Prints a
table, then one last line of JSON. The sandbox is torn down at the end.
"""
import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys

import benchlib
import qmailsql
from qmailsql.core import client, db
from qmailsql.sandbox import demo, host as sandbox
from qmailsql.core import config as configmod

LOCAL = "iain-slowlaris"

# fork+exec+wait of argv, N times; one line per run: "exitstatus nanoseconds".
# -3 DATA puts DATA on descriptor 3 of the child (a pipe), as checkpassword wants;
# -0 FILE opens FILE as its descriptor 0 (the message, as qmail-lspawn gives it).
TIMER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
  int n, i, a = 2, null, in, st;
  const char *fd3 = 0;
  size_t fd3len = 0;
  if (argc < 3) return 100;
  n = atoi(argv[1]);
  null = in = open("/dev/null", O_RDWR);
  if (a + 1 < argc && !strcmp(argv[a], "-0")) {
    in = open(argv[a + 1], O_RDONLY);
    if (in == -1) return 111;
    a += 2;
  }
  if (a + 1 < argc && !strcmp(argv[a], "-3")) {
    fd3 = argv[a + 1];
    fd3len = strlen(fd3) + 1;  /* "login\0password\0" is passed with \n for \0 */
    a += 2;
  }
  for (i = 0; i < n; i++) {
    int p[2] = {-1, -1};
    long long t0;
    pid_t pid;
    if (fd3) {
      static char buf[1024];
      size_t k;
      if (pipe(p)) return 111;
      for (k = 0; k < fd3len && k < sizeof buf; k++) buf[k] = fd3[k] == '\n' ? 0 : fd3[k];
      if (write(p[1], buf, k) < 0) return 111;
      close(p[1]);
    }
    t0 = now();
    pid = fork();
    if (pid == 0) {
      dup2(in, 0);
      dup2(null, 1);
      if (fd3) { dup2(p[0], 3); if (p[0] != 3) close(p[0]); }
      execv(argv[a], argv + a);
      _exit(127);
    }
    if (pid < 0) return 111;
    waitpid(pid, &st, 0);
    printf("%d %lld\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), now() - t0);
    if (fd3) close(p[0]);
  }
  return 0;
}
"""

def build(work):
    (work / "timer.c").write_text(TIMER_C)
    benchlib.cc(work / "exec_floor", [benchlib.HERE / "exec_floor.c"], static=True)
    benchlib.cc(work / "timer", [work / "timer.c"])
    benchlib.cc(work / "load", [benchlib.HERE / "request_load.c"])
    flags = subprocess.run(["mariadb_config", "--cflags", "--libs"], capture_output=True,
                           text=True)
    if flags.returncode:
        raise SystemExit("bench: mariadb_config not found (apt-get install libmariadb-dev)")
    benchlib.cc(work / "oneshot", [benchlib.HERE / "oneshot.c"], flags.stdout.split())


def timed(work, argv, runs, env, fd3=None, stdin=None, **kw):
    """[(exit status, ms)] of RUNS fork+exec+wait of ARGV (fd 0: the file STDIN, else
    /dev/null; KW for subprocess.run, e.g. user=)."""
    cmd = [str(work / "timer"), str(runs)]
    if stdin is not None:
        cmd += ["-0", str(stdin)]
    if fd3 is not None:
        cmd += ["-3", fd3.replace("\0", "\n")]
    r = subprocess.run(cmd + [str(a) for a in argv], capture_output=True, text=True, env=env,
                       **kw)
    if r.returncode:
        raise SystemExit("bench: timer failed (%d): %s" % (r.returncode, r.stderr))
    out = []
    for line in r.stdout.split("\n"):
        if line:
            status, ns = line.split()
            out.append((int(status), int(ns) / 1e6))
    return out


def check(name, argv, env, fd3=None, want=0):
    """Run once with output; None if it works, else the reason."""
    cmd = [str(a) for a in argv]
    if fd3 is not None:  # the login and password on descriptor 3, via sh
        cmd = ["sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh"] + cmd
    r = subprocess.run(cmd, capture_output=True, env=env,
                       input=fd3.encode() if fd3 is not None else b"")
    if r.returncode != want:
        return "%s exited %d: %s" % (name, r.returncode, r.stderr.decode(errors="replace")
                                     .strip())
    return None


def rps(work, sock, clients, seconds, daemon_pid):
    """(cached getpw/s, qmailsqld CPU ms per request) of CLIENTS load clients."""
    cpu0 = benchlib.cpu_seconds(daemon_pid)
    procs = [subprocess.Popen([str(work / "load"), sock, str(2 ** 62), str(seconds), "1",
                               "getpw", LOCAL],
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0.0
    requests = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        if p.returncode:
            raise SystemExit("bench: load client failed (%d)" % p.returncode)
        count, ns = out.split()
        total += int(count) / (int(ns) / 1e9)
        requests += int(count)
    cpu = benchlib.cpu_seconds(daemon_pid) - cpu0
    return total, cpu * 1000 / max(1, requests)


# --------------------------------------------------------------- the cold path

DOVECOT_CONF = """\
# written by bench/latency.py: an auth process only, SQL userdb on the sandbox's DB
base_dir = {top}/run
state_dir = {top}/state
instance_name = qmailsql-bench-{tag}
log_path = {top}/dovecot.log
protocols = none
ssl = no
auth_cache_size = 16M
auth_cache_ttl = 1 hour
auth_cache_negative_ttl = 0
passdb {{
  driver = sql
  args = {top}/sql.conf.ext
}}
userdb {{
  driver = sql
  args = {top}/sql.conf.ext
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0600
  }}
}}
"""

DOVECOT_SQL = """\
driver = mysql
connect = host={socket} dbname={db} user={user} password={password}
user_query = SELECT home, uid, gid FROM mailbox WHERE username = '%u'
password_query = SELECT username AS user, password FROM mailbox WHERE username = '%u'
"""
DOVECOT_USER = "dovecot_bench"
MYSQL_DRIVER = "/usr/lib/dovecot/modules/libdriver_mysql.so"


class Userdb:
    """Dovecot's auth-master protocol on its auth-userdb socket: USER lookups."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.sock.sendall(b"VERSION\t1\t0\n")
        self.id = 0
        line = b"VERSION"
        while not line.startswith(b"SPID\t"):  # VERSION, then SPID
            line = self.file.readline()
            if not line:
                raise ValueError("Dovecot's auth-userdb socket %s closed before its handshake"
                                 % path)

    def lookup(self, name):
        """{field: value} of NAME's userdb entry; ValueError if Dovecot has none."""
        self.id += 1
        self.sock.sendall(b"USER\t%d\t%s\tservice=bench\n" % (self.id, name))
        reply = self.file.readline().rstrip(b"\n").split(b"\t")
        if reply[:2] != [b"USER", b"%d" % self.id]:
            raise ValueError("Dovecot's userdb answered %r for %r" % (reply, name))
        return dict(f.split(b"=", 1) for f in reply[3:] if b"=" in f)

    def close(self):
        self.file.close()
        self.sock.close()


def dovecot_problem():
    """Why Dovecot's SQL userdb cannot be measured here, or None."""
    try:
        sandbox.dovecot_binary()
    except sandbox.SandboxError as e:
        return str(e)
    if not os.path.exists(MYSQL_DRIVER):
        return "Dovecot's MySQL driver is missing: apt-get install dovecot-mysql"
    if os.geteuid() != 0:
        return "Dovecot runs its auth processes as root here: run the bench as root"
    return None


def start_dovecot(work, paths, cfg):
    """The config of a private Dovecot whose userdb is SQL on the sandbox's MariaDB,
    with a DB login of its own that may read the mailbox table; its socket path."""
    top = work / "dovecot"
    top.mkdir()
    password = secrets.token_hex(12)
    sandbox.root_sql(paths, [
        ("CREATE OR REPLACE USER %s@'localhost' IDENTIFIED BY %s", (DOVECOT_USER, password)),
        ("GRANT SELECT ON `%s`.mailbox TO %%s@'localhost'" % cfg.db, (DOVECOT_USER,))])
    fd = os.open(top / "sql.conf.ext", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(DOVECOT_SQL.format(socket=paths.db_socket, db=cfg.db, user=DOVECOT_USER,
                                   password=password))
    conf = top / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(top=top, tag=os.getpid()))
    return conf, str(top / "run" / "auth-userdb")


def load_cold_users(cfg, count, uid, gid, home):
    names = [b"cold%06d" % i for i in range(count)]
    conn = db.connect(configmod.as_admin(cfg), cfg.write_server)  # the sandbox's administrator
    try:
        benchlib.insert_rows(conn, "mailbox", ("username", "uid", "gid", "home", "password",
                                               "password_type"),
                             [(n.decode(), uid, gid, home, "", "Password") for n in names])
    finally:
        conn.close()
    return names


def cold_path(args, work, paths, cfg, names, daemon_pid):
    """Medians of cold and warm lookups, qmailsqld and (where it can run) Dovecot."""
    sock = str(paths.daemon_socket)
    home = str(paths.root / "home" / "iain").encode()

    def getpw(conn):
        def call(name):
            status, body = conn.call([b"getpw", name])
            if status or body.split(b"\0")[:1] != [name] or home not in body:
                raise SystemExit("bench: getpw %r answered %d %r" % (name, status, body))
        return call

    def userdb(u):
        def call(name):
            if u.lookup(name).get(b"home") != home:
                raise SystemExit("bench: Dovecot's userdb gave another home for %r" % name)
        return call

    result = {"getpw_cold_ms": [], "getpw_warm_rtt_ms": [], "dovecot_userdb_cold_ms": [],
              "dovecot_userdb_warm_ms": []}
    notes = {}
    problem = dovecot_problem()
    conf = userdb_socket = None
    if problem:
        notes["dovecot_userdb_cold_ms"] = notes["dovecot_userdb_warm_ms"] = problem
    else:
        conf, userdb_socket = start_dovecot(work, paths, cfg)
    rounds = max(1, min(args.rounds, len(names)))
    warm = names[0]
    running = (sandbox.dovecot(conf, lambda: os.path.exists(userdb_socket)) if conf
               else contextlib.nullcontext())
    with client.Connection(sock) as q, running:
        u = Userdb(userdb_socket) if conf else None
        try:
            client.flush(sock)
            getpw(q)(b"iain")  # connections to the DB are open, code paths warm
            if u:
                u.lookup(b"iain")
            cpu = 0.0
            for r in range(rounds):
                chunk = names[r::rounds]
                systems = [("getpw_cold_ms", getpw(q))]
                if u:
                    systems.append(("dovecot_userdb_cold_ms", userdb(u)))
                for key, call in systems[r % 2:] + systems[:r % 2]:  # who goes first alternates
                    cpu0 = benchlib.cpu_seconds(daemon_pid)
                    result[key] += benchlib.timed_calls(call, chunk)
                    if key == "getpw_cold_ms":
                        cpu += benchlib.cpu_seconds(daemon_pid) - cpu0
            for r in range(rounds):
                per = max(1, args.runs // rounds)
                systems = [("getpw_warm_rtt_ms", getpw(q))]
                if u:
                    systems.append(("dovecot_userdb_warm_ms", userdb(u)))
                for key, call in systems[r % 2:] + systems[:r % 2]:
                    result[key] += benchlib.timed_calls(call, [warm] * per)
        finally:
            if u:
                u.close()
    med = {k: (round(statistics.median(v), 4) if v else None) for k, v in result.items()}
    med["daemon_cpu_ms_per_cold_request"] = round(cpu * 1000 / len(names), 4)
    return med, notes, {k: len(v) for k, v in result.items()}


def measure(args, work, root):
    paths = sandbox.Paths(root)
    env = dict(os.environ)
    uid, gid = (demo.FAQ_UID, demo.FAQ_GID) if os.geteuid() == 0 else (os.getuid(),
                                                                        os.getgid())
    with qmailsql.connect(str(root)) as q:
        demo.load_faq(q.directory, str(root / "home"), uid, gid)
    cfg = configmod.load(str(root))
    daemon_pid = benchlib.pid_of(paths.daemon_pid)
    sock = env["QMAILSQL_SOCKET"]
    getpw = paths.bin / "qmail-getpw"
    local = paths.bin / "qmail-local"
    checkpw = paths.bin / "checkpassword"
    floor = work / "exec_floor"
    server = cfg.servers[0]
    oneshot = [work / "oneshot", "-u", cfg.login, "-p", cfg.password, "-d", cfg.db]
    oneshot += ["-S", server.socket] if server.socket else ["-h", server.host, "-P",
                                                            str(server.port)]
    oneshot.append(LOCAL)
    home = root / "home" / "sanity"
    cases = [
        ("exec_floor_ms", [floor], env, None),
        ("getpw_ms", [getpw, LOCAL], env, None),
        ("local_ms", [local, "--", "iain-sanity", home, "iain-sanity", "", "", "example.org",
                      "sender@example.org", "./Maildir/"],
         dict(env, QMAILSQL_QMAIL_LOCAL=str(floor)), None),
        ("checkpassword_ms", [checkpw, floor], env, "iain\0secret\0\0"),
        ("oneshot_ms", oneshot, env, None),
    ]
    # same answer from the old design and the new one
    a = subprocess.run([str(x) for x in oneshot], capture_output=True)
    b = subprocess.run([str(getpw), LOCAL], capture_output=True, env=env)
    if a.stdout != b.stdout or a.returncode or b.returncode:
        raise SystemExit("bench: oneshot and qmail-getpw disagree: %r (%d) vs %r (%d) %s"
                         % (a.stdout, a.returncode, b.stdout, b.returncode, b.stderr))
    usable = {}
    notes = {}
    for key, argv, e, fd3 in cases:
        problem = check(key, argv, e, fd3)
        usable[key] = problem is None
        if problem:
            notes[key] = problem
    samples = {key: [] for key, *_ in cases}
    rounds = max(1, args.runs // 50)
    per = max(1, args.runs // rounds)
    for key, argv, e, fd3 in cases:  # warm-up: page cache, daemon cache, DB buffers
        if usable[key]:
            timed(work, argv, args.warmup, e, fd3)
    for _ in range(rounds):  # interleaved, so drift hits every case alike
        for key, argv, e, fd3 in cases:
            if not usable[key]:
                continue
            runs = timed(work, argv, per, e, fd3)
            bad = [s for s, _ in runs if s != 0]
            if bad:
                raise SystemExit("bench: %s exited %d during timing" % (key, bad[0]))
            samples[key] += [ms for _, ms in runs]
    result = {key: (round(statistics.median(v), 4) if v else None)
              for key, v in samples.items()}
    rate, cpu = rps(work, sock, args.clients, args.seconds, daemon_pid)
    result["daemon_rps"] = round(rate)
    result["daemon_cpu_ms_per_request"] = round(cpu, 4)
    names = load_cold_users(cfg, args.cold, uid, gid, str(root / "home" / "iain"))
    cold, cold_notes, cold_counts = cold_path(args, work, paths, cfg, names, daemon_pid)
    result.update(cold)
    notes.update(cold_notes)
    counts = {k: len(v) for k, v in samples.items()}
    counts.update(cold_counts)
    return result, notes, counts


def report(result, notes, counts, args):
    def ratio(a, b):
        return round(result[a] / result[b], 3) if result.get(a) and result.get(b) else None
    result["getpw_over_exec_floor"] = ratio("getpw_ms", "exec_floor_ms")
    result["oneshot_over_getpw"] = ratio("oneshot_ms", "getpw_ms")
    result["getpw_cold_over_dovecot"] = ratio("getpw_cold_ms", "dovecot_userdb_cold_ms")
    result["getpw_warm_over_dovecot"] = ratio("getpw_warm_rtt_ms", "dovecot_userdb_warm_ms")
    rows = [("exec_floor_ms", "static trivial program (fork+exec+wait)", ""),
            ("getpw_ms", "qmail-getpw %s, warm daemon" % LOCAL, "target <= 1.3 x exec_floor"),
            ("local_ms", "qmail-local wrapper, no rows, exec stock", ""),
            ("checkpassword_ms", "checkpassword, plain Password row", ""),
            ("oneshot_ms", "libmariadb one-shot, same local", "target >= 6 x getpw")]
    print("%-18s %10s %6s  %s" % ("measure", "median ms", "runs", "what"))
    for key, what, target in rows:
        v = result[key]
        print("%-18s %10s %6d  %s%s" % (key, "%.3f" % v if v is not None else "n/a",
                                        counts.get(key, 0), what,
                                        "  (%s)" % target if target else ""))
        if key in notes:
            print("%-18s %10s %6s  not measured: %s" % ("", "", "", notes[key]))
    print("%-18s %10d %6s  cached getpw/s, %d clients x %gs (target >= 15000)"
          % ("daemon_rps", result["daemon_rps"], "", args.clients, args.seconds))
    print("%-18s %10.4f %6s  qmailsqld CPU per request of that load"
          % ("daemon_cpu/request", result["daemon_cpu_ms_per_request"], ""))
    print("ratios: getpw/exec_floor = %s (target <= 1.3), oneshot/getpw = %s (target >= 6)"
          % (result["getpw_over_exec_floor"], result["oneshot_over_getpw"]))
    print("cold path, request round trips on one connection (no program start):")
    for key, what in (("getpw_cold_ms", "qmailsqld getpw, user not cached (one DB statement, "
                       "with the wrapper's reads)"),
                      ("dovecot_userdb_cold_ms", "Dovecot auth-userdb USER, SQL userdb, "
                       "user not in its auth cache"),
                      ("getpw_warm_rtt_ms", "qmailsqld getpw, cached"),
                      ("dovecot_userdb_warm_ms", "Dovecot auth-userdb USER, auth cache hit")):
        v = result[key]
        print("%-22s %10s %6d  %s" % (key, "%.3f" % v if v is not None else "n/a",
                                      counts.get(key, 0), what))
        if key in notes:
            print("%-22s %10s %6s  not measured: %s" % ("", "", "", notes[key]))
    print("%-22s %10.4f %6s  qmailsqld CPU per cold getpw"
          % ("daemon_cpu/cold", result["daemon_cpu_ms_per_cold_request"], ""))
    print("ratios: getpw_cold/dovecot_cold = %s (target <= 1), getpw_warm/dovecot_warm = %s"
          % (result["getpw_cold_over_dovecot"], result["getpw_warm_over_dovecot"]))
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300, help="timed runs per measure (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed runs first (default 30)")
    p.add_argument("--clients", type=int, default=4, help="load clients for daemon_rps")
    p.add_argument("--seconds", type=float, default=3.0, help="load duration for daemon_rps")
    p.add_argument("--cold", type=int, default=1000, help="distinct users for the cold "
                   "lookups, each asked once of each system (default 1000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the cold "
                   "and warm lookups (default 5)")
    args = p.parse_args(argv)
    if min(args.runs, args.cold, args.rounds, args.clients) < 1:
        p.error("--runs, --cold, --rounds and --clients must be at least 1")
    with benchlib.scratch() as work, benchlib.sandbox_up() as (root, _):
        build(work)
        result, notes, counts = measure(args, work, root)
    report(result, notes, counts, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
