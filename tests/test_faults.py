"""Faults, on real servers: a DB server killed mid-stream, every server down, a server
that accepts and never answers, a query that hangs, the daemon killed and restarted.

Whatever happens, an answer is either right or exit 111 (SPEC section 8): never the
alias user for a user that exists, never 100 or 116 because of trouble. Every wait is
bounded; a test that cannot reach its next step fails instead of hanging.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import add_mailbox, replica_pair

import qmailsql
from qmailsql.core import config as configmod, db, resolve
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path
from qmailsql.core.hotpath import encode_frame
from qmailsql.core.resolve import Refusal

UID, GID = 800, 100
NUSERS = 40
HELPER_TIMEOUT = 90  # the helpers give up after 60 s themselves


@pytest.fixture(scope="module")
def cluster():
    """(primary Paths, replica Paths); the replica runs the daemon."""
    yield from replica_pair(daemon_on_replica=True)


@pytest.fixture
def users(cluster, homes):
    """Both servers (and the daemon) running, NUSERS users and an alias user, replicated."""
    primary, replica = cluster
    for paths in (primary, replica):
        if not sb._pid_alive(paths.db_pid):
            sb.restart_db(paths)
    sb.wait_replicating(replica)
    sb.start_daemon(replica)
    d = db.Directory(configmod.as_admin(configmod.load(str(primary.root))))
    try:
        for t in ("mailbox", "alias", "virtual"):
            d.query("DELETE FROM `%s`" % t, write=True)
        names = ["alias"] + ["user%02d" % i for i in range(NUSERS)]
        for name in names:
            add_mailbox(d, name, homes / name, uid=UID, gid=GID, password="pw-" + name,
                        make_home=True)
    finally:
        d.close()
    sb.wait_caught_up(primary, replica)
    flush(replica)
    return names[1:]


def flush(paths):
    """Empty the daemon's cache, so the next lookups ask the DB."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        s.connect(str(paths.daemon_socket))
        s.sendall(encode_frame([b"flush"]))
        s.recv(100)
    except OSError:
        pass
    finally:
        s.close()


def helper_env(paths):
    return dict(os.environ, QMAILSQL_SOCKET=str(paths.daemon_socket),
                QMAILSQL_QMAIL_DIR=str(paths.root))


def run_getpw_helper(paths, local):
    r = subprocess.run([str(helper_path("qmail-getpw")), local], capture_output=True,
                       env=helper_env(paths), timeout=HELPER_TIMEOUT)
    if r.returncode == 0:
        return ("ok", r.stdout.split(b"\0")[0].decode())
    return (r.returncode, r.stderr.decode("utf-8", "replace"))


def run_checkpassword(paths, login, password):
    """checkpassword with LOGIN\\0PASSWORD\\0 on fd 3; its exit code."""
    with tempfile.TemporaryFile() as f:
        f.write(login.encode() + b"\0" + password.encode() + b"\0" + b"0\0")
        f.seek(0)
        r = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh",
                            str(helper_path("checkpassword")), "/bin/true"], stdin=f,
                           capture_output=True, env=helper_env(paths),
                           timeout=HELPER_TIMEOUT)
    return r.returncode


def run_cli_getpw(paths, local):
    return subprocess.run([sys.executable, "-m", "qmailsql", "getpw", local],
                          capture_output=True, timeout=HELPER_TIMEOUT,
                          env=dict(os.environ, QMAILSQL_QMAIL_DIR=str(paths.root)))


def session_lookup(session):
    def lookup(name):
        try:
            return ("ok", session.getpw(name.encode()).user.decode())
        except Refusal as r:
            return (r.code, r.message)
    return lookup


def helper_lookup(paths, flush_first):
    def lookup(name):
        if flush_first:
            flush(paths)
        return run_getpw_helper(paths, name)
    return lookup


class Loop(threading.Thread):
    """Lookups of NAMES, round and round, each result labelled with the phase it began in."""

    def __init__(self, lookup, names):
        threading.Thread.__init__(self, daemon=True)
        self.lookup = lookup
        self.names = names
        self.phase = "before"
        self.results = []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            phase = self.phase
            try:
                outcome = self.lookup(name)
            except Exception as e:  # recorded, so that the test reports it
                outcome = ("exception", repr(e))
            self.results.append((phase, name, outcome))

    def count(self, phase, ok=False):
        return sum(1 for p, n, o in self.results if p == phase and (not ok or o[0] == "ok"))

    def wait_for(self, phase, n, ok=False, timeout=120):
        deadline = time.monotonic() + timeout
        while self.count(phase, ok) < n:
            if not self.is_alive():
                pytest.fail("lookup loop ended early: %r" % self.results[-3:])
            if time.monotonic() > deadline:
                pytest.fail("only %d %s lookups in phase %r after %ds: %r" % (
                    self.count(phase, ok), "successful" if ok else "", phase, timeout,
                    self.results[-3:]))
            time.sleep(0.02)

    def finish(self):
        self.halt.set()
        self.join(HELPER_TIMEOUT + 30)
        assert not self.is_alive(), "lookup loop did not stop"


def assert_right_or_111(results):
    """Every answer is the looked-up user itself, or exit 111."""
    wrong = [(p, n, o) for p, n, o in results if not (o == ("ok", n) or o[0] == 111)]
    assert not wrong, wrong[:5]


# (a) ---------------------------------------------------------------------------------

def test_first_server_killed_while_lookups_run(cluster, users):
    primary, replica = cluster
    cfg = configmod.load(str(replica.root))
    assert cfg.servers[0] != cfg.write_server  # the replica is first, the primary next
    session = qmailsql.Session(config=cfg)
    loops = [Loop(session_lookup(session), users)]
    loops.append(Loop(helper_lookup(replica, flush_first=True), users))
    for loop in loops:
        loop.start()
    try:
        for loop in loops:
            loop.wait_for("before", 5, ok=True)
        assert session.directory.server == cfg.servers[0]
        sb.stop_db(replica, signal_kill())
        for loop in loops:
            loop.phase = "after"
        for loop in loops:
            loop.wait_for("after", 10, ok=True)
    finally:
        for loop in loops:
            loop.finish()
        session.close()
    for loop in loops:
        assert_right_or_111(loop.results)
    # the Session moved to the next server, and lookups never stopped answering
    assert session.directory.last_server == cfg.servers[1]
    assert loops[0].count("after", ok=True) >= 10


def signal_kill():
    import signal
    return signal.SIGKILL


def test_first_server_killed_cli_moves_on(cluster, users):
    primary, replica = cluster
    sb.stop_db(replica, signal_kill())
    r = run_cli_getpw(replica, users[3] + "-ext")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(b"\0")[0] == users[3].encode()
    assert r.stdout.split(b"\0")[5] == b"ext"


# (b) ---------------------------------------------------------------------------------

def test_every_server_down_is_111(cluster, users):
    primary, replica = cluster
    sb.stop_db(replica)
    sb.stop_db(primary)
    for paths in (replica, primary):
        for local in (users[0], "never-seen-before", "alias"):
            r = run_cli_getpw(paths, local)
            assert r.returncode == 111, (local, r.stdout, r.stderr)
            assert r.stdout == b""
            assert b"Traceback" not in r.stderr and r.stderr.count(b"\n") == 1
    flush(replica)
    for local in (users[1], "never-seen-before", "user99-x"):
        rc, err = run_getpw_helper(replica, local)
        assert rc == 111, (local, err)
    # the right password while the DB is down: "try later", never "bad password"
    assert run_checkpassword(replica, users[2], "pw-" + users[2]) == 111
    assert run_checkpassword(replica, users[2], "wrong") == 111


# (c) ---------------------------------------------------------------------------------

class Silent(threading.Thread):
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""

    def __init__(self):
        threading.Thread.__init__(self, daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted += 1
            self.conns.append(conn)

    def close(self):
        self.halt.set()
        self.join(10)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent():
    s = Silent()
    s.start()
    yield s
    s.close()


def qmail_home(tmp_path, servers, write_server, base):
    """A qmail home listing SERVERS, with 1-second timeouts, credentials from BASE."""
    cfg = configmod.load(str(base.root))
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    path = home / "control" / "sqlserver"
    path.write_text("".join("server %s\n" % s for s in servers) +
                    "write_server %s\nlogin %s\npassword %s\ndb %s\n"
                    "connect_timeout 1\nread_timeout 1\n"
                    % (write_server, cfg.login, cfg.password, cfg.db))
    os.chmod(path, 0o640)
    return configmod.load(str(home))


def tcp(paths):
    return "127.0.0.1:%d" % sb.db_options(paths)["port"]


def resolver_with(cfg, health):
    directory = db.Directory(cfg, health)
    return directory, resolve.Resolver.for_directory(cfg, directory)


def test_silent_server_is_passed_over_and_then_skipped(cluster, users, silent, tmp_path):
    primary, replica = cluster
    cfg = qmail_home(tmp_path, ["127.0.0.1:%d" % silent.port, tcp(primary)], tcp(primary),
                     primary)
    health = db.ServerHealth(cool_down=3600)
    d, r = resolver_with(cfg, health)
    try:
        assert r.getpw(users[0].encode()).user == users[0].encode()
        assert d.server == cfg.servers[1]
    finally:
        d.close()
    assert silent.accepted == 1
    assert health.cooling(cfg.servers[0])
    for name in users[1:4]:  # new connections, same health: the silent one is skipped
        d, r = resolver_with(cfg, health)
        try:
            assert r.getpw(name.encode()).user == name.encode()
        finally:
            d.close()
    assert silent.accepted == 1


def test_cool_down_is_per_server_health(cluster, users, silent, tmp_path):
    primary, replica = cluster
    cfg = qmail_home(tmp_path, ["127.0.0.1:%d" % silent.port, tcp(primary)], tcp(primary),
                     primary)
    health = db.ServerHealth(cool_down=0)  # no cool-down: every connection tries it again
    for name in users[:3]:
        d, r = resolver_with(cfg, health)
        try:
            assert r.getpw(name.encode()).user == name.encode()
        finally:
            d.close()
    assert silent.accepted == 3


def test_preferred_server_is_tried_again_after_its_cool_down(cluster, users, tmp_path):
    """Fail-back: a long-lived Directory returns to the first server once it may."""
    primary, replica = cluster
    dead = "127.0.0.1:%d" % sb.free_port()  # nothing listens: refused at once
    cfg = qmail_home(tmp_path, [dead, tcp(primary)], tcp(primary), primary)
    log = []
    for cool_down, tries in ((3600, 1), (0, 3)):
        log.clear()
        d = db.Directory(cfg, db.ServerHealth(cool_down), log.append)
        try:
            for _ in range(3):
                assert d.query("SELECT 1") == ((1,),)
                assert d.last_server == cfg.servers[1]
        finally:
            d.close()
        assert sum("unreachable" in m and dead in m for m in log) == tries, log


def test_hanging_query_moves_to_next_server(cluster, users, tmp_path):
    """The first server takes the connection but the query never returns (a table lock)."""
    primary, replica = cluster
    cfg = qmail_home(tmp_path, [tcp(replica), tcp(primary)], tcp(primary), primary)
    d, r = resolver_with(cfg, db.ServerHealth(cool_down=3600))
    lock = sb.root_connect(replica)
    try:
        assert d.query("SELECT 1") == ((1,),)
        assert d.server == cfg.servers[0]
        lock.cursor().execute("LOCK TABLES qmail.mailbox WRITE")
        assert r.getpw(users[5].encode()).user == users[5].encode()
        assert d.last_server == cfg.servers[1]
        assert d.health.cooling(cfg.servers[0])
    finally:
        lock.close()
        d.close()


# (d) ---------------------------------------------------------------------------------

def test_daemon_killed_and_restarted(cluster, users):
    primary, replica = cluster
    loop = Loop(helper_lookup(replica, flush_first=False), users)
    loop.start()
    try:
        loop.wait_for("before", 5, ok=True)
        sb.stop_daemon(replica, signal_kill())
        loop.phase = "down"
        rc, err = run_getpw_helper(replica, users[0])
        assert rc == 111, err
        assert "qmailsqld" in err
        assert run_checkpassword(replica, users[0], "pw-" + users[0]) == 111
        loop.wait_for("down", 3)
        sb.start_daemon(replica)
        loop.phase = "after"
        loop.wait_for("after", 5, ok=True)
    finally:
        loop.finish()
        sb.start_daemon(replica)
    assert_right_or_111(loop.results)
    assert any(o[0] == 111 for p, n, o in loop.results if p == "down")
    assert run_getpw_helper(replica, users[1]) == ("ok", users[1])


# (e) ---------------------------------------------------------------------------------

def run_local_helper(paths, standin, user, home, dash, ext):
    local = user + dash + ext
    r = subprocess.run([str(helper_path("qmail-local")), "--", user, home, local, dash, ext,
                        "example.org", "s@example.net", "./Maildir/"], capture_output=True,
                       env=dict(helper_env(paths), QMAILSQL_QMAIL_LOCAL=standin),
                       timeout=HELPER_TIMEOUT)
    return r.returncode, r.stdout.split(b"\0"), r.stderr.decode("utf-8", "replace")


def test_primary_down_daemon_keeps_delivering(cluster, users, homes, tmp_path):
    """The write_server (primary) stopped, the daemon on the replica: the compiled
    helpers keep delivering to existing users, plain and with extensions; only what
    would bounce (an unknown address, or an extension with neither rows nor a file)
    waits with 111."""
    from qmailsql.sandbox import demo
    primary, replica = cluster
    standin = demo.write_stand_in(str(tmp_path))
    sb.stop_db(primary)
    flush(replica)
    for name in users[:5]:
        for local in (name, name + "-ext", name + "-a-b"):
            assert run_getpw_helper(replica, local) == ("ok", name), local
        home = str(homes / name)
        rc, argv, err = run_local_helper(replica, standin, name, home, "", "")
        assert rc == 0 and argv[4:6] == [b"", b""], err
        Path(home, ".qmail-ext").write_text("./Maildir/\n")
        rc, argv, err = run_local_helper(replica, standin, name, home, "-", "ext")
        assert rc == 0 and argv[4:6] == [b"-", b"ext"], err
    for local in ("never-seen-before", "nobody"):
        rc, err = run_getpw_helper(replica, local)
        assert rc == 111, (local, err)
    rc, argv, err = run_local_helper(replica, standin, users[0], str(homes / users[0]), "-",
                                     "nosuch")
    assert rc == 111 and "qmail-local: " in err, (rc, err)
# ---------------------------------------------------------------- a refused statement

def test_oversized_statement_does_not_fail_the_server(sandbox):
    """A statement too big for the server (or for qmailsql's own bound) is that
    statement's trouble: 111 for it, and the server stays in use for everyone else.
    (Marking it failed skipped it for 30 s: every delivery waited.)"""
    paths = sb.Paths(sandbox)
    cfg = configmod.load(str(sandbox))
    server = cfg.servers[0]
    for size in (17 << 20, 64 << 20):  # past the server's max_allowed_packet (16 MB)
        d = db.Directory(cfg)
        try:
            assert d.query("SELECT 1") == ((1,),)
            with pytest.raises(db.DirectoryUnavailable) as e:
                d.query("SELECT %s", ["x" * size])
            print(size, e.value)
            assert not d.health.cooling(server), "a %d-byte statement failed the server" % size
            assert d.query("SELECT 1") == ((1,),)
        finally:
            d.close()
    # a server whose limit was lowered: the same for its new connections
    root = sb.root_connect(paths)
    try:
        root.cursor().execute("SET GLOBAL max_allowed_packet=65536")
        d = db.Directory(cfg)
        try:
            with pytest.raises(db.DirectoryUnavailable, match="max_allowed_packet"):
                d.query("SELECT %s", ["x" * 100000])
            assert not d.health.cooling(server)
        finally:
            d.close()
    finally:
        root.cursor().execute("SET GLOBAL max_allowed_packet=16777216")
        root.close()
