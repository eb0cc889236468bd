"""Fuzzing every parser that sees outside bytes (hypothesis).

control/sqlserver (config.load), the daemon's request framing (decode_frame /
split_fields, both implementations, and the running daemon itself), local parts
through Session.getpw against the sandbox's MariaDB, and the compiled helpers' inputs
(checkpassword's fd 3, qmail-getpw's argument). Each has an exact oracle where one is
cheap, and otherwise a closed set of allowed outcomes; never an unexpected exception,
a crash signal or a hang (subprocesses run under a timeout).
"""
import dataclasses
import os
import socket
import subprocess
import tempfile

import pytest
from conftest import add_mailbox
from hypothesis import HealthCheck, example, given, settings, strategies as st

import qmailsql
from qmailsql.core import config as configmod, definitions, fallback, hotpath
from qmailsql.core.helpers import helper_path
from qmailsql.core.hotpath import ConfigError, candidates, encode_frame
from qmailsql.core.resolve import Delivery, Refusal

from qmailsql.core import _hot  # noqa: E402

IMPLS = [fallback, _hot]
NO_SOCKET = "/nonexistent/qmailsql-fuzz/qmailsqld.sock"
TIMEOUT = 90
UID, GID = 800, 100


# control/sqlserver --------------------------------------------------------------------

KEYS = sorted(definitions.KEY_ALIASES) + ["bogus", "Server", "LOGIN"]
values = st.one_of(
    st.sampled_from(["/s", "/tmp/x.sock", "db", "127.0.0.1", "127.0.0.1:3306", "[::1]:3307",
                     "[::1", "h:0", "h:99999", "h:x", "yes", "no", "maybe", "0", "1", "32",
                     "-1", "x" * 300, '"quoted # not a comment"', "'single'", '"open',
                     "a # comment", "=", "\\", "'a'b", '"a\\"b"', "9" * 5000, "١٢٣"]),
    st.text(max_size=20))
line = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.sampled_from([" ", "\t", "=", " = ", "", "  =\t"]),
              values).map(lambda t: "".join(t).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.sampled_from([b"", b"# comment", b"   ", b"\r", b"\xff\xfe", b"server\0/x"]))
sqlserver_files = st.one_of(st.binary(max_size=400),
                            st.lists(line, max_size=12).map(b"\n".join))


@pytest.fixture(scope="module")
def qmail_tmp():
    with tempfile.TemporaryDirectory(prefix="qsf-") as d:
        os.mkdir(os.path.join(d, "control"))
        yield d


@settings(max_examples=600, deadline=None)
@given(sqlserver_files)
@example(b"server /s\nlogin q\n")
@example(b"server /s\nlogin q\npassword p\npassword_file /etc/hostname\n")
def test_config_load_gives_config_or_config_error(qmail_tmp, data):
    if b"password_file" in data:  # reading it is tested below with real files
        data = data.replace(b"password_file", b"password_fil")
    path = os.path.join(qmail_tmp, "control", "sqlserver")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    try:
        cfg = configmod.load(qmail_tmp)
    except ConfigError as e:
        assert str(e).startswith(path)
        return
    assert isinstance(cfg, configmod.Config)
    assert cfg.servers and cfg.login
    assert cfg.write_server is not None
    # sockets first, then host:port servers in the order given
    kinds = [bool(s.socket) for s in cfg.servers]
    assert kinds == sorted(kinds, reverse=True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_password_file_contents_give_config_or_config_error(qmail_tmp, secret):
    pw = os.path.join(qmail_tmp, "pw")
    with open(pw, "wb") as f:
        f.write(secret)
    os.chmod(pw, 0o600)
    path = os.path.join(qmail_tmp, "control", "sqlserver")
    with open(path, "wb") as f:
        f.write(b"server /s\nlogin q\npassword_file %s\n" % pw.encode())
    os.chmod(path, 0o600)
    try:
        cfg = configmod.load(qmail_tmp)
    except ConfigError:
        return
    assert cfg.password == secret.split(b"\n")[0].decode("utf-8")


@pytest.mark.parametrize("value", [b"/nonexistent/pw", b"/tmp\0x"])
def test_unreadable_password_file_is_config_error(qmail_tmp, value):
    path = os.path.join(qmail_tmp, "control", "sqlserver")
    with open(path, "wb") as f:
        f.write(b"server /s\nlogin q\npassword_file " + value + b"\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        configmod.load(qmail_tmp)


# request framing ----------------------------------------------------------------------

frame_bytes = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from([b"0", b"1", b"5", b"12", b"65537", b"999999", b":", b",",
                              b"\0", b"getpw", b"-", b" ", b"abc"]), max_size=12).map(b"".join))


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__.split(".")[-1])
@settings(max_examples=1500, deadline=None)
@given(buf=frame_bytes, limit=st.sampled_from([0, 5, 100, 65536]), skip=st.binary(max_size=5))
def test_decode_frame_result_or_value_error(impl, buf, limit, skip):
    """At offset len(SKIP) of a bytearray (as the daemon reads) or of bytes."""
    start = len(skip)
    whole = bytearray(skip + buf) if start % 2 else skip + buf
    try:
        payload, end = impl.decode_frame(whole, limit, start)
    except ValueError:
        return
    if payload is None:
        assert end == 0
        return
    used = end - start
    head = buf[:used - len(payload) - 2]
    assert head.isdigit() and int(head) == len(payload) <= limit
    assert buf[len(head):len(head) + 1] == b":" and buf[used - 1:used] == b","
    assert buf[len(head) + 1:used - 1] == payload


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__.split(".")[-1])
@settings(max_examples=1000, deadline=None)
@given(payload=st.binary(max_size=60))
def test_split_fields_result_or_value_error(impl, payload):
    try:
        fields = impl.split_fields(payload)
    except ValueError:
        assert not payload.endswith(b"\0")
        return
    assert b"\0".join(fields) + b"\0" == payload


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__.split(".")[-1])
@settings(max_examples=500, deadline=None)
@given(requests=st.lists(st.lists(st.binary(max_size=30).filter(lambda b: b"\0" not in b),
                                  min_size=1, max_size=5), min_size=1, max_size=4),
       tail=st.binary(max_size=10))
def test_frames_in_a_stream_come_apart_as_sent(impl, requests, tail):
    stream = bytearray(b"".join(impl.encode_frame(r) for r in requests) + tail)
    got = []
    at = 0
    while True:
        try:
            payload, at = impl.decode_frame(stream, 65536, at)
        except ValueError:
            break
        if payload is None:
            break
        got.append(impl.split_fields(payload))
    assert got[:len(requests)] == requests


def call_daemon(path, data, timeout=5):
    """Send DATA, half-close, read what comes back (b'' on a timeout)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    out = b""
    try:
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while len(out) < 70000:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    finally:
        s.close()
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(frame_bytes,
                      st.lists(st.binary(max_size=20), max_size=6).map(
                          lambda f: encode_frame(f) if f else b"0:,"),
                      st.binary(min_size=1, max_size=3000)))
@example(encode_frame([b"ping"]) * 3)
@example(encode_frame([b"getpw", b"x"]) + b"junk")
def test_daemon_survives_any_request_bytes(sandbox, data):
    path = os.environ["QMAILSQL_SOCKET"]
    answer = call_daemon(path, data)
    rest = answer  # whatever it says is whole frames, each with a numeric status
    while rest:
        payload, used = hotpath.decode_frame(rest)
        assert payload is not None, answer[:100]
        status = payload.split(b"\0", 1)[0]
        assert status.isdigit() and int(status) <= 255, answer[:100]
        rest = rest[used:]
    pong = call_daemon(path, encode_frame([b"ping"]))
    assert hotpath.decode_frame(pong)[0] == b"0\0pong"


# local parts through Session.getpw ------------------------------------------------------

USERS = ("iain", "iain-sanity", "o'brien", "100%", "x_y", "ünï", "alias")
local_parts = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.sampled_from([u.encode() for u in USERS] + [b"IAIN", b"Iain-Sanity"]),
              st.sampled_from([b"", b"-", b"--", b"+", b"-sanity", b"-Sanity-x"]),
              st.binary(max_size=20)).map(b"".join),
    st.binary(min_size=9000, max_size=11000),
    st.sampled_from([b"", b"-", b"alias", b"%", b"_", b"'", b"\\", b"' OR 1=1 -- ",
                     b"iain\0x", b"\xff\xfe", b"iain\xff", "ünï".upper().encode()]))


def expected(local):
    """qmail-getpw's answer over USERS (no /etc/passwd): (user, dash, ext) or an exit code."""
    if b"\0" in local:
        return 100
    for cand, dash, ext in candidates(local, b"-", 32):
        try:
            name = cand.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name in USERS:  # the alias user is a user too (local part "alias")
            return (name.encode(), dash, ext)
    return (b"alias", b"-", local)


@pytest.fixture
def fuzz_session(db, homes):
    for name in USERS:
        add_mailbox(db, name, homes / ("h%d" % USERS.index(name)), uid=UID, gid=GID,
                    make_home=True)
    cfg = dataclasses.replace(db.config, system_users=False)
    with qmailsql.Session(config=cfg) as q:
        yield q


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(local=local_parts)
def test_getpw_any_local_part(fuzz_session, local):
    want = expected(local)
    try:
        got = fuzz_session.getpw(local)
    except Refusal as r:
        assert r.code == want, (local[:80], r.code, r.message)
        assert "\n" not in r.message and len(r.message) < 1000
        return
    assert isinstance(got, Delivery)
    assert (got.user, got.dash, got.ext) == want, local[:80]
    assert got.uid == UID


# compiled helpers -------------------------------------------------------------------------

CHECKPASSWORD = str(helper_path("checkpassword"))
GETPW = str(helper_path("qmail-getpw"))


def helper_env():
    env = dict(os.environ, QMAILSQL_SOCKET=NO_SOCKET)
    env.pop("TCPREMOTEIP", None)
    return env


fd3_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from([b"iain", b"\0", b"secret", b"x" * 100, b"@", b"\xff"]),
             max_size=12).map(b"".join),
    st.binary(min_size=500, max_size=520))


@settings(max_examples=250, deadline=None)
@given(data=fd3_bytes)
@example(b"")
@example(b"iain\0secret\0")
@example(b"iain\0secret")
@example(b"\0\0")
@example(b"a\0b\0" + b"x" * 508)
@example(b"a\0b\0" + b"x" * 509)
def test_checkpassword_any_fd3_bytes(data):
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        # the shell puts the file on fd 3 and execs checkpassword in its place
        r = subprocess.run(["/bin/sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh", CHECKPASSWORD,
                            "/bin/true"], stdin=f, capture_output=True, env=helper_env(),
                           timeout=TIMEOUT)
    assert r.returncode >= 0, "killed by signal %d" % -r.returncode
    want = 111 if len(data) <= 512 and data.count(b"\0") >= 2 else 2
    assert r.returncode == want, (data[:60], r.stderr)
    assert r.stdout == b""
    assert r.stderr.startswith(b"checkpassword: ") and r.stderr.count(b"\n") == 1


@settings(max_examples=150, deadline=None)
@given(arg=st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"")))
@example(b"")
@example(b"a" * 65525)  # about the largest request the protocol takes
@example(b"\xff" * 70000)  # more than it takes: refused by the client itself
def test_qmail_getpw_any_argument_without_daemon(arg):
    r = subprocess.run([GETPW, arg], capture_output=True, env=helper_env(), timeout=TIMEOUT)
    assert r.returncode == 111, (arg[:60], r.stderr)
    assert r.stdout == b""
    assert r.stderr.startswith(b"qmail-getpw: ") and r.stderr.count(b"\n") == 1
