"""Latency of the compiled helpers against qmailsqld, and of the old one-shot design.

    python bench/latency.py [--runs 300] [--clients 4] [--seconds 3]

Builds bench/exec_floor.c (static, trivial) and bench/oneshot.c (links libmariadb
like the original patch), plus a small fork/exec/wait timer and a load client
(C, written here), brings up a sandbox (private MariaDB + qmailsqld) with the FAQ's
rows, and measures medians in milliseconds:

  exec_floor_ms      fork+exec+wait of the static trivial program
  getpw_ms           compiled qmail-getpw iain-slowlaris, warm daemon cache
  local_ms           compiled qmail-local wrapper, no alias rows, stock = exec_floor
  checkpassword_ms   compiled checkpassword, plain `Password` row, program = exec_floor
  oneshot_ms         the libmariadb one-shot program for the same local
  daemon_rps         cached getpw requests per second, concurrent clients each on
                     one connection sending requests in sequence

Prints a table, then one last line of JSON. The sandbox is torn down at the end.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # last: an installed qmailsql (with its compiled parts) first
    sys.path.append(str(ROOT))

from qmailsql import config as configmod  # noqa: E402
from qmailsql import demo, sandbox  # noqa: E402

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

# One connection, requests in sequence for SECONDS; prints "count elapsed_ns".
LOAD_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
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
  struct sockaddr_un sa;
  char req[4096], resp[70000];
  int fd, len, plen;
  long long count = 0, t0, end;
  if (argc != 4) return 100;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 111; }
  plen = 6 + (int)strlen(argv[2]) + 1;
  len = snprintf(req, sizeof req, "%d:getpw", plen);
  req[len++] = 0;
  memcpy(req + len, argv[2], strlen(argv[2]) + 1);
  len += (int)strlen(argv[2]) + 1;
  req[len++] = ',';
  t0 = now();
  end = t0 + (long long)(atof(argv[3]) * 1e9);
  while (now() < end) {
    int got = 0, want = -1, i;
    if (write(fd, req, len) != len) { perror("write"); return 111; }
    while (want < 0 || got < want) {
      int r = read(fd, resp + got, sizeof resp - got);
      if (r <= 0) { perror("read"); return 111; }
      got += r;
      if (want < 0)
        for (i = 0; i < got; i++)
          if (resp[i] == ':') { want = i + 1 + atoi(resp) + 1; break; }
    }
    if (resp[want - 1] != ',' || resp[got - 1] != ',' || resp[i + 1] != '0') {
      fprintf(stderr, "bad response\n");
      return 111;
    }
    count++;
  }
  printf("%lld %lld\n", count, now() - t0);
  return 0;
}
"""


def cc(out, sources, extra=(), static=False):
    cmd = ["cc", "-O2", "-o", str(out)] + [str(s) for s in sources] + list(extra)
    if static:
        r = subprocess.run(cmd + ["-static"], capture_output=True, text=True)
        if r.returncode == 0:
            return
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit("bench: compiling %s failed:\n%s" % (" ".join(map(str, sources)),
                                                               r.stderr))


def build(work):
    (work / "timer.c").write_text(TIMER_C)
    (work / "load.c").write_text(LOAD_C)
    cc(work / "exec_floor", [ROOT / "bench" / "exec_floor.c"], static=True)
    cc(work / "timer", [work / "timer.c"])
    cc(work / "load", [work / "load.c"])
    flags = subprocess.run(["mariadb_config", "--cflags", "--libs"], capture_output=True,
                           text=True)
    if flags.returncode:
        raise SystemExit("bench: mariadb_config not found (apt-get install libmariadb-dev)")
    cc(work / "oneshot", [ROOT / "bench" / "oneshot.c"], flags.stdout.split())


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


def rps(work, sock, clients, seconds):
    procs = [subprocess.Popen([str(work / "load"), sock, LOCAL, str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        if p.returncode:
            raise SystemExit("bench: load client failed (%d)" % p.returncode)
        count, ns = out.split()
        total += int(count) / (int(ns) / 1e9)
    return total


def measure(args, work, root):
    paths = sandbox.Paths(root)
    env = dict(os.environ, **sandbox.up(str(root)))
    os.environ.update(env)
    uid, gid = (demo.FAQ_UID, demo.FAQ_GID) if os.geteuid() == 0 else (os.getuid(),
                                                                        os.getgid())
    import qmailsql
    with qmailsql.connect(str(root)) as q:
        demo.load_faq(q.directory, str(root / "home"), uid, gid)
    os.chmod(root, 0o755)  # checkpassword's program runs as the mailbox uid
    cfg = configmod.load(str(root))
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
    result["daemon_rps"] = round(rps(work, sock, args.clients, args.seconds))
    return result, notes, {k: len(v) for k, v in samples.items()}


def report(result, notes, counts, args):
    def ratio(a, b):
        return round(result[a] / result[b], 3) if result.get(a) and result.get(b) else None
    result["getpw_over_exec_floor"] = ratio("getpw_ms", "exec_floor_ms")
    result["oneshot_over_getpw"] = ratio("oneshot_ms", "getpw_ms")
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
    print("ratios: getpw/exec_floor = %s (target <= 1.3), oneshot/getpw = %s (target >= 6)"
          % (result["getpw_over_exec_floor"], result["oneshot_over_getpw"]))
    print(json.dumps(result))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=300, help="timed runs per measure (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed runs first (default 30)")
    p.add_argument("--clients", type=int, default=4, help="load clients for daemon_rps")
    p.add_argument("--seconds", type=float, default=3.0, help="load duration for daemon_rps")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="qsbench-", dir="/tmp"))
    root = Path(tempfile.mkdtemp(prefix="qsb-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        build(work)
        result, notes, counts = measure(args, work, root)
    finally:
        try:
            sandbox.down(str(root))
        except Exception as e:  # still remove what we made
            sys.stderr.write("bench: sandbox down: %s\n" % e)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    report(result, notes, counts, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
