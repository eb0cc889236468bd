"""Shared fixtures: every DB test runs against a private MariaDB started by the project.

`sandbox` is one sandbox for the whole session (tables emptied per test by `db`);
`own_sandbox` is a fresh one for a test that stops or kills the server.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import qmailsql
from qmailsql import sandbox as sb


def pytest_configure(config):
    """Every `python -m qmailsql` a test starts must run the package under test (the
    installed one in CI), not the source tree that is the cwd: run from /tmp, with
    PYTHONPATH naming the package's own directory."""
    os.environ["PYTHONPATH"] = sb.package_parent()
    os.chdir(tempfile.gettempdir())


def _new_sandbox(daemon):
    # short path: unix socket paths are limited to 107 bytes
    root = tempfile.mkdtemp(prefix="qst-", dir="/tmp")
    env = sb.up(root, daemon=daemon)
    return Path(root), env


@pytest.fixture(scope="session")
def sandbox():
    root, env = _new_sandbox(daemon=True)
    with environ(env):
        yield root
    sb.down(root)


@contextlib.contextmanager
def environ(env):
    """os.environ with ENV added, restored afterwards (for session-wide set-ups that
    pytest's monkeypatch cannot reach)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


TABLES = ("mailbox", "alias", "virtual", "rcpthosts")


@pytest.fixture
def db(sandbox):
    """A Session on the shared sandbox with every table empty and homes under tmp."""
    with qmailsql.connect(str(sandbox)) as q:
        for t in TABLES:
            q.directory.query("DELETE FROM `%s`" % t, write=True)
        yield q
        flush_daemon(sandbox)


def flush_daemon(root):
    """Drop the daemon's cache so the next test sees its own rows."""
    from qmailsql import client
    try:
        client.flush(sb.Paths(root).daemon_socket, timeout=5)
    except (OSError, ValueError):
        pass


def replica_pair(daemon_on_replica):
    """Yield (primary Paths, replica Paths): a primary with a binary log on a TCP
    port and a real MariaDB replica of it; both torn down afterwards."""
    proot = tempfile.mkdtemp(prefix="qsp-", dir="/tmp")
    rroot = tempfile.mkdtemp(prefix="qsr-", dir="/tmp")
    try:
        sb.up(proot, port=sb.free_port(), log_bin=True, daemon=False)
        sb.up_replica(proot, rroot, daemon=daemon_on_replica)
        yield sb.Paths(proot), sb.Paths(rroot)
    finally:
        for root in (rroot, proot):
            try:
                sb.down(root)
            except sb.SandboxError:
                pass
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_sandbox():
    root, env = _new_sandbox(daemon=True)
    yield root, env
    try:
        sb.down(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def homes(tmp_path):
    """A directory for mailbox homes that the test can chown freely."""
    d = tmp_path / "homes"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    return d


def newu(entries):
    """users/cdb as qmail-newu writes it, from (wild, local, fields) entries."""
    from qmailsql import cdb
    pairs, wild = [], ""
    for is_wild, local, fields in entries:
        key = b"!" + local.lower().encode() + (b"" if is_wild else b"\0")
        if is_wild and local and local[-1] not in wild:
            wild += local[-1]
        pairs.append((key, "\0".join(fields).encode()))
    pairs.append((b"", wild.encode()))
    return cdb.make(pairs)


def as_uid(uid, gid=None):
    """A command prefix that runs the rest as UID (and GID, default the same number)."""
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % (uid if gid is None else gid),
            "--clear-groups"]


RAW_CLIENT = r"""
import socket, sys
path, payload = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)
s.sendall(b"%d:%s," % (len(payload), payload))
data = b""
while not data.endswith(b","):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"""


def raw_as(uid, path, fields):
    """One request of FIELDS (bytes) to the daemon socket PATH, sent by a process running
    as UID: (status, body)."""
    import subprocess
    import sys
    from qmailsql.hotpath import decode_frame
    payload = b"".join(f + b"\0" for f in fields)
    r = subprocess.run(as_uid(uid) + [sys.executable, "-I", "-c", RAW_CLIENT, str(path),
                                      payload.hex()], capture_output=True, cwd="/",
                       timeout=60)
    assert r.returncode == 0, r.stderr
    answer, _ = decode_frame(r.stdout)
    status, _, body = answer.partition(b"\0")
    return int(status), body
