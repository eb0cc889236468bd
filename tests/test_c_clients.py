"""The compiled helpers (csrc/) as executables against a scripted protocol peer.

The peer is a tiny unix-socket server speaking csrc/PROTOCOL.md: it reads one
request frame per connection, records the payload and answers a canned frame.
It is the other end of the protocol, not a database mock; the end-to-end tests
against a real qmailsqld and MariaDB live elsewhere.
"""
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("qmail-getpw", "qmail-local", "checkpassword")
SOFTLIMIT = shutil.which("softlimit") or "/usr/bin/softlimit"

try:
    from qmailsql.core import helpers
except Exception:  # the package may not be importable yet (Cython part unbuilt)
    _spec = importlib.util.spec_from_file_location("_qmailsql_helpers", ROOT / "qmailsql" / "core" / "helpers.py")
    helpers = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(helpers)


def qmail_dir():
    return (ROOT / "conf-qmail").read_text().split("\n")[0].strip()


def build(name, out, defines=()):
    """Compile csrc/NAME.c as setup.py does (DEFINES: extra -D flags, e.g. a short timeout)."""
    srcs = [ROOT / "csrc" / (name + ".c"), ROOT / "csrc" / "qsclient.c"]
    cmd = ["cc", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
           '-DQMAIL_DIR="%s"' % qmail_dir(), "-I", str(ROOT / "csrc")] + list(defines) + [
        "-o", str(out)] + [str(s) for s in srcs] + ["-static"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "warnings from %s:\n%s" % (" ".join(cmd), r.stderr)


@pytest.fixture(scope="module", autouse=True)
def progs():
    """Build the helpers into qmailsql/libexec when missing or older than csrc/."""
    newest = max(p.stat().st_mtime for p in (ROOT / "csrc").glob("*.[ch]"))
    helpers.LIBEXEC.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in PROGRAMS:
        out = helpers.LIBEXEC / name
        if not out.exists() or out.stat().st_mtime < newest:
            build(name, out)
        paths[name] = str(helpers.helper_path(name))
    return paths


RECORDER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
  char cwd[4096];
  const char *user = getenv("USER");
  int i;
  for (i = 1; i < argc; i++) fwrite(argv[i], 1, strlen(argv[i]) + 1, stdout);
  if (!getcwd(cwd, sizeof cwd)) return 1;
  printf("uid=%u%ccwd=%s%cuser=%s%c", (unsigned)getuid(), 0, cwd, 0, user ? user : "", 0);
  return 42;
}
"""


@pytest.fixture(scope="module")
def recorder():
    """A static program that prints its args, uid, cwd and $USER, NUL-separated; exit 42."""
    d = Path(tempfile.mkdtemp(prefix="qsrec", dir="/tmp"))  # reachable by other uids
    os.chmod(d, 0o755)
    (d / "recorder.c").write_text(RECORDER_C)
    out = d / "recorder"
    r = subprocess.run(["cc", "-O2", "-static", "-o", str(out), str(d / "recorder.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    yield str(out)
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the peer

CLOSE = object()  # read the request, then hang up without answering


class Raw(bytes):
    """Sent as is, not wrapped in a netstring."""


def read_netstring(conn):
    n = b""
    while True:
        c = conn.recv(1)
        if not c:
            return None
        if c == b":":
            break
        n += c
    want = int(n) + 1
    data = b""
    while len(data) < want:
        chunk = conn.recv(want - len(data))
        if not chunk:
            return None
        data += chunk
    assert data[-1:] == b",", data
    return data[:-1]


class Peer:
    def __init__(self, path, replies):
        self.path = str(path)
        self.replies = list(replies)
        self.received = []
        self.stop = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.replies and not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self.replies.pop(0)
            with conn:
                conn.settimeout(10)
                payload = read_netstring(conn)
                self.received.append(payload)
                if reply is CLOSE:
                    continue
                if isinstance(reply, Raw):
                    conn.sendall(bytes(reply))
                else:
                    conn.sendall(b"%d:%s," % (len(reply), reply))

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="qs", dir="/tmp")  # short: sun_path is 108 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def peer(sockdir):
    peers = []

    def make(*replies):
        p = Peer(sockdir / "d.sock", replies)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def env_for(sockpath, **extra):
    env = {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": str(sockpath)}
    env.update(extra)
    return env


def run(progs, name, args, env, fd3=None, softlimit=False, **kw):
    argv = [progs[name]] + list(args)
    if softlimit:
        argv = [SOFTLIMIT, "-m", "2000000"] + argv
    preexec = None
    if fd3 is not None:
        def preexec():
            os.dup2(fd3, 3)  # close_fds would close it again: it runs after preexec_fn
        kw["close_fds"] = False  # python's own descriptors are close-on-exec anyway
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(argv, env=env, stderr=subprocess.PIPE, preexec_fn=preexec,
                          timeout=30, **kw)


def err(r):
    return r.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------- build

@pytest.mark.parametrize("name", PROGRAMS)
def test_helper_is_static(progs, name):
    data = Path(progs[name]).read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[4] == 2 and data[5] == 1  # 64-bit little-endian (the build host)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types, "has PT_INTERP: dynamically linked"


def test_protocol_doc_exists():
    text = (ROOT / "csrc" / "PROTOCOL.md").read_text()
    for word in ("getpw", "local", "auth", "ping", "flush", "65536", "QMAILSQL_SOCKET"):
        assert word in text


# ---------------------------------------------------------------- qmail-getpw

GETPW_OK = b"alice\x001000\x002000\x00/home/alice\x00-\x00Foo-bar\x00"


def test_getpw_success_exact(progs, peer, sockdir):
    p = peer(b"0\x00" + GETPW_OK)
    r = run(progs, "qmail-getpw", ["alice-Foo-bar"], env_for(p.path))
    assert r.returncode == 0, err(r)
    assert r.stdout == GETPW_OK
    assert r.stderr == b""
    assert p.received == [b"getpw\x00alice-Foo-bar\x00"]


def test_getpw_passes_odd_bytes_as_is(progs, peer):
    local = b"a'b\\c%d_e\xff\xfe-\x01"
    p = peer(b"0\x00" + GETPW_OK)
    r = run(progs, "qmail-getpw", [local], env_for(p.path))
    assert r.returncode == 0, err(r)
    assert p.received == [b"getpw\x00" + local + b"\x00"]


def test_getpw_empty_local_is_sent(progs, peer):
    p = peer(b"116\x00no alias user")
    r = run(progs, "qmail-getpw", [""], env_for(p.path))
    assert r.returncode == 116
    assert p.received == [b"getpw\x00\x00"]


@pytest.mark.parametrize("status,text", [(116, "no alias user (alias) in the mailbox table"),
                                         (111, "database unreachable: Connection refused"),
                                         (100, "address refused"),
                                         (115, "something odd")])
def test_getpw_status_passthrough(progs, peer, status, text):
    p = peer(b"%d\x00%s" % (status, text.encode()))
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == status
    assert r.stdout == b""
    assert err(r) == "qmail-getpw: %s\n" % text


def test_getpw_status_body_sanitised(progs, peer):
    p = peer(b"111\x00first line\x07x\nsecond line")
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 111
    assert err(r) == "qmail-getpw: first line?x\n"


def test_getpw_status_empty_body(progs, peer):
    p = peer(b"111\x00")
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 111
    assert err(r) == "qmail-getpw: qmailsqld answered status 111 without a reason\n"


def test_getpw_no_daemon(progs, sockdir):
    path = sockdir / "absent.sock"
    r = run(progs, "qmail-getpw", ["bob"], env_for(path))
    assert r.returncode == 111
    assert r.stdout == b""
    assert err(r) == ("qmail-getpw: cannot reach qmailsqld at %s: No such file or directory; "
                      "is the daemon running? (qmailsql doctor)\n" % path)


def test_getpw_stale_socket_refused(progs, sockdir):
    path = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the socket file stays, nobody listens
    r = run(progs, "qmail-getpw", ["bob"], env_for(path))
    assert r.returncode == 111
    assert "cannot reach qmailsqld at %s: Connection refused" % path in err(r)


@pytest.mark.parametrize("value", [None, ""])
def test_getpw_default_socket_path(progs, value):
    default = qmail_dir() + "/qmailsql/qmailsqld.sock"
    if os.path.exists(default):
        pytest.skip("a real daemon socket exists at %s" % default)
    env = {"PATH": "/usr/bin:/bin"}
    if value is not None:
        env["QMAILSQL_SOCKET"] = value
    r = run(progs, "qmail-getpw", ["bob"], env)
    assert r.returncode == 111
    assert err(r).startswith("qmail-getpw: cannot reach qmailsqld at %s: " % default)


def test_getpw_peer_closes_without_answer(progs, peer):
    p = peer(CLOSE)
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 111
    assert p.received == [b"getpw\x00bob\x00"]
    assert err(r) == ("qmail-getpw: the connection was closed without an answer by "
                      "qmailsqld at %s\n" % p.path)


@pytest.mark.parametrize("raw,why", [
    (b"abc", "bad netstring length"),
    (b":0\x00,", "bad netstring length"),
    (b"5:0\x00abc;", "not ended by a comma"),
    (b"3:0\x00ab,", "not ended by a comma"),
    (b"10:0\x00ab", "short response"),
    (b"65537:", "longer than 65536"),
    (b"99999999999:", "longer than 65536"),
    # leading zeros must not stretch the header past the buffer (a read overrun once)
    (b"0" * 20000 + b"5:0\x00abc,", "bad netstring length"),
    (b"0000003:0\x00a,", "bad netstring length"),
    (b"2:x\x00,", "bad status"),
    (b"1:0,", "bad status"),
    (b"4:256\x00,", "bad status"),
    (b"5:0000\x00,", "bad status"),
    (b"0:,", "bad status"),
    (b"2:0\x00,xx", "bytes after the frame"),
])
def test_getpw_malformed_frame(progs, peer, raw, why):
    p = peer(Raw(raw))
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 111, err(r)
    assert r.stdout == b""
    assert why in err(r)
    assert p.path in err(r)
    assert err(r).count("\n") == 1


@pytest.mark.parametrize("body", [b"", b"alice\x001\x002\x00/h\x00\x00",
                                  b"alice\x001\x002\x00/h\x00\x00\x00x",
                                  b"alice\x001\x002\x00/h\x00\x00\x00\x00"])
def test_getpw_malformed_body(progs, peer, body):
    p = peer(b"0\x00" + body)
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 111
    assert r.stdout == b""
    assert "malformed getpw answer" in err(r)


def test_getpw_accepts_largest_response(progs, peer):
    home = b"/" + b"h" * (65536 - 3 - len(b"alice\x001\x002\x00\x00\x00\x00"))
    body = b"alice\x001\x002\x00" + home + b"\x00\x00\x00"
    assert len(b"0\x00" + body) == 65536
    p = peer(b"0\x00" + body)
    r = run(progs, "qmail-getpw", ["bob"], env_for(p.path))
    assert r.returncode == 0, err(r)
    assert r.stdout == body


def test_getpw_refuses_too_long_request(progs, peer):
    p = peer(b"0\x00" + GETPW_OK)
    r = run(progs, "qmail-getpw", ["x" * 70000], env_for(p.path))
    assert r.returncode == 111
    assert "request longer than 65536" in err(r)
    assert p.received == []


def test_getpw_usage(progs, sockdir):
    r = run(progs, "qmail-getpw", [], env_for(sockdir / "absent.sock"))
    assert r.returncode == 100
    assert r.stdout == b""


def test_getpw_stdout_write_error(progs, peer):
    p = peer(b"0\x00" + GETPW_OK)
    with open("/dev/full", "wb") as full:
        r = run(progs, "qmail-getpw", ["alice"], env_for(p.path), stdout=full)
    assert r.returncode == 111
    assert "unable to write output" in err(r)


def test_getpw_under_softlimit(progs, peer):
    p = peer(b"0\x00" + GETPW_OK)
    r = run(progs, "qmail-getpw", ["alice-Foo-bar"], env_for(p.path), softlimit=True)
    assert r.returncode == 0, err(r)
    assert r.stdout == GETPW_OK


# ---------------------------------------------------------------- qmail-local

STANDIN = """#!/bin/sh
out=%(out)s
: > "$out"
for a in "$@"; do printf '%%s\\0' "$a" >> "$out"; done
printf 'PWD=%%s\\0MARK=%%s\\0' "$PWD" "${MARK-unset}" >> "$out"
exit 42
"""


@pytest.fixture
def standin(sockdir):
    out = sockdir / "standin.out"
    script = sockdir / "qmail-local.orig"
    script.write_text(STANDIN % {"out": out})
    script.chmod(0o755)
    home = sockdir / "home"
    home.mkdir()

    class S:
        path = str(script)
        homedir = str(home)

        @staticmethod
        def ran():
            return out.exists()

        @staticmethod
        def argv():
            parts = out.read_bytes().split(b"\x00")
            assert parts[-1] == b""
            return parts[:-3]

        @staticmethod
        def env():
            parts = out.read_bytes().split(b"\x00")
            return parts[-3:-1]
    return S


# the `localq` answer's first line for a mailbox without a quota (PROTOCOL.md)
LOCALQ_OK = b"0\x000 0 90 bounce\n"


def local_args(homedir, dash="-", ext="foo-bar"):
    local = "alice" + dash + ext
    return ["--", "alice", homedir, local, dash, ext, "example.com", "sender@example.org",
            "./Maildir/\n"]


def local_env(p, standin, **extra):
    return env_for(p.path, QMAILSQL_QMAIL_LOCAL=standin.path, MARK="kept", **extra)


def b(args):
    return [a.encode() for a in args]


LOCAL_REQUEST = b"\x00alice\x00%s\x00alice-foo-bar\x00-\x00foo-bar\x00example.com\x00"


def test_local_no_rows_execs_stock_unchanged(progs, peer, standin):
    """No rows and no dot-qmail file for the address: stock qmail-local would bounce it,
    so the wrapper asks again with local-confirm (the daemon then asks its write_server,
    not a lagging replica); still no rows: stock, argv unchanged."""
    p = peer(LOCALQ_OK, b"0\x00")
    args = local_args(standin.homedir)
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)
    assert standin.env() == [b"PWD=" + os.getcwd().encode(), b"MARK=kept"]
    request = LOCAL_REQUEST % standin.homedir.encode()
    assert p.received == [b"localq" + request, b"local-confirm" + request]


@pytest.mark.parametrize("name", [".qmail-foo-bar", ".qmail-foo-default", ".qmail-default"])
def test_local_no_rows_with_a_dot_qmail_file_asks_once(progs, peer, standin, name):
    """A file stock qmail-local reads for the address: no bounce, nothing to confirm."""
    Path(standin.homedir, name).write_text("./Maildir/\n")
    p = peer(LOCALQ_OK)
    args = local_args(standin.homedir)
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)
    assert p.received == [b"localq" + LOCAL_REQUEST % standin.homedir.encode()]


def test_local_no_rows_plain_address_asks_once(progs, peer, standin):
    """dash empty: stock delivers to aliasempty (or ~/.qmail), never bounces."""
    p = peer(LOCALQ_OK)
    args = local_args(standin.homedir, dash="", ext="")
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)
    assert len(p.received) == 1


def test_local_confirmed_rows_are_delivered(progs, peer, standin):
    p = peer(LOCALQ_OK, b"0\x00./Maildir/\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv()[4:6] == [b"", b""] and standin.argv()[8] == b"./Maildir/\n"


@pytest.mark.parametrize("reply", [b"100\x00unknown command local-confirm",
                                   b"111\x00no DB server answered"])
def test_local_confirm_trouble_defers(progs, peer, standin, reply):
    """Whatever the daemon says to local-confirm (an older daemon: unknown command, 100),
    the mail is never bounced for it: 111."""
    p = peer(LOCALQ_OK, reply)
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()
    assert err(r) == "qmail-local: %s\n" % reply.split(b"\x00")[1].decode()


def test_local_rows_go_to_aliasempty(progs, peer, standin):
    lines = b"./Maildir/\n&bob@example.net\n|/usr/bin/prog \"$EXT\" foo-bar\n"
    p = peer(LOCALQ_OK + lines)
    args = local_args(standin.homedir)
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == [b"--", b"alice", standin.homedir.encode(), b"alice-foo-bar",
                              b"", b"", b"example.com", b"sender@example.org", lines]
    assert standin.env()[1] == b"MARK=kept"


@pytest.mark.parametrize("owner,ext", [(".qmail-foo-bar-owner", b"-foo-bar"),
                                       (".qmail-owner", b"-foo-bar"), (None, b"")])
def test_local_rows_keep_the_address_owner_file(progs, peer, standin, owner, ext):
    """Owner files that differ between the address (.qmail-foo-bar-owner) and the plain
    .qmail-owner: stock gets ext = dash + ext (dash empty), so it reads the address's."""
    if owner:
        Path(standin.homedir, owner).write_text("&owner@example.net\n")
    p = peer(LOCALQ_OK + b"&bob@example.net\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv()[4:6] == [b"", ext]


@pytest.mark.parametrize("files", [(), (".qmail",), (".qmail-default",),
                                   (".qmail-foo-bar-owner",),
                                   (".qmail-foo-bar-owner", ".qmail-default"),
                                   (".qmail-owner", ".qmail-foo-default"),
                                   (".qmail-owner", ".qmail-owner-default", ".qmail"),
                                   (".qmail-foo-bar-owner", ".qmail-foo-bar-owner-default",
                                    ".qmail-owner", ".qmail-owner-default", ".qmail-foo-bar")])
def test_local_wrapper_and_doctor_agree(progs, peer, standin, files):
    """aliases.wrapper_ext/shadowing_file (the doctor's view) make the wrapper's choice."""
    from qmailsql.core import aliases
    for name in files:
        Path(standin.homedir, name).write_text("./Maildir/\n")
    p = peer(LOCALQ_OK + b"&bob@example.net\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    shadow = aliases.shadowing_file(standin.homedir, b"-", b"foo-bar")
    if shadow is not None:
        assert r.returncode == 111 and not standin.ran(), files
        assert err(r).startswith("qmail-local: %s exists" % os.fsdecode(shadow[0]))
    else:
        assert r.returncode == 42, (files, err(r))
        assert standin.argv()[5] == aliases.wrapper_ext(standin.homedir, b"-", b"foo-bar")


def test_local_owner_file_with_an_odd_dash_defers(progs, peer, standin):
    """A users/cdb dash with upper case: ext = dash + ext would not name the same owner
    file, so the mail waits instead of going out with another envelope sender."""
    args = local_args(standin.homedir)
    args[3:6] = ["aliceXfoo-bar", "X", "foo-bar"]
    Path(standin.homedir, ".qmailXfoo-bar-owner").write_text("&owner@example.net\n")
    p = peer(LOCALQ_OK + b"&bob@example.net\n")
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 111 and not standin.ran()
    assert "has upper case or '.'" in err(r)


@pytest.mark.parametrize("name", [".qmail", ".qmaildefault"])
def test_local_dot_qmail_shadows_rows(progs, peer, standin, name):
    dot = Path(standin.homedir) / name
    dot.write_text("./Mailbox\n")
    p = peer(LOCALQ_OK + b"./Maildir/\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()
    assert err(r) == ("qmail-local: %s exists and would override the alias-table rows for this "
                      "address; move its lines into the alias table or remove it (qmail-local "
                      "deferred the message)\n" % dot)


def test_local_dangling_dot_qmail_symlink_still_shadows(progs, peer, standin):
    (Path(standin.homedir) / ".qmail").symlink_to("/nonexistent/target")
    p = peer(LOCALQ_OK + b"./Maildir/\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()


def test_local_dot_qmail_without_rows_is_stock_business(progs, peer, standin):
    (Path(standin.homedir) / ".qmail").write_text("./Mailbox\n")
    p = peer(LOCALQ_OK)
    args = local_args(standin.homedir, dash="", ext="")
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)


@pytest.mark.parametrize("status,text", [(111, "alias row ('alice', '') has both columns blank"),
                                         (111, "database unreachable"),
                                         (100, "refused")])
def test_local_status_defers(progs, peer, standin, status, text):
    p = peer(b"%d\x00%s" % (status, text.encode()))
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == status
    assert not standin.ran()
    assert err(r) == "qmail-local: %s\n" % text


def test_local_no_daemon_defers(progs, sockdir, standin):
    env = env_for(sockdir / "absent.sock", QMAILSQL_QMAIL_LOCAL=standin.path)
    r = run(progs, "qmail-local", local_args(standin.homedir), env)
    assert r.returncode == 111
    assert not standin.ran()
    assert "cannot reach qmailsqld" in err(r)


def test_local_peer_closes_defers(progs, peer, standin):
    p = peer(CLOSE)
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()


@pytest.mark.parametrize("body", [b"./Maildir/", b"./Maildir/\n\x00x\n"])
def test_local_malformed_lines_defer(progs, peer, standin, body):
    p = peer(LOCALQ_OK + body)
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()
    assert "malformed local answer" in err(r)


@pytest.mark.parametrize("line", [b"", b"0 0 90\n", b"x 0 90 bounce\n", b"0 0 90 bounce",
                                  b"0 0 90 burn\n", b"0 0 90 bounce \n"])
def test_local_malformed_quota_line_defers(progs, peer, standin, line):
    p = peer(b"0\x00" + line)
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 111
    assert not standin.ran()
    assert "malformed localq answer" in err(r)


def test_local_older_daemon_gets_local(progs, peer, standin):
    """A qmailsqld without `localq` says "unknown command": the wrapper asks `local`."""
    p = peer(b"100\x00unknown command localq", b"0\x00./Maildir/\n")
    r = run(progs, "qmail-local", local_args(standin.homedir), local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert [m.split(b"\x00")[0] for m in p.received] == [b"localq", b"local"]
    assert standin.argv()[-1] == b"./Maildir/\n"


@pytest.mark.parametrize("opts", [["-n"], ["-N"], ["-nN"], ["-n", "-N"]])
def test_local_options_passed_through(progs, peer, standin, opts):
    lines = b"./Maildir/\n"
    p = peer(LOCALQ_OK, b"0\x00", LOCALQ_OK + lines)
    args = opts + local_args(standin.homedir)
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(opts) + [b"--", b"alice", standin.homedir.encode(),
                                        b"alice-foo-bar", b"", b"", b"example.com",
                                        b"sender@example.org", lines]
    assert len(p.received) == 3


def test_local_without_double_dash(progs, peer, standin):
    p = peer(LOCALQ_OK + b"./Maildir/\n")
    args = local_args(standin.homedir)[1:]
    r = run(progs, "qmail-local", ["-n"] + args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv()[:2] == [b"-n", b"--"]
    assert standin.argv()[2:] == b(args[:3]) + [b"", b""] + b(args[5:7]) + [b"./Maildir/\n"]


@pytest.mark.parametrize("args", [[], ["--", "alice"], ["-x", "--", "a", "/h", "a", "", "", "d", "s", ""],
                                  ["--", "a", "/h", "a", "", "", "d", "s", "", "extra"]])
def test_local_bad_usage_goes_to_stock(progs, peer, standin, args):
    p = peer(LOCALQ_OK + b"./Maildir/\n")
    r = run(progs, "qmail-local", args, local_env(p, standin))
    assert r.returncode == 42, err(r)
    assert standin.argv() == b(args)
    assert p.received == []


def test_local_stock_missing(progs, peer, standin, sockdir):
    p = peer(LOCALQ_OK, b"0\x00")
    env = local_env(p, standin)
    env["QMAILSQL_QMAIL_LOCAL"] = str(sockdir / "no-such-qmail-local")
    r = run(progs, "qmail-local", local_args(standin.homedir), env)
    assert r.returncode == 111
    assert err(r) == ("qmail-local: unable to run the stock qmail-local %s: No such file or "
                      "directory (qmail-local deferred the message)\n" % env["QMAILSQL_QMAIL_LOCAL"])


def test_local_default_stock_path(progs, peer, standin):
    stock = qmail_dir() + "/bin/qmail-local.orig"
    if os.path.exists(stock):
        pytest.skip("a real %s exists" % stock)
    p = peer(LOCALQ_OK, b"0\x00")
    env = env_for(p.path)
    r = run(progs, "qmail-local", local_args(standin.homedir), env)
    assert r.returncode == 111
    assert "unable to run the stock qmail-local %s:" % stock in err(r)


def test_local_under_softlimit(progs, peer, standin, recorder):
    # the stand-in must be static too: a dynamic /bin/sh cannot start under softlimit -m 2000000
    p = peer(LOCALQ_OK + b"./Maildir/\n", b"111\x00database unreachable")
    env = local_env(p, standin)
    env["QMAILSQL_QMAIL_LOCAL"] = recorder
    args = local_args(standin.homedir)
    r = run(progs, "qmail-local", args, env, softlimit=True)
    assert r.returncode == 42, err(r)
    assert r.stdout.split(b"\x00")[:9] == [b"--", b"alice", standin.homedir.encode(),
                                          b"alice-foo-bar", b"", b"", b"example.com",
                                          b"sender@example.org", b"./Maildir/\n"]
    r = run(progs, "qmail-local", args, env, softlimit=True)
    assert r.returncode == 111
    assert err(r) == "qmail-local: database unreachable\n"


# ---------------------------------------------------------------- checkpassword

AUTH_INPUT = b"alice\x00s3cret\x001234567890\x00"


@pytest.fixture
def fd3(sockdir):
    def make(data):
        path = sockdir / ("fd3-%d" % len(list(sockdir.iterdir())))
        path.write_bytes(data)
        f = open(path, "rb")
        opened.append(f)
        return f.fileno()
    opened = []
    yield make
    for f in opened:
        f.close()


def test_cp_no_program(progs, peer, fd3):
    p = peer(b"0\x00")
    r = run(progs, "checkpassword", [], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 2
    assert p.received == []


def test_cp_fd3_closed(progs, peer):
    p = peer(b"0\x00")
    r = run(progs, "checkpassword", ["true"], env_for(p.path))  # close_fds: no fd 3
    assert r.returncode == 2
    assert "descriptor 3" in err(r)
    assert p.received == []


def test_cp_too_much_input(progs, peer, fd3):
    p = peer(b"0\x00")
    data = b"alice\x00" + b"x" * 499 + b"\x00" + b"1" * 6 + b"\x00"
    assert len(data) == 513
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(data))
    assert r.returncode == 2
    assert "more than 512" in err(r)
    assert p.received == []


def test_cp_512_bytes_is_fine(progs, peer, fd3):
    p = peer(b"1\x00")
    data = b"alice\x00" + b"x" * 498 + b"\x00" + b"1" * 6 + b"\x00"
    assert len(data) == 512
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(data))
    assert r.returncode == 1
    assert p.received == [b"auth\x00alice\x00" + b"x" * 498 + b"\x00\x00\x00"]


@pytest.mark.parametrize("data", [b"", b"alice", b"alice\x00", b"alice\x00s3cret"])
def test_cp_malformed_input(progs, peer, fd3, data):
    p = peer(b"0\x00")
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(data))
    assert r.returncode == 2
    assert "malformed input" in err(r)
    assert p.received == []


def test_cp_without_timestamp_is_accepted(progs, peer, fd3):
    p = peer(b"1\x00")
    r = run(progs, "checkpassword", ["true"], env_for(p.path, TCPREMOTEIP="192.0.2.9"),
            fd3=fd3(b"bob@example.com\x00pw\x00"))
    assert r.returncode == 1
    assert p.received == [b"auth\x00bob@example.com\x00pw\x00192.0.2.9\x00\x00"]


def test_cp_bad_login(progs, peer, fd3):
    p = peer(b"1\x00")
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 1
    assert r.stderr == b""
    assert p.received == [b"auth\x00alice\x00s3cret\x00\x00\x00"]


@pytest.mark.parametrize("prog,extra,service", [
    ("true", {}, b""),
    ("/var/qmail/bin/qmail-pop3d", {}, b"pop3"),       # behind qmail-popup
    ("qmail-pop3d", {}, b"pop3"),
    ("/bin/true", {"SMTPAUTH": ""}, b"smtp"),          # qmail-smtpd AUTH patches
    ("qmail-pop3d", {"QMAILSQL_SERVICE": "imap"}, b"imap"),  # said outright: it wins
    ("qmail-pop3d-not", {}, b""),
])
def test_cp_tells_its_service(progs, peer, fd3, prog, extra, service):
    p = peer(b"1\x00")
    r = run(progs, "checkpassword", [prog, "Maildir"], env_for(p.path, **extra),
            fd3=fd3(AUTH_INPUT))
    assert r.returncode == 1
    assert p.received == [b"auth\x00alice\x00s3cret\x00\x00" + service + b"\x00"]


def test_cp_bad_login_with_reason(progs, peer, fd3):
    p = peer(b"1\x00account suspended")
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 1
    assert err(r) == "checkpassword: account suspended\n"


@pytest.mark.parametrize("reply,code", [(b"111\x00database unreachable", 111),
                                        (b"2\x00login too long", 2),
                                        (b"100\x00odd", 111),
                                        (CLOSE, 111)])
def test_cp_trouble(progs, peer, fd3, tmp_path, reply, code):
    marker = tmp_path / "ran"
    p = peer(reply)
    r = run(progs, "checkpassword", ["sh", "-c", "touch %s" % marker], env_for(p.path),
            fd3=fd3(AUTH_INPUT))
    assert r.returncode == code
    assert not marker.exists()


def test_cp_no_daemon(progs, sockdir, fd3):
    r = run(progs, "checkpassword", ["true"], env_for(sockdir / "absent.sock"),
            fd3=fd3(AUTH_INPUT))
    assert r.returncode == 111
    assert "cannot reach qmailsqld" in err(r)


def test_cp_refuses_uid_0(progs, peer, fd3, tmp_path):
    marker = tmp_path / "ran"
    p = peer(b"0\x00root\x000\x000\x00/root\x00/bin/sh\x00")
    r = run(progs, "checkpassword", ["sh", "-c", "touch %s" % marker], env_for(p.path),
            fd3=fd3(AUTH_INPUT))
    assert r.returncode == 1
    assert not marker.exists()


@pytest.mark.parametrize("body", [b"alice\x00x1\x002\x00/h\x00\x00", b"alice\x001\x002\x00/h\x00",
                                  b"alice\x001\x00\x00/h\x00\x00", b"\x001\x002\x00/h\x00\x00",
                                  b"alice\x0099999999999\x002\x00/h\x00\x00",
                                  b"alice\x001\x002\x00/h\x00\x00extra\x00"])
def test_cp_malformed_answer(progs, peer, fd3, body):
    p = peer(b"0\x00" + body)
    r = run(progs, "checkpassword", ["true"], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 111
    assert "malformed auth answer" in err(r)


PRINTENV = """#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "USER=$USER"
echo "HOME=$HOME"
echo "SHELL=$SHELL"
echo "PWD=$(pwd)"
echo "ARGS=$*"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture
def userhome(sockdir):
    os.chmod(sockdir, 0o755)
    home = sockdir / "mail" / "alice"
    home.mkdir(parents=True)
    os.chmod(sockdir / "mail", 0o755)
    os.chown(home, 1234, 2345)
    script = sockdir / "printenv.sh"
    script.write_text(PRINTENV)
    script.chmod(0o755)
    return home, script


@needs_root
@pytest.mark.parametrize("shell,want", [(b"/bin/bash", "/bin/bash"), (b"", "/bin/sh")])
def test_cp_success_drops_to_user(progs, peer, fd3, userhome, shell, want):
    home, script = userhome
    p = peer(b"0\x00alice\x001234\x002345\x00" + str(home).encode() + b"\x00" + shell + b"\x00")
    env = env_for(p.path, TCPREMOTEIP="192.0.2.7", USER="root", HOME="/root")
    r = run(progs, "checkpassword", [str(script), "one", "two"], env, fd3=fd3(AUTH_INPUT))
    assert r.returncode == 0, err(r)
    assert r.stdout.decode().splitlines() == [
        "uid=1234 gid=2345 groups=2345",
        "USER=alice",
        "HOME=%s" % home,
        "SHELL=%s" % want,
        "PWD=%s" % home,
        "ARGS=one two",
    ]
    assert p.received == [b"auth\x00alice\x00s3cret\x00192.0.2.7\x00\x00"]


@needs_root
def test_cp_program_found_on_path(progs, peer, fd3, userhome):
    home, _ = userhome
    p = peer(b"0\x00alice\x001234\x002345\x00" + str(home).encode() + b"\x00\x00")
    r = run(progs, "checkpassword", ["id", "-u"], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 0, err(r)
    assert r.stdout == b"1234\n"


def test_cp_chdir_failure(progs, peer, fd3, sockdir, tmp_path):
    marker = tmp_path / "ran"
    uid = os.getuid() or 1234
    home = sockdir / "no-such-home"
    p = peer(b"0\x00alice\x00%d\x00%d\x00%s\x00\x00" % (uid, uid, str(home).encode()))
    r = run(progs, "checkpassword", ["sh", "-c", "touch %s" % marker], env_for(p.path),
            fd3=fd3(AUTH_INPUT))
    assert r.returncode == 111
    assert "unable to chdir to %s" % home in err(r)
    assert not marker.exists()


@needs_root
def test_cp_program_missing(progs, peer, fd3, userhome):
    home, _ = userhome
    p = peer(b"0\x00alice\x001234\x002345\x00" + str(home).encode() + b"\x00\x00")
    r = run(progs, "checkpassword", ["no-such-program-qs"], env_for(p.path), fd3=fd3(AUTH_INPUT))
    assert r.returncode == 111
    assert "unable to run no-such-program-qs" in err(r)


@needs_root
def test_cp_privilege_drop_failure_is_111(progs, peer, fd3, userhome, tmp_path, everyone_dir):
    # run checkpassword as uid 1234; the answer asks for uid 4321: setgroups must fail
    home, _ = userhome
    marker = tmp_path / "ran"
    p = peer(b"0\x00alice\x004321\x002345\x00" + str(home).encode() + b"\x00\x00")
    os.chmod(p.path, 0o777)  # so that uid 1234 may connect
    f = fd3(AUTH_INPUT)

    def drop():
        os.dup2(f, 3)
        os.setgroups([])
        os.setgid(2345)
        os.setuid(1234)
    exe = shutil.copy2(progs["checkpassword"], everyone_dir)  # uid 1234 can run this copy
    r = subprocess.run([exe, "sh", "-c", "touch %s" % marker],
                       env=env_for(p.path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       preexec_fn=drop, close_fds=False, timeout=30)
    assert r.returncode == 111
    assert "failed: Operation not permitted" in err(r)
    assert not marker.exists()


def test_cp_under_softlimit(progs, peer, fd3, recorder):
    uid = os.getuid() or 1234
    p = peer(b"0\x00alice\x00%d\x00%d\x00/\x00\x00" % (uid, uid))
    r = run(progs, "checkpassword", [recorder, "x"], env_for(p.path),
            fd3=fd3(AUTH_INPUT), softlimit=True)
    assert r.returncode == 42, err(r)
    assert r.stdout == b"x\x00uid=%d\x00cwd=/\x00user=alice\x00" % uid
