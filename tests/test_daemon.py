"""qmailsqld end to end: the compiled helpers against the daemon and a private MariaDB.

No timing assertions: where a TTL matters the test waits for the behaviour to show
(with a generous limit), or uses flush.
"""
import dataclasses
import io
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import add_mailbox, add_virtual, as_uid, environ, python_for_everyone, raw_as

import qmailsql
from qmailsql import cli
from qmailsql.daemon import server as daemon
from qmailsql.sandbox import demo
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path
from qmailsql.core.hotpath import decode_frame, encode_frame

SOFTLIMIT = "/usr/bin/softlimit"
OTHER_UID = 12345
FAQ_LOCALS = ["iain", "iain-sanity", "iain-slowlaris", "IAIN-Slowlaris", "iain-sanity-x",
              "iain-", "-iain", "nobody", "nobody-at-all", ""]


# ---------------------------------------------------------------- helpers

def getpw_helper(local, env=None, pre=(), exe=None, **kw):
    """The compiled qmail-getpw (EXE: another copy of it, e.g. one another uid can reach)."""
    return subprocess.run(list(pre) + [str(exe or helper_path("qmail-getpw")), local],
                          capture_output=True, env=env or os.environ, **kw)


def cli_getpw(local):
    """`qmailsql getpw LOCAL` in this process: (exit code, stdout bytes)."""
    out = io.BytesIO()
    saved = sys.stdout, sys.stderr
    sys.stdout = wrapper = io.TextIOWrapper(out, write_through=True)
    sys.stderr = io.StringIO()
    try:
        code = cli.main(["getpw", "--", os.fsdecode(local)])
    finally:
        sys.stdout, sys.stderr = saved
        wrapper.detach()
    return code, out.getvalue()


def request(path, fields, timeout=10):
    """One raw request on a fresh connection: (status, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(encode_frame(fields))
        return read_response(s)


def read_response(s, buf=None):
    """Read one response frame from S; (status, body) (and the leftover if BUF is a list)."""
    data = buf.pop() if buf else b""
    while True:
        payload, used = decode_frame(data)
        if payload is not None:
            break
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("connection closed; got %r" % data)
        data += chunk
    if buf is not None:
        buf.append(data[used:])
    status, _, body = payload.partition(b"\0")
    return int(status), body


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def log_text(root):
    return sb.Paths(root).daemon_log.read_text(errors="replace")


def daemon_pid(root):
    return int(sb.Paths(root).daemon_pid.read_text())


def set_sqlserver_extra(root, extra):
    """Rewrite ROOT's control/sqlserver with EXTRA lines (keeping the credentials)."""
    from qmailsql.core import config as configmod
    paths = sb.Paths(root)
    cfg = configmod.load(str(root))
    sb.write_sqlserver(paths, cfg.password, extra=extra)


def reload_daemon(root):
    """SIGHUP the daemon and wait for its log to say how the reload went."""
    before = log_text(root).count("reload")
    os.kill(daemon_pid(root), signal.SIGHUP)
    wait_for(lambda: log_text(root).count("reload") > before, 30, "the daemon to reload")
    return log_text(root).rsplit("qmailsqld: reload", 1)[1]


def load_faq(q, home_root, alias_user=True):
    demo.load_faq(q.directory, str(home_root))
    if alias_user:
        home = Path(home_root) / "alias"
        demo.make_home(str(home), demo.FAQ_UID + 1, demo.FAQ_GID)
        add_mailbox(q, "alias", home, uid=demo.FAQ_UID + 1, gid=demo.FAQ_GID, password="",
                    replace=True)


def add_user(q, name, home_root, uid=demo.FAQ_UID):
    home = Path(home_root) / name
    demo.make_home(str(home), uid, demo.FAQ_GID)
    add_mailbox(q, name, home, uid=uid, gid=demo.FAQ_GID, password="pw", replace=True)
    return home


def flush(root):
    status, body = request(sb.Paths(root).daemon_socket, [b"flush"])
    assert status == 0, body


def env_for(root):
    return dict(os.environ, **sb.env(sb.Paths(root)))


@pytest.fixture
def faq(db, sandbox, homes):
    """The FAQ's rows plus an alias user in the shared sandbox; daemon cache empty."""
    load_faq(db, homes)
    flush(sandbox)
    return db


def fields(*parts):
    return b"".join(p + b"\0" for p in parts)


# ---------------------------------------------------------------- qmail-getpw

def test_faq_examples_match_direct_cli(faq, homes):
    """The compiled helper through the daemon == `python -m qmailsql getpw` (a real
    subprocess), byte for byte, exit code included."""
    for local in FAQ_LOCALS:
        h = getpw_helper(local)
        d = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "--", local],
                           capture_output=True)
        assert (h.returncode, h.stdout) == (d.returncode, d.stdout), local
    # and the FAQ's answers are the right ones
    home = str(homes / "iain").encode()
    assert getpw_helper("iain-slowlaris").stdout == fields(b"iain", b"800", b"100", home,
                                                           b"-", b"slowlaris")
    assert getpw_helper("iain-sanity").stdout == fields(
        b"iain-sanity", b"800", b"100", str(homes / "sanity").encode(), b"", b"")
    assert getpw_helper("nobody").stdout.split(b"\0")[0] == b"alias"


def random_locals(n, seed=20240611):
    rnd = random.Random(seed)
    pieces = [b"iain", b"IAIN", b"sanity", b"-", b"-", b"--", b"slowlaris", b"alias", b"'",
              b"\\", b"%", b"_", b'"', b"@", b".", b" ", b"`", b";", b"nobody", b"\xff",
              b"\xc3\xa9", b"\xe2\x82", b"\x80", b"\t", b"x" * 40, b"*", b"$", b"?"]
    out = []
    for i in range(n):
        kind = rnd.random()
        if kind < 0.1:  # long junk
            out.append(bytes(rnd.randrange(1, 256) for _ in range(rnd.choice([100, 1000,
                                                                              10000]))))
        else:
            out.append(b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 8))))
    return out


def test_random_locals_match_direct(faq):
    """~200 odd locals (quotes, %, _, backslash, non-UTF-8, 10 kB of junk): helper ==
    `qmailsql getpw` (the CLI's main, in this process, with the same argv)."""
    locals_ = random_locals(200)
    assert any(b"\xff" in l for l in locals_) and any(len(l) >= 10000 for l in locals_)
    seen_codes = set()
    for local in locals_:
        h = getpw_helper(local)
        code, out = cli_getpw(local)
        assert (h.returncode, h.stdout) == (code, out), local
        seen_codes.add(code)
        if h.returncode:
            assert h.stderr.startswith(b"qmail-getpw: ") and h.stderr.count(b"\n") == 1
    assert 0 in seen_codes
    # a few of them through a real `python -m qmailsql getpw` as well
    for local in locals_[:12]:
        h = getpw_helper(local)
        d = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "--", local],
                           capture_output=True)
        assert (h.returncode, h.stdout) == (d.returncode, d.stdout), local


def test_no_alias_user_is_116(db, sandbox, homes):
    load_faq(db, homes, alias_user=False)
    flush(sandbox)
    r = getpw_helper("nobody")
    assert r.returncode == 116 and r.stdout == b""
    assert cli_getpw(b"nobody")[0] == 116


def test_under_softlimit(faq, homes):
    plain = getpw_helper("iain-slowlaris")
    limited = getpw_helper("iain-slowlaris", pre=[SOFTLIMIT, "-m", "2000000"])
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout == plain.stdout and b"slowlaris" in plain.stdout


def test_daemon_stopped_means_111(faq, sandbox, tmp_path):
    paths = sb.Paths(sandbox)
    assert getpw_helper("iain").returncode == 0
    sb.stop_daemon(paths)
    try:
        assert not paths.daemon_socket.exists()
        for local in ("iain", "nobody", ""):
            r = getpw_helper(local)
            assert r.returncode == 111, (local, r)
            assert r.stdout == b""
            assert r.stderr.startswith(b"qmail-getpw: ") and r.stderr.count(b"\n") == 1
            assert str(paths.daemon_socket).encode() in r.stderr
        standin = tmp_path / "stock"
        standin.write_text("#!/bin/sh\nexit 0\n")
        standin.chmod(0o755)
        r = subprocess.run([str(helper_path("qmail-local")), "--", "iain", "/nonexistent",
                            "iain", "", "", "example.org", "a@b", "./Maildir/"],
                           capture_output=True, env=dict(os.environ,
                                                         QMAILSQL_QMAIL_LOCAL=str(standin)))
        assert r.returncode == 111 and r.stderr.startswith(b"qmail-local: ")
        r = subprocess.run(["sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh",
                            str(helper_path("checkpassword")), "/bin/true"],
                           input=b"iain\0secret\0\0", capture_output=True)
        assert r.returncode == 111 and r.stderr.startswith(b"checkpassword: ")
    finally:
        sb.start_daemon(paths)
    assert getpw_helper("iain").returncode == 0


# ---------------------------------------------------------------- who may ask

def test_peercred_reads_uids_above_2_31_as_they_are(sandbox):
    """uid_t is unsigned: a uid of 2**31 or more is that uid, not a negative number (which
    would file its cache entries under the privileged share)."""
    os.chmod(sandbox, 0o755)
    paths = sb.Paths(sandbox)
    os.chmod(paths.run, 0o755)
    big = 2 ** 31 + 5
    status, body = raw_as(big, paths.daemon_socket, [b"getpw", b"iain"])
    assert status == 111 and b"from uid %d" % big in body, body
    assert "refused uid %d for getpw" % big in log_text(sandbox)


def test_peercred_refuses_getpw_from_other_uid(faq, sandbox, homes):
    os.chmod(sandbox, 0o755)  # let the other uid reach the socket at all
    paths = sb.Paths(sandbox)
    os.chmod(paths.run, 0o755)
    # the sandbox's copy: the package's own may sit where other uids cannot go (/root)
    r = getpw_helper("iain-slowlaris", pre=as_uid(OTHER_UID), exe=paths.bin / "qmail-getpw")
    assert r.returncode == 111, r
    assert r.stdout == b""
    assert b"uid %d" % OTHER_UID in r.stderr and r.stderr.startswith(b"qmail-getpw: ")
    assert "refused uid %d for getpw" % OTHER_UID in log_text(sandbox)
    sock = paths.daemon_socket
    for command, args in ((b"auth", [b"iain", b"secret", b""]), (b"flush", []),
                          (b"getpw", [b"iain"])):
        status, body = raw_as(OTHER_UID, sock, [command] + args)
        assert status == 111 and b"refuses" in body, (command, body)
    # qmail-local runs as the mailbox's uid: `local` is open to the uid owning the home
    assert raw_as(OTHER_UID, sock, [b"ping"]) == (0, b"pong")
    local = [b"local", b"iain", str(homes / "iain").encode(), b"iain-slowlaris", b"-",
             b"slowlaris", b"example.org"]
    status, body = raw_as(os.stat(homes / "iain").st_uid, sock, local)
    assert status == 0, body
    assert body == b"./Maildir/\n"
    status, body = raw_as(OTHER_UID, sock, local)
    assert status == 111 and b"another account" in body, body
    assert "refused uid %d for local" % OTHER_UID in log_text(sandbox)
    # nor by naming its own home with another user's name (the review's attack)
    own = homes / "other"
    own.mkdir()
    os.chown(own, OTHER_UID, OTHER_UID)
    sneaky = [b"local", b"iain", str(own).encode()] + local[3:]
    status, body = raw_as(OTHER_UID, sock, sneaky)
    assert status == 111 and b"another account" in body, body
    # root may still do everything
    assert getpw_helper("iain-slowlaris").returncode == 0


def selects(root):
    """The Com_select counter of ROOT's MariaDB (SHOW STATUS adds nothing to it)."""
    return int(sb.root_sql(sb.Paths(root), [("SHOW GLOBAL STATUS LIKE 'Com_select'",
                                             ())])[0][1])


def test_local_cached_for_its_uid_whatever_the_domain(faq, sandbox, homes):
    """The answer to `local` does not depend on its 6th field, the domain (aliases.py
    ignores it): the same account's request for another domain is a cache hit, no query
    (so getpw may fill the cache for the wrapper before the domain is known)."""
    os.chmod(sandbox, 0o755)
    paths = sb.Paths(sandbox)
    os.chmod(paths.run, 0o755)
    owner = os.stat(homes / "iain").st_uid
    assert owner not in daemon.client_uids()  # the per-uid cache, not the privileged one
    for command in (b"local", b"localq"):
        asked = [command, b"iain", str(homes / "iain").encode(), b"iain-slowlaris", b"-",
                 b"slowlaris"]
        first = raw_as(owner, paths.daemon_socket, asked + [b"example.org"])
        assert first[0] == 0, first
        before = selects(sandbox)
        assert raw_as(owner, paths.daemon_socket, asked + [b"other.example"]) == first
        assert selects(sandbox) == before, command
        # the uid is still part of the key: another uid's request is worked out (refused)
        status, body = raw_as(OTHER_UID, paths.daemon_socket, asked + [b"example.org"])
        assert status == 111 and b"another account" in body, body


def test_workers_say_what_their_answer_is(sandbox, db, homes):
    """The cache keeps an answer as long as its kind says (hotpath.cache_times), and the
    worker that gave it says the kind from the resolver's result, not from its bytes."""
    from types import SimpleNamespace
    from qmailsql.core import config as configmod
    from qmailsql.core.hotpath import FRESH, HIT, NEGATIVE, NEVER
    load_faq(db, homes)
    config = configmod.load(str(sandbox))
    d = daemon.Daemon(config)
    worker = daemon.Worker(d, None, "test")
    worker.setup(config)
    root = SimpleNamespace(privileged=True, uid=0)

    def kind(*fields):
        task = daemon.Task(root, b"", fields[0], list(fields[1:]), None, 0, config)
        worker.handle(task)
        return task.status, task.kind
    try:
        assert kind(b"getpw", b"iain-slowlaris") == (0, HIT)
        assert kind(b"getpw", b"nobody-known") == (0, NEGATIVE)  # the alias user, no one else
        assert kind(b"getpw", b"alias-nobody") == (0, HIT)       # the alias user by its name
        local = [b"iain", str(homes / "iain").encode(), b"iain", b"", b"", b"example.org"]
        assert kind(b"local", *local) == (0, FRESH)
        assert kind(b"localq", *local) == (0, FRESH)
        assert kind(b"local-confirm", *local) == (0, NEVER)
        assert kind(b"auth", b"iain", b"wrong", b"")[1] == NEVER
        # a magic forward is configured, not a bounce in waiting: a HIT (cache_ttl, and
        # stale while the DB is down: its `local` answer, &address, is FRESH only)
        add_virtual(db, "forward", "popaccount@hotmail.com", "user", "virtual.com")
        worker.setup(dataclasses.replace(config, magic_forwarding=True))
        assert kind(b"getpw", b"virtual.com-user") == (0, HIT)
        forward = [b"alias", str(homes / "alias").encode(), b"virtual.com-user", b"-",
                   b"virtual.com-user", b"virtual.com"]
        assert kind(b"local", *forward) == (0, FRESH)
        worker.setup(config)
        db.directory.query("DELETE FROM mailbox WHERE username='alias'", write=True)
        assert kind(b"getpw", b"nobody-known") == (116, NEGATIVE)
    finally:
        worker.directory.close()
        d.ep.close()


def test_local_refusal_costs_the_same_for_known_and_unknown_names(sandbox, db, homes,
                                                                  monkeypatch):
    """Whether a name is a DB account must not show in how long `local` takes to refuse a
    peer (issue 12): a known name and an unknown one do the same work, the same
    queries, one getpwnam, one users/cdb look-up, and get the same answer."""
    from qmailsql.core import config as configmod, resolve
    from qmailsql.core.resolve import Refusal
    load_faq(db, homes)
    config = configmod.load(str(sandbox))
    d = daemon.Daemon(config)
    worker = daemon.Worker(d, None, "test")
    worker.setup(config)
    work = []
    real_query, real_getpwnam, real_delivers = (worker.directory.query, resolve.pwd.getpwnam,
                                                d.users_cdb.delivers)

    def query(sql, params=(), write=False):
        work.append(("query", sql, len(params), write))
        return real_query(sql, params, write)

    def getpwnam(name):
        work.append(("getpwnam",))
        return real_getpwnam(name)

    def delivers(*args):
        work.append(("users/cdb",))
        return real_delivers(*args)
    monkeypatch.setattr(worker.directory, "query", query)
    monkeypatch.setattr(resolve.pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(d.users_cdb, "delivers", delivers)
    done = {}
    try:
        for name in (b"iain", b"nobody-at-all"):
            work.clear()
            with pytest.raises(Refusal) as e:
                worker.own_account(OTHER_UID, name, b"/home/elsewhere", name, b"", b"")
            done[name] = (list(work), e.value.code, e.value.message.replace(
                repr(name.decode()), "NAME"))
    finally:
        worker.directory.close()
        d.ep.close()
    assert done[b"iain"] == done[b"nobody-at-all"]
    assert ("getpwnam",) in done[b"iain"][0] and ("users/cdb",) in done[b"iain"][0]
def test_sandbox_daemon_log_is_private(sandbox):
    """The daemon's log (users, addresses, row values) is readable by its owner only."""
    mode = os.stat(sb.Paths(sandbox).daemon_log).st_mode
    assert mode & 0o077 == 0, oct(mode)


def test_peer_without_rights_never_sees_row_values(faq, sandbox, homes):
    """A misconfigured row's values (uid, gid, home) are in the daemon's log, not in
    the 111 an unprivileged peer gets; a privileged peer gets the whole story."""
    os.chmod(sandbox, 0o755)
    paths = sb.Paths(sandbox)
    os.chmod(paths.run, 0o755)
    add_mailbox(faq, "broken", "relative/secret-place", uid=OTHER_UID, gid=100, password="",
                replace=True)
    local = [b"local", b"broken", b"/home/broken", b"broken", b"", b"", b"example.org"]
    status, body = raw_as(OTHER_UID, paths.daemon_socket, local)
    assert status == 111 and b"broken" in body, body
    assert b"secret-place" not in body and b"%d" % OTHER_UID not in body, body
    assert "relative/secret-place" in log_text(sandbox)
    status, body = request(paths.daemon_socket, [b"getpw", b"broken"])
    assert status == 111 and b"relative/secret-place" in body


HOLD_CLIENT = r"""
import socket, sys, time
path, n, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PING = b"5:ping\0,"

def dial():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    return s

def exchange(s):
    try:
        s.sendall(PING)
    except OSError:
        pass  # a refused connection may be closed before the request is sent
    data = b""
    while not data.endswith(b","):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data.replace(b"\0", b"|").decode("latin-1")

held = []
for _ in range(n):
    s = dial()
    assert exchange(s) == "6:0|pong,"  # accepted and counted
    held.append(s)
for _ in range(extra):
    s = dial()
    print(exchange(s), flush=True)
    s.close()
sys.stdin.readline()
for s in held:
    s.close()
for _ in range(300):  # the daemon sees the hang-ups soon: below the cap again
    s = dial()
    got = exchange(s)
    s.close()
    if got == "6:0|pong,":
        break
    time.sleep(0.1)
print(got, flush=True)
"""


def test_connection_cap_per_unprivileged_uid(faq, sandbox):
    """An unprivileged uid may hold MAX_CONN_PER_UID connections; the next is answered 111
    and closed
    (logged, not once per refusal), while root is never capped and still gets answers."""
    os.chmod(sandbox, 0o755)
    paths = sb.Paths(sandbox)
    os.chmod(paths.run, 0o755)
    sock = paths.daemon_socket
    logged = log_text(sandbox).count("refused a connection from uid %d" % OTHER_UID)
    cap = daemon.MAX_CONN_PER_UID
    extra = 10
    proc = subprocess.Popen(as_uid(OTHER_UID) + [python_for_everyone(), "-I", "-c",
                                                 HOLD_CLIENT, str(sock), str(cap), str(extra)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        for _ in range(extra):
            line = proc.stdout.readline()
            assert line.rstrip("\n") == "%d:111|too many connections from uid %d," % (
                len("111\0too many connections from uid %d" % OTHER_UID), OTHER_UID), (
                line, proc.stderr.read() if proc.poll() is not None else "")
        # root (privileged) while the other uid is at its cap: answered, and not capped
        assert getpw_helper("iain-slowlaris").returncode == 0
        mine = []
        try:
            for _ in range(40):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(str(sock))
                mine.append(s)
            for s in mine:
                s.sendall(encode_frame([b"ping"]))
                assert read_response(s) == (0, b"pong")
        finally:
            for s in mine:
                s.close()
        out, err = proc.communicate("\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip("\n") == "6:0|pong,"  # below the cap again once it hung up
    text = log_text(sandbox)
    refusals = text.count("refused a connection from uid %d" % OTHER_UID) - logged
    assert 1 <= refusals < extra  # rate-limited
    assert "the limit is %d" % cap in text


def test_helpers_never_read_sqlserver(own_sandbox):
    """control/sqlserver 0600 and owned by another uid: a helper running as a client
    uid (QMAILSQL_CLIENT_UIDS) still gets its answer; only the daemon reads the file."""
    root, env = own_sandbox
    paths = sb.Paths(root)
    allowed = 23456
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home")
    restart_daemon_with(paths, QMAILSQL_CLIENT_UIDS="%d, 34567" % allowed)
    os.chmod(root, 0o755)
    os.chmod(paths.run, 0o755)
    st = paths.sqlserver.stat()
    want = getpw_helper("iain-slowlaris", env=env_for(root))
    assert want.returncode == 0 and b"slowlaris" in want.stdout
    os.chown(paths.sqlserver, 4242, 4242)
    os.chmod(paths.sqlserver, 0o600)
    try:
        probe = subprocess.run(as_uid(allowed) + ["cat", str(paths.sqlserver)],
                               capture_output=True)
        assert probe.returncode != 0  # the helper's uid really cannot read it
        got = getpw_helper("iain-slowlaris", env=env_for(root), pre=as_uid(allowed))
        assert (got.returncode, got.stdout) == (0, want.stdout), got.stderr
        got = getpw_helper("nobody", env=env_for(root), pre=as_uid(allowed))
        assert got.returncode == 0 and got.stdout.startswith(b"alias\0")
        # a uid not in the list is still refused
        other = getpw_helper("iain", env=env_for(root), pre=as_uid(OTHER_UID))
        assert other.returncode == 111
    finally:
        os.chown(paths.sqlserver, st.st_uid, st.st_gid)
        os.chmod(paths.sqlserver, st.st_mode & 0o7777)


# ---------------------------------------------------------------- DB outages

def test_db_down_stale_answers_then_fresh(own_sandbox):
    root, env = own_sandbox
    paths = sb.Paths(root)
    set_sqlserver_extra(root, "cache_ttl 1\nnegative_ttl 1\n")
    assert "failed" not in reload_daemon(root)
    pid = daemon_pid(root)
    e = env_for(root)
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home")
    known = {local: getpw_helper(local, env=e) for local in ("iain-slowlaris", "iain-sanity")}
    assert all(r.returncode == 0 for r in known.values())
    neg = getpw_helper("nobody-known", env=e)
    assert neg.returncode == 0 and neg.stdout.startswith(b"alias\0")

    sb.stop_db(paths)
    try:
        # once the entries expire, known users are answered from the stale cache
        assert _ask_until_stale(e)
        for local, r in known.items():
            got = getpw_helper(local, env=e)
            assert (got.returncode, got.stdout) == (0, r.stdout), got.stderr
        assert "stale answer for getpw 'iain-slowlaris'" in log_text(root)
        # unknown locals wait (111), never go to the alias user; nor does one whose
        # negative answer has expired
        for local in ("someone-new", "nobody-known"):
            got = getpw_helper(local, env=e)
            assert got.returncode == 111, (local, got)
            assert got.stdout == b"" and got.stderr.startswith(b"qmail-getpw: ")
        # local and auth wait too
        status, _ = request(paths.daemon_socket, [b"local", b"iain", b"/x", b"iain", b"",
                                                  b"", b"example.org"])
        assert status == 111
        status, _ = request(paths.daemon_socket, [b"auth", b"iain", b"secret", b""])
        assert status == 111
    finally:
        sb.start_db(paths)
    # the DB is back: a row changed now is seen, without restarting the daemon
    with qmailsql.connect(str(root)) as q:
        newhome = add_user(q, "iain", root / "home2")
    want = fields(b"iain", b"800", b"100", str(newhome).encode(), b"-", b"slowlaris")
    wait_for(lambda: getpw_helper("iain-slowlaris", env=e).stdout == want, 60,
             "the changed row to be seen")
    assert getpw_helper("someone-new", env=e).stdout.startswith(b"alias\0")
    assert daemon_pid(root) == pid


def _ask_until_stale(env, timeout=30):
    """Ask for a known user until the daemon answers it from the stale cache."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = getpw_helper("iain-slowlaris", env=env)
        assert r.returncode == 0, r.stderr  # fresh or stale, never 111
        time.sleep(0.2)
        if "stale answer" in log_text(Path(env["QMAILSQL_QMAIL_DIR"])):
            return True
    return False


def test_db_killed_known_users_still_resolve(own_sandbox):
    root, env = own_sandbox
    paths = sb.Paths(root)
    set_sqlserver_extra(root, "cache_ttl 1\n")
    reload_daemon(root)
    e = env_for(root)
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home")
    want = getpw_helper("iain-slowlaris", env=e)
    assert want.returncode == 0
    sb.stop_db(paths, signal.SIGKILL)
    try:
        assert _ask_until_stale(e)
        assert getpw_helper("iain-slowlaris", env=e).stdout == want.stdout
        assert getpw_helper("brand-new", env=e).returncode == 111
    finally:
        sb.start_db(paths)
    wait_for(lambda: getpw_helper("brand-new", env=e).returncode == 0, 60, "the DB again")


# ---------------------------------------------------------------- cache

def test_cache_ttls_flush_and_reload(own_sandbox):
    root, env = own_sandbox
    e = env_for(root)
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home", alias_user=False)
        # long TTLs: answers are kept, flush makes a change visible at once
        set_sqlserver_extra(root, "cache_ttl 3600\nnegative_ttl 3600\n")
        assert "failed" not in reload_daemon(root)
        assert getpw_helper("newbie", env=e).returncode == 116
        add_user(q, "newbie", root / "home")
        assert getpw_helper("newbie", env=e).returncode == 116  # the cached negative
        old = getpw_helper("iain-slowlaris", env=e).stdout
        newhome = add_user(q, "iain", root / "home2")
        assert getpw_helper("iain-slowlaris", env=e).stdout == old  # cached positive
        r = subprocess.run([sys.executable, "-m", "qmailsql", "flush"], capture_output=True,
                           env=e, text=True)
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr
        assert getpw_helper("newbie", env=e).stdout.startswith(b"newbie\0")
        assert str(newhome).encode() in getpw_helper("iain-slowlaris", env=e).stdout

        # short negative TTL, long positive: a new user shows up by itself, soon
        set_sqlserver_extra(root, "cache_ttl 3600\nnegative_ttl 1\n")
        assert "failed" not in reload_daemon(root)
        assert str(newhome).encode() in getpw_helper("iain-slowlaris", env=e).stdout
        assert getpw_helper("later", env=e).returncode == 116
        add_user(q, "later", root / "home")
        wait_for(lambda: getpw_helper("later", env=e).stdout.startswith(b"later\0"), 30,
                 "the negative answer to expire")
        # ... while a positive answer stays until its own TTL
        q.directory.query("UPDATE mailbox SET home=%s WHERE username='iain'",
                          (str(root / "home" / "iain"),), write=True)
        assert str(newhome).encode() in getpw_helper("iain-slowlaris", env=e).stdout

        # a bad control/sqlserver on reload: the old one stays in force
        sb.Paths(root).sqlserver.write_text("servre typo\n")
        assert "keeping the old configuration" in reload_daemon(root)
        assert getpw_helper("later", env=e).returncode == 0
        assert getpw_helper("iain-slowlaris", env=e).returncode == 0


def test_flush_command_without_daemon(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qmailsql", "flush"], capture_output=True,
                       text=True, env=dict(os.environ, QMAILSQL_SOCKET=str(tmp_path / "no")))
    assert r.returncode == 111
    assert "qmailsql daemon" in r.stderr and str(tmp_path / "no") in r.stderr


# ---------------------------------------------------------------- framing

def ping_ok(path):
    return request(path, [b"ping"]) == (0, b"pong")


def raw_exchange(path, data, timeout=10):
    """Send DATA as is; everything the daemon sends until it closes (or times out)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return out, False
            if not chunk:
                return out, True
            out += chunk


@pytest.mark.parametrize("data", [
    b"abc:getpw\0x\0,",            # length not a number
    b"5:ping\0X",                  # no comma after the payload
    b"4:ping,",                    # last field without its NUL
    b":ping\0,",                   # no length at all
    b"1234567:",                   # absurd length
    b"70000:",                     # over 65536
    b"-5:ping\0,",
])
def test_malformed_frame_gets_111_and_close(sandbox, data):
    path = sb.Paths(sandbox).daemon_socket
    pid = daemon_pid(sandbox)
    out, closed = raw_exchange(path, data)
    assert closed
    assert out == b"21:111\0malformed request,"
    assert ping_ok(path) and daemon_pid(sandbox) == pid


def test_oversize_request_refused_largest_accepted(faq, sandbox):
    path = sb.Paths(sandbox).daemon_socket
    out, closed = raw_exchange(path, b"70000:" + b"x" * 70001)
    assert closed and b"malformed request" in out
    # the largest legal frame is read, and refused for what it holds: a local part
    # longer than stock qmail ever passes (qmail-smtpd: 900 bytes) is a clear 111
    local = b"y" * (65536 - len(b"getpw\0\0"))
    status, body = request(path, [b"getpw", local])
    assert status == 111 and body == (b"local part of %d bytes is longer than qmailsql's "
                                      b"limit of %d (qmail-smtpd takes addresses of at most "
                                      b"900 bytes)" % (len(local), daemon.MAX_FIELD))
    # the longest local part accepted is answered
    status, body = request(path, [b"getpw", b"z" * daemon.MAX_FIELD])
    assert status == 0 and body.startswith(b"alias\0")
    status, body = request(path, [b"getpw", b"z" * (daemon.MAX_FIELD + 1)])
    assert status == 111 and b"limit" in body
    assert ping_ok(path)


def test_unknown_command_and_wrong_arity(sandbox):
    path = sb.Paths(sandbox).daemon_socket
    status, body = request(path, [b"frobnicate", b"x"])
    assert status == 100 and b"frobnicate" in body
    for fields_ in ([b"getpw"], [b"getpw", b"a", b"b"], [b"local", b"x"], [b"auth", b"x"],
                    [b"ping", b"extra"]):
        status, body = request(path, fields_)
        assert status == 111, fields_
    assert ping_ok(path)


def pipelined(path, reqs, rounds=1, timeout=10):
    """REQS sent in one write, ROUNDS times on one connection: each round's answers."""
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        buf = [b""]
        for _ in range(rounds):
            s.sendall(b"".join(encode_frame(r) for r in reqs))
            out.append([read_response(s, buf) for _ in reqs])
    return out


def test_pipelined_requests_answered_in_order(faq, sandbox):
    path = sb.Paths(sandbox).daemon_socket
    assert request(path, [b"getpw", b"iain-sanity"])[0] == 0  # cached; the rest are not
    reqs = [[b"ping"], [b"getpw", b"iain-slowlaris"], [b"getpw", b"iain-sanity"],
            [b"getpw", b"nobody"], [b"ping"], [b"getpw", b"IAIN"], [b"frob"],
            [b"getpw", b"iain-sanity"], [b"ping"]]
    want = [request(path, r) for r in reqs]
    flush(sandbox)
    # and twice on the same connection: the second time from the cache
    got, again = pipelined(path, reqs, rounds=2)
    assert got == want and again == want
    assert [g[0] for g in got] == [0, 0, 0, 0, 0, 0, 100, 0, 0]
    assert got[1][1].endswith(b"-\0slowlaris\0") and got[3][1].startswith(b"alias\0")


def test_long_pipelines_answered_in_order_across_turns(faq, sandbox):
    """Thousands of requests in one write, far more than one turn of the loop
    (daemon.TURN_FRAMES), some answered by a worker: all answered, in order."""
    path = sb.Paths(sandbox).daemon_socket
    kinds = [[b"ping"], [b"getpw", b"iain-slowlaris"], [b"getpw", b"nobody-%d"],
             [b"frob"], [b"getpw", b"iain"]]
    reqs = []
    for i in range(3000):
        r = kinds[i % len(kinds)]
        reqs.append([r[0], r[1] % i] if b"%d" in r[-1] else r)
    assert len(reqs) > 100 * daemon.TURN_FRAMES
    want = {tuple(r): request(path, r) for r in reqs[:len(kinds)]}
    got, = pipelined(path, reqs, timeout=60)
    for r, g in zip(reqs, got):
        if r[-1].startswith(b"nobody-"):
            assert g == (0, fields(b"alias", b"%d" % (demo.FAQ_UID + 1), b"%d" % demo.FAQ_GID,
                                   g[1].split(b"\0")[3], b"-", r[1])), (r, g)
        else:
            assert g == want[tuple(r)], (r, g)


def test_a_client_that_does_not_read_is_not_read(faq, sandbox):
    """Requests whose answers are not read: once daemon.OUT_LIMIT of answers wait, the
    daemon stops reading that connection (its requests wait in the kernel, not in the
    daemon's memory); others are served; reading the answers resumes it."""
    path = sb.Paths(sandbox).daemon_socket
    ping = encode_frame([b"ping"])
    burst = ping * 8192
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.setblocking(False)
        sent = 0
        while sent < 256 << 20:  # far more than kernel buffers and the cap together
            try:
                sent += s.send(burst[sent % len(burst):])
                continue
            except BlockingIOError:
                pass
            _, writable, _ = select.select([], [s], [], 2.0)
            if not writable:
                break  # nobody has read for two seconds: the daemon stopped reading
        print("accepted %d bytes of pings before the daemon stopped reading" % sent)
        assert sent < 64 << 20, "the daemon read %d bytes whose answers nobody read" % sent
        assert getpw_helper("iain-slowlaris").returncode == 0
        # reading the answers: every ping accepted is answered, in order
        s.setblocking(True)
        s.settimeout(60)
        want = sent // len(ping)
        data = bytearray()
        while len(data) < want * len(daemon.PONG):
            chunk = s.recv(1 << 20)
            assert chunk
            data += chunk
        assert bytes(data[:want * len(daemon.PONG)]) == daemon.PONG * want


def test_byte_by_byte_and_half_sent_frames(faq, sandbox):
    path = sb.Paths(sandbox).daemon_socket
    pid = daemon_pid(sandbox)
    frame = encode_frame([b"getpw", b"iain-slowlaris"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        for i in range(len(frame)):
            s.send(frame[i:i + 1])
            time.sleep(0.002)
        status, body = read_response(s)
    assert status == 0 and body.endswith(b"slowlaris\0")
    for cut in (1, 3, 5, len(frame) - 1):  # half a frame, then hang up
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(frame[:cut])
    # many connections that never send anything, closed at once
    for _ in range(50):
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(str(path))
    assert ping_ok(path) and daemon_pid(sandbox) == pid
    assert getpw_helper("iain-slowlaris").returncode == 0


def test_large_request_byte_by_byte(faq, sandbox):
    """A 60 kB request sent one byte per send() is still read whole (the partial frame
    is kept in a bytearray, not re-copied on every read)."""
    path = sb.Paths(sandbox).daemon_socket
    frame = encode_frame([b"getpw", b"z" * 60000])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        for i in range(len(frame)):
            s.sendall(frame[i:i + 1])
        status, body = read_response(s)
    # all of it arrived as one request: refused for its length, which the answer names
    assert status == 111 and body.startswith(b"local part of 60000 bytes is longer than")
    assert ping_ok(path)


def restart_daemon_with(paths, **env):
    """Restart the sandbox's daemon with ENV added to its environment."""
    sb.stop_daemon(paths)
    sb.start_daemon(paths, env)


def test_frame_deadline_closes_slow_loris(own_sandbox):
    """A request must be complete within QMAILSQL_FRAME_TIMEOUT of its first byte:
    one byte then silence, or a byte now and then, gets the connection closed (and
    logged); a connection idle between requests is not affected."""
    root, env = own_sandbox
    paths = sb.Paths(root)
    restart_daemon_with(paths, QMAILSQL_FRAME_TIMEOUT="1")
    path = paths.daemon_socket
    pid = daemon_pid(root)
    # the first byte of a request, then nothing: closed without an answer
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall(b"6")
        assert s.recv(100) == b""
    wait_for(lambda: "its request was still incomplete (1 bytes)" in log_text(root), 30,
             "the frame deadline to be logged")
    # a byte every 0.2s (each read would refresh an idle timer): closed all the same
    drip = encode_frame([b"getpw", b"x" * 1000])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        closed = False
        for i in range(300):
            try:
                s.send(drip[i:i + 1])
            except OSError:
                closed = True
                break
            ready, _, _ = select.select([s], [], [], 0.2)
            if ready:
                assert s.recv(100) == b""
                closed = True
                break
        assert closed
    # idle between requests for longer than the frame deadline: still served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(encode_frame([b"ping"]))
        assert read_response(s) == (0, b"pong")
        time.sleep(2.5)
        s.sendall(encode_frame([b"ping"]))
        assert read_response(s) == (0, b"pong")
    assert ping_ok(path) and daemon_pid(root) == pid


def waits_on_mailbox_lock(lock):
    """Whether a query of the daemon's DB user waits on LOCK's table lock (FULL: a
    batched lookup names the table past the first 100 characters)."""
    cur = lock.cursor()
    cur.execute("SHOW FULL PROCESSLIST")
    return any(r[7] and "mailbox" in str(r[7]) and r[1] == "qmailsql" for r in cur.fetchall())


def test_task_deadline_answers_too_busy(own_sandbox):
    """A request that waited in the worker queue longer than QMAILSQL_TASK_DEADLINE
    (its client has given up) is answered 111 without asking the DB."""
    root, env = own_sandbox
    paths = sb.Paths(root)
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home")
    restart_daemon_with(paths, QMAILSQL_TASK_DEADLINE="1", QMAILSQL_DB_WORKERS="1")
    lock = sb.root_connect(paths, db="qmail")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.cursor().execute("LOCK TABLES mailbox WRITE")
        for s in (first, second):
            s.settimeout(60)
            s.connect(str(paths.daemon_socket))
        first.sendall(encode_frame([b"getpw", b"iain-slowlaris"]))

        wait_for(lambda: waits_on_mailbox_lock(lock), 30, "the only worker to wait for the lock")
        second.sendall(encode_frame([b"getpw", b"iain-sanity"]))  # queued behind it
        time.sleep(2.5)  # longer than the deadline
    finally:
        lock.cursor().execute("UNLOCK TABLES")
        lock.close()
    try:
        status, body = read_response(first)
        assert status == 0 and body.endswith(b"-\0slowlaris\0")
        assert read_response(second) == (111, b"qmailsqld was too busy")
    finally:
        first.close()
        second.close()
    assert "getpw 'iain-sanity': waited" in log_text(root)
    # not cached: asked again, it is answered
    assert request(paths.daemon_socket, [b"getpw", b"iain-sanity"])[0] == 0


# ---------------------------------------------------------------- start and stop

def test_second_daemon_refuses_to_start(sandbox):
    r = subprocess.run([sys.executable, "-m", "qmailsql", "daemon"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 111
    assert "another qmailsqld" in r.stderr
    assert ping_ok(sb.Paths(sandbox).daemon_socket)


def test_stale_socket_replaced_and_bad_config_is_111(sandbox, tmp_path):
    sock = tmp_path / "d.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()  # a socket file nobody answers on: what a killed daemon leaves
    pidfile = tmp_path / "d.pid"
    proc = subprocess.Popen([sys.executable, "-m", "qmailsql", "daemon", "--pidfile",
                             str(pidfile)], env=dict(os.environ, QMAILSQL_SOCKET=str(sock)),
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: pidfile.exists() or proc.poll() is not None, 30, "the daemon")
        assert proc.poll() is None
        assert ping_ok(sock)
        assert (sock.stat().st_mode & 0o777) == 0o666
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    assert not sock.exists() and not pidfile.exists()
    assert err.splitlines()[-1] == "qmailsqld: stop"

    empty = tmp_path / "qmail"
    (empty / "control").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "qmailsql", "daemon"], capture_output=True,
                       text=True, env=dict(os.environ, QMAILSQL_QMAIL_DIR=str(empty),
                                           QMAILSQL_SOCKET=str(tmp_path / "e.sock")))
    assert r.returncode == 111
    assert len(r.stderr.splitlines()) == 1 and "sqlserver" in r.stderr
    assert not (tmp_path / "e.sock").exists()


def test_sigterm_finishes_request_in_flight(own_sandbox):
    root, env = own_sandbox
    paths = sb.Paths(root)
    with qmailsql.connect(str(root)) as q:
        load_faq(q, root / "home")
    pid = daemon_pid(root)
    lock = sb.root_connect(paths, db="qmail")
    try:
        lock.cursor().execute("LOCK TABLES mailbox WRITE")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(60)
        client.connect(str(paths.daemon_socket))
        client.sendall(encode_frame([b"getpw", b"iain-slowlaris"]))

        wait_for(lambda: waits_on_mailbox_lock(lock), 30,
                 "the daemon's query to wait for the lock")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not paths.daemon_socket.exists(), 30, "the socket to go away")
        with pytest.raises(OSError):
            request(paths.daemon_socket, [b"ping"])
        assert sb._pid_alive(paths.daemon_pid)  # still finishing the request
    finally:
        lock.cursor().execute("UNLOCK TABLES")
        lock.close()
    status, body = read_response(client)
    client.close()
    assert status == 0 and body.endswith(b"-\0slowlaris\0")
    wait_for(lambda: sb._zombie_or_gone(pid), 30, "the daemon to exit")
    assert not paths.daemon_pid.exists() and not paths.daemon_socket.exists()
    try:
        _, st = os.waitpid(pid, 0)
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    except ChildProcessError:
        pass  # already reaped by subprocess
    assert log_text(root).rstrip().endswith("qmailsqld: stop")


# ---------------------------------------------------------------- qmailsql install

def test_install_and_undo(tmp_path):
    qdir = tmp_path / "qmail"
    (qdir / "bin").mkdir(parents=True)
    (qdir / "bin" / "qmail-getpw").write_bytes(b"stock getpw")
    (qdir / "bin" / "qmail-local").write_bytes(b"stock local")
    (qdir / "bin" / "qmail-send").write_bytes(b"untouched")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "qmailsql", "install", "--qmail-dir",
                               str(qdir)] + list(args), capture_output=True, text=True)
    r = run()
    assert r.returncode == 0, r.stderr
    bin_ = qdir / "bin"
    for name, built in (("qmail-getpw", "qmail-getpw"), ("qmail-local", "qmail-local"),
                        ("qmailsql-checkpassword", "checkpassword"),
                        ("qmailsql-dovecot-auth.lua", "dovecot-auth.lua")):
        assert (bin_ / name).read_bytes() == helper_path(built).read_bytes()
        assert (bin_ / name).stat().st_mode & 0o777 == 0o755
    assert (bin_ / "qmail-getpw.orig").read_bytes() == b"stock getpw"
    assert (bin_ / "qmail-local.orig").read_bytes() == b"stock local"
    assert not (bin_ / "checkpassword.orig").exists()
    assert (qdir / "qmailsql").is_dir()
    assert "qmail-getpw.orig" in r.stdout
    # Dovecot is pointed at the installed script, readable by its unprivileged user
    r = subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", str(qdir),
                        "dovecot-config"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "file=%s " % (bin_ / "qmailsql-dovecot-auth.lua") in r.stdout

    # again: our helpers are refreshed, the .orig files are never overwritten
    r = run()
    assert r.returncode == 0 and "refreshed" in r.stdout
    assert (bin_ / "qmail-getpw.orig").read_bytes() == b"stock getpw"

    # a qmail upgrade put a new stock program over ours: refuse, .orig is precious
    (bin_ / "qmail-local").write_bytes(b"new stock local")
    r = run()
    assert r.returncode == 111 and "qmail-local.orig" in r.stderr
    assert (bin_ / "qmail-local.orig").read_bytes() == b"stock local"
    (bin_ / "qmail-local").write_bytes(helper_path("qmail-local").read_bytes())

    r = run("--undo")
    assert r.returncode == 0, r.stderr
    assert (bin_ / "qmail-getpw").read_bytes() == b"stock getpw"
    assert (bin_ / "qmail-local").read_bytes() == b"stock local"
    assert not (bin_ / "qmailsql-checkpassword").exists()
    assert not (bin_ / "qmailsql-dovecot-auth.lua").exists()
    assert not (bin_ / "qmail-getpw.orig").exists()
    assert (bin_ / "qmail-send").read_bytes() == b"untouched"

    r = subprocess.run([sys.executable, "-m", "qmailsql", "install", "--qmail-dir",
                        str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 111 and "bin" in r.stderr


# ---------------------------------------------------------------- loop parts

class FakeConn:
    def __init__(self, uid, privileged, service=False):
        self.uid, self.privileged, self.service = uid, privileged, service


class FakeTask:
    def __init__(self, name, uid, privileged=False, service=False):
        self.name, self.conn = name, FakeConn(uid, privileged, service)


def test_task_queue_gives_dovecot_turns_of_its_own():
    """Dovecot's auth user asks for many users: its requests take every other
    unprivileged turn, not one turn among as many as there are mailbox uids (a busy
    delivery hour must not hold IMAP logins back), and still leave a worker free."""
    q = daemon.TaskQueue(workers=3)
    for uid in range(1, 6):
        q.put(FakeTask("u%d" % uid, uid))
    for i in range(1, 4):
        q.put(FakeTask("d%d" % i, 113, service=True))
    order = []
    for _ in range(8):
        t = q.get()
        order.append(t.name)
        q.done(t)
    assert order == ["u1", "d1", "u2", "d2", "u3", "d3", "u4", "u5"]
    q.put(FakeTask("u6", 6))
    q.put(FakeTask("d4", 113, service=True))
    assert {q.get().name, q.get().name} == {"u6", "d4"}
    import threading
    taken = []
    worker = threading.Thread(target=lambda: taken.append(q.get()))
    q.put(FakeTask("d5", 113, service=True))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and not taken  # two unprivileged at work: one stays free
    q.put(FakeTask("root", 0, True))
    worker.join(10)
    assert [t.name for t in taken] == ["root"]


def test_task_queue_privileged_first_uids_in_turn():
    """Workers take privileged peers' requests first, then one uid's after another's,
    and never have all of themselves on unprivileged requests."""
    q = daemon.TaskQueue(workers=3)
    for t in [FakeTask("a1", 1), FakeTask("a2", 1), FakeTask("a3", 1), FakeTask("b1", 2),
              FakeTask("root1", 0, True), FakeTask("c1", 3), FakeTask("root2", 0, True)]:
        q.put(t)
    got = [q.get(), q.get(), q.get(), q.get()]
    assert [t.name for t in got] == ["root1", "root2", "a1", "b1"]
    # two workers are on unprivileged requests: the third waits for a privileged one
    import threading
    taken = []
    worker = threading.Thread(target=lambda: taken.append(q.get()))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and not taken  # c1 and a2 wait: one worker stays free
    q.put(FakeTask("root3", 0, True))
    worker.join(10)
    assert [t.name for t in taken] == ["root3"]
    q.done(got[2])  # a1 done: an unprivileged request may go again, the next uid's
    assert q.get().name == "c1"
    q.done(got[3])
    assert q.get().name == "a2"


def test_refusal_log_is_bounded_per_uid_and_kind(monkeypatch):
    lines = []
    monkeypatch.setattr(daemon, "log", lines.append)
    refusals = daemon.RefusalLog(every=10.0, burst=3)
    for i in range(1000):
        refusals(5, "command", "refused %d" % i)
    refusals(5, "malformed", "a different kind")
    refusals(6, "command", "another uid")
    assert lines == ["refused 0", "refused 1", "refused 2", "a different kind", "another uid"]
    refusals.sweep(time.monotonic() + 11)
    assert lines[-1].startswith("997 more refusal(s) of uid 5 (command) not logged")
    assert not refusals.seen
