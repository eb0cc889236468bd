"""Hostile load: privileged lookups while a local user, or a crafted address, attacks
the one qmailsqld of the host.

    python bench/hostile.py [--seconds 10] [--probes 40]

Brings up a sandbox and runs each attack of ATTACKS for SECONDS in its own process,
while this process runs the probes one after another: the compiled qmail-getpw (as
root, the way qmail-lspawn runs it) for mailboxes nobody asked for before, or, for the
login attack, the compiled checkpassword with the owner's right password from an
address that has not failed. Every probe answer is checked. Before the attacks, the
same probes run with no attack (the baseline). Prints a table and, last, one line of
JSON: p50/p99 probe latency in ms and wrong answers per phase, each attack's own
counts, and the daemon's peak RSS (VmHWM) in kB; then, in this process, the cost of a
put() into a full response cache (median and slowest, both implementations).

The attacks (what issue 12 reproduced):

  pipeline   a uid with no mailbox, 120 connections, 64 kB bursts of tiny frames
             (ping and refused getpw), reading the answers
  long_ext   the owner of a mailbox: `local` requests with 16,000-dash extensions
             (refused) and 2,000-dash ones (the longest allowed), 16 in flight
  cache      the owner of a mailbox: distinct `local` requests as fast as answered
             (each a new cache entry); afterwards the DB is stopped and the
             answers cached before the attack must still be given (stale)
  like       root (a remote sender through qmail-lspawn): 8 concurrent getpw of
             300-byte addresses at a funky_queries host whose row is %e%e%e%e%x
  login      root (a remote client through qmail-popup): wrong passwords for one
             login from 5 addresses, as fast as answered

tests/test_hostile.py runs each attack for a short span and asserts on order and
correctness; this script only measures.
"""
import argparse
import array
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # the installed package (built extensions); the source tree only without one
    import qmailsql
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import qmailsql
from qmailsql.admin import tables as admin  # noqa: E402
from qmailsql.sandbox import host as sandbox  # noqa: E402
from qmailsql.sandbox import demo

ATTACKER_UID = 12345      # owns mallory's home; not a client uid of the daemon
STRANGER_UID = 12346      # no mailbox at all
UID, GID = 800, 100       # the probe mailboxes
ATTACKER = "mallory"
VICTIM, VICTIM_PASSWORD = "victim", "correct horse battery"
FUNKY_HOST = "funky.example"
FUNKY_ROW = "%e%e%e%e%x"
ATTACKS = ("pipeline", "long_ext", "cache", "like", "login")

# ------------------------------------------------------------------ the attackers
# Each runs as its own process (as the attacking uid where there is one), for exactly
# SECONDS, then prints one JSON line: its start and end on CLOCK_MONOTONIC (the same
# clock in every process), what it sent and what came back.

COMMON = r"""
import json, os, select, socket, sys, time

def dial(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    return s

def frame(*fields):
    payload = b"".join(f + b"\0" for f in fields)
    return b"%d:%s," % (len(payload), payload)

def answers(buf):
    # complete response frames at the front of BUF: (statuses, rest)
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0:
            return out, buf
        n = int(buf[:colon])
        if len(buf) < colon + n + 2:
            return out, buf
        payload = buf[colon + 1:colon + 1 + n]
        out.append(payload.split(b"\0", 1)[0])
        buf = buf[colon + n + 2:]

def report(**kw):
    print(json.dumps(kw), flush=True)
"""

# many connections, each with a 64 kB burst of tiny frames always in flight
PIPELINE = COMMON + r"""
path, seconds, nconn = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
unit = frame(b"ping") * 3 + frame(b"getpw", b"root")  # getpw is refused for this uid
burst = unit * (65536 // len(unit))
ep = select.epoll()
conns = {}

def add():
    s = dial(path)
    conns[s.fileno()] = [s, memoryview(burst), 0]
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)

for _ in range(nconn):
    add()
print("ready", flush=True)
start = time.monotonic()
end = start + seconds
sent = received = reconnects = 0
while time.monotonic() < end:
    for fd, ev in ep.poll(0.05):
        c = conns.get(fd)
        if c is None:
            continue
        s = c[0]
        try:
            if ev & select.EPOLLIN:
                data = s.recv(1 << 20)
                if not data:
                    raise ConnectionResetError
                received += len(data)
            if ev & select.EPOLLOUT:
                n = s.send(c[1])
                sent += n
                c[1] = c[1][n:] if n < len(c[1]) else memoryview(burst)
        except BlockingIOError:
            pass
        except OSError:
            ep.unregister(fd)
            del conns[fd]
            s.close()
            reconnects += 1
            try:
                add()
            except OSError:
                pass
report(start=start, end=time.monotonic(), sent_bytes=sent, received_bytes=received,
       reconnects=reconnects)
"""

# NCONN connections, each with one request in flight: MAKE(n, i) is the n-th request,
# sent on connection i as soon as the previous answer came; runs for SECONDS
IN_FLIGHT = COMMON + r"""
def in_flight(path, seconds, nconn, make):
    ep = select.epoll()
    conns = {}
    for i in range(nconn):
        s = dial(path)
        conns[s.fileno()] = [s, b"", i]
        ep.register(s.fileno(), select.EPOLLIN)
    counter = [0]

    def ask(c):
        counter[0] += 1
        c[0].setblocking(True)
        c[0].sendall(make(counter[0], c[2]))
        c[0].setblocking(False)

    print("ready", flush=True)
    start = time.monotonic()
    end = start + seconds
    for c in conns.values():
        ask(c)
    statuses = {}
    while time.monotonic() < end:
        for fd, ev in ep.poll(0.05):
            c = conns[fd]
            try:
                data = c[0].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("the daemon closed a connection")
            got, c[1] = answers(c[1] + data)
            for status in got:
                statuses[status.decode()] = statuses.get(status.decode(), 0) + 1
                if time.monotonic() < end:
                    ask(c)
    report(start=start, end=time.monotonic(), answers=statuses, asked=counter[0])
"""

# `local` requests for the attacker's own account, extensions alternating between LONG
# (over any limit) and SHORT dashes, each distinct (never a cache hit)
LONG_EXT = IN_FLIGHT + r"""
path, seconds, nconn, user, home, long_n, short_n = sys.argv[1], float(sys.argv[2]), \
    int(sys.argv[3]), sys.argv[4].encode(), sys.argv[5].encode(), int(sys.argv[6]), \
    int(sys.argv[7])

def make(n, i):
    ext = b"-" * (long_n if n % 2 else short_n) + b"%d" % n
    return frame(b"local", user, home, user + b"-" + ext, b"-", ext, b"example.org")

in_flight(path, seconds, nconn, make)
"""

# distinct `local` requests for the attacker's own account: each a new cache entry
CACHE = IN_FLIGHT + r"""
path, seconds, nconn, user, home = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4].encode(), sys.argv[5].encode()

def make(n, i):
    ext = b"x%d" % n
    return frame(b"local", user, home, user + b"-" + ext, b"-", ext, b"example.org")

in_flight(path, seconds, nconn, make)
"""

# root asking getpw for crafted local parts PREFIX + n + BODY
GETPW_FLOOD = IN_FLIGHT + r"""
path, seconds, nconn, prefix, body = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4].encode(), sys.argv[5].encode("utf-8")
in_flight(path, seconds, nconn, lambda n, i: frame(b"getpw", prefix + b"%d" % n + body))
"""

# root asking auth with wrong passwords for one login, one connection per address
LOGIN_FLOOD = IN_FLIGHT + r"""
path, seconds, login, addresses = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode(), \
    [a.encode() for a in sys.argv[4].split(",")]
in_flight(path, seconds, len(addresses),
          lambda n, i: frame(b"auth", login, b"guess%d" % n, addresses[i]))
"""


def as_uid(uid):
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]


class World:
    """A sandbox loaded for the attacks: probe mailboxes nobody asked for yet, the
    attacker's own mailbox, a funky_queries virtual host, a login with a password."""

    def __init__(self, root, probes):
        self.root = Path(root)
        self.paths = sandbox.Paths(root)
        self.socket = str(self.paths.daemon_socket)
        self.env = dict(os.environ, QMAILSQL_SOCKET=self.socket)
        self.homes = self.root / "home"
        self.probe_names = ["probe%d" % i for i in range(probes)]
        self.next_probe = 0
        self.next_address = 0
        self.attacker_home = str(self.homes / ATTACKER)

    def take_probes(self, n):
        """N mailbox names nobody has asked for (so not cached)."""
        if self.next_probe + n > len(self.probe_names):
            raise RuntimeError("out of probe mailboxes: load more (World(probes=...))")
        names = self.probe_names[self.next_probe:self.next_probe + n]
        self.next_probe += n
        return names

    def take_addresses(self, n):
        """N client addresses (TEST-NET-2) that have never tried to log in."""
        first = self.next_address
        self.next_address += n
        return ["198.51.%d.%d" % (100 + i // 250, i % 250 + 1) for i in range(first, first + n)]

    def expected(self, name):
        return b"".join(f + b"\0" for f in (name.encode(), b"%d" % UID, b"%d" % GID,
                                           str(self.homes / name).encode(), b"", b""))

    def daemon_pid(self):
        return int(self.paths.daemon_pid.read_text())


def prepare(root, probes=400, daemon_env=None):
    """Sandbox up in ROOT with the rows the attacks need; the daemon runs with
    funky_queries (and DAEMON_ENV added to its environment). Returns a World."""
    sandbox.up(root, daemon=False)
    world = World(root, probes)
    paths = world.paths
    from qmailsql.core import config as configmod
    cfg = configmod.load(str(root))
    sandbox.write_sqlserver(paths, cfg.password, extra="funky_queries yes\n")
    world.homes.mkdir(exist_ok=True)
    for d in (world.root, world.homes, paths.run):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)  # the attacking uids reach the socket, as on a real host
    with qmailsql.connect(str(root)) as q:
        d = q.directory
        for name in world.probe_names + [VICTIM, "alias"]:
            home = str(world.homes / name)
            admin.add_mailbox(d, name, UID, GID, home, VICTIM_PASSWORD if name == VICTIM
                              else "", "Password", replace=True)
            demo.make_home(home, UID, GID)
        admin.add_mailbox(d, ATTACKER, ATTACKER_UID, ATTACKER_UID, world.attacker_home, "",
                          "Password", replace=True)
        demo.make_home(world.attacker_home, ATTACKER_UID, ATTACKER_UID)
        d.query("DELETE FROM virtual WHERE virtual_host=%s", (FUNKY_HOST,), write=True)
        admin.add_virtual(d, FUNKY_ROW, FUNKY_HOST, world.probe_names[0])
    restart_daemon(world, daemon_env or {})
    return world


def restart_daemon(world, env):
    """(Re)start WORLD's daemon with ENV added to its environment."""
    sandbox.stop_daemon(world.paths)
    sandbox.start_daemon(world.paths, env)


def start_attack(world, name, seconds):
    """Start attack NAME for SECONDS; returns its Popen once it is ready to attack."""
    py = [sys.executable, "-I", "-c"]
    sock, span = world.socket, str(seconds)
    if name == "pipeline":
        argv = as_uid(STRANGER_UID) + py + [PIPELINE, sock, span, "120"]
    elif name == "long_ext":
        argv = as_uid(ATTACKER_UID) + py + [LONG_EXT, sock, span, "16", ATTACKER,
                                            world.attacker_home, "16000", "2000"]
    elif name == "cache":
        argv = as_uid(ATTACKER_UID) + py + [CACHE, sock, span, "8", ATTACKER,
                                            world.attacker_home]
    elif name == "like":
        # e...eẋ: MariaDB's LIKE folds ẋ to x, so the row %e%e%e%e%x matches it
        argv = py + [GETPW_FLOOD, sock, span, "8", FUNKY_HOST + "-", "e" * 296 + "\u1e8b"]
    elif name == "login":
        ips = ",".join("192.0.2.%d" % i for i in range(1, 6))
        argv = py + [LOGIN_FLOOD, sock, span, VICTIM, ips]
    else:
        raise ValueError("unknown attack %r" % name)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/")
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError("attack %s did not start: %r %s" % (name, line,
                                                               proc.stderr.read()))
    return proc


def finish_attack(proc, timeout=600):
    """Wait for an attack to end; its JSON report (start, end, counts)."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("the attacker failed (exit %d): %s" % (proc.returncode, err))
    return json.loads(out.strip().splitlines()[-1])


class Probe:
    __slots__ = ("what", "started", "ended", "ok", "detail")

    def __init__(self, what, started, ended, ok, detail):
        self.what, self.started, self.ended, self.ok, self.detail = (what, started, ended, ok,
                                                                     detail)

    @property
    def ms(self):
        return (self.ended - self.started) * 1000.0

    def __repr__(self):
        return "Probe(%s, %.1f ms, ok=%s, %s)" % (self.what, self.ms, self.ok, self.detail)


def probe_getpw(world, name):
    """The compiled qmail-getpw for NAME, run as root: a Probe."""
    started = time.monotonic()
    r = subprocess.run([str(world.paths.bin / "qmail-getpw"), name], capture_output=True,
                       env=world.env, timeout=120)
    ended = time.monotonic()
    ok = r.returncode == 0 and r.stdout == world.expected(name)
    return Probe("getpw " + name, started, ended, ok,
                 "exit %d %r %r" % (r.returncode, r.stdout[:80], r.stderr[:200]))


def probe_login(world, ip):
    """The compiled checkpassword with the owner's right password from IP: a Probe."""
    started = time.monotonic()
    data = VICTIM.encode() + b"\0" + VICTIM_PASSWORD.encode() + b"\0\0"
    r = subprocess.run(["/bin/sh", "-c", 'exec "$0" /bin/true 3<&0 </dev/null',
                        str(world.paths.bin / "checkpassword")], input=data,
                       capture_output=True, env=dict(world.env, TCPREMOTEIP=ip), timeout=120)
    ended = time.monotonic()
    return Probe("login from " + ip, started, ended, r.returncode == 0,
                 "exit %d %r" % (r.returncode, r.stderr[:200]))


def probes_for(world, name, count):
    """COUNT probe callables suited to attack NAME (each asks something new)."""
    if name == "login":
        return [lambda ip=ip: probe_login(world, ip) for ip in world.take_addresses(count)]
    return [lambda n=n: probe_getpw(world, n) for n in world.take_probes(count)]


def run_probes(probes, until=None, pause=0.0):
    """Run PROBES one after another (until the process UNTIL has ended, if given)."""
    done = []
    for p in probes:
        if until is not None and until.poll() is not None:
            break
        done.append(p())
        if pause:
            time.sleep(pause)
    return done


def under_attack(world, name, seconds, max_probes=200, pause=0.05, warmup=0.5):
    """Run attack NAME for SECONDS with probes going on meanwhile, WARMUP seconds after
    it starts. Returns (attack report, probes)."""
    probes = probes_for(world, name, max_probes)
    proc = start_attack(world, name, seconds)
    try:
        time.sleep(warmup)
        done = run_probes(probes, until=proc, pause=pause)
        report = finish_attack(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return report, done


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[k]


def summary(probes):
    ms = [p.ms for p in probes]
    return {"probes": len(probes), "wrong": sum(1 for p in probes if not p.ok),
            "p50_ms": round(statistics.median(ms), 2) if ms else None,
            "p99_ms": round(percentile(ms, 0.99), 2) if ms else None,
            "max_ms": round(max(ms), 2) if ms else None}


def rss_kb(pid, field="VmHWM"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def check_stale(world, names):
    """Stop the DB, ask NAMES (cached before the attack), start the DB again: the
    probes (each right only if a stale answer was given)."""
    sandbox.stop_db(world.paths)
    try:
        return [probe_getpw(world, n) for n in names]
    finally:
        sandbox.restart_db(world.paths)


def cache_pauses(entries=100000, puts=300000):
    """Per put() into a full ResponseCache of ENTRIES, for PUTS distinct keys (each one
    evicts): median and slowest in microseconds, and the process's RSS growth in kB,
    for both implementations. (The old cache rebuilt its table once per entries/2 new
    keys: a pause of 12-19 ms.)"""
    from qmailsql.core import _hot, fallback
    out = {}
    for name, m in (("cython", _hot), ("python", fallback)):
        cache = m.ResponseCache(entries)
        response = b"x" * 60
        for i in range(entries):
            cache.put(b"getpw\0warm%d\0" % i, response, 1.0, 300, 3600)
        times = array.array("d", bytes(8 * puts))  # allocated before RSS is read
        rss = rss_kb(os.getpid(), "VmRSS")
        clock = time.perf_counter
        for i in range(puts):
            key = b"getpw\0user%d\0" % i
            t = clock()
            cache.put(key, response, 1.0, 300, 3600)
            times[i] = clock() - t
        rss = rss_kb(os.getpid(), "VmRSS") - rss
        times = sorted(times)
        out[name] = {"put_p50_us": round(times[len(times) // 2] * 1e6, 2),
                     "put_max_us": round(times[-1] * 1e6, 1),
                     "rss_growth_kb": rss}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--probes", type=int, default=40, help="baseline probes per attack")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    args = ap.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    root = tempfile.mkdtemp(prefix="qshost-", dir="/tmp")
    result = {}
    try:
        world = prepare(root, probes=len(attacks) * (args.probes + 400) + 100)
        rows = []
        for name in attacks:
            base = summary(run_probes(probes_for(world, name, args.probes)))
            stale_names = world.take_probes(50) if name == "cache" else []
            run_probes([lambda n=n: probe_getpw(world, n) for n in stale_names])  # cached
            report, probes = under_attack(world, name, args.seconds)
            during = [p for p in probes if p.ended <= report["end"]]
            entry = {"baseline": base, "attack": summary(probes),
                     "answered_during_attack": len(during),
                     "attacker": {k: v for k, v in report.items()
                                  if k not in ("start", "end")}}
            if stale_names:
                stale = check_stale(world, stale_names)
                entry["stale_answers_after_attack"] = sum(p.ok for p in stale)
                entry["stale_asked"] = len(stale)
            entry["daemon_rss_kb"] = rss_kb(world.daemon_pid(), "VmRSS")
            entry["daemon_peak_rss_kb_so_far"] = rss_kb(world.daemon_pid())
            result[name] = entry
            rows.append((name, base, entry["attack"]))
        result["daemon_peak_rss_kb"] = rss_kb(world.daemon_pid())
    finally:
        sandbox.down(root)
    result["cache"] = dict(result.get("cache", {}), pauses=cache_pauses())
    print("%-10s %28s %28s" % ("attack", "baseline p50/p99 ms", "under attack p50/p99 ms"))
    for name, base, att in rows:
        print("%-10s %14s/%-8s wrong %-3d %14s/%-8s wrong %-3d" % (
            name, base["p50_ms"], base["p99_ms"], base["wrong"], att["p50_ms"],
            att["p99_ms"], att["wrong"]))
    print("daemon peak RSS: %d kB" % result["daemon_peak_rss_kb"])
    for impl, p in sorted(result["cache"]["pauses"].items()):
        print("cache put into a full cache (%s): p50 %s us, slowest %s us, RSS +%d kB"
              % (impl, p["put_p50_us"], p["put_max_us"], p["rss_growth_kb"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
