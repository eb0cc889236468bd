"""Shared fixtures: every DB test runs against a private MariaDB started by the project.

`sandbox` is one sandbox for the whole session (tables emptied per test by `db`);
`own_sandbox` is a fresh one for a test that stops or kills the server.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

import qmailsql
from qmailsql.core import cdb, client, config as configmod, db as dbmod
from qmailsql.core.hotpath import decode_frame
from qmailsql.sandbox import host as sb


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


# ---------------------------------------------------------------- rows
# The one set of row factories every test file uses: Q is a Session (the `db` fixture)
# or a Directory (tests that talk to a primary or a sandbox of their own).
ROW_UID, ROW_GID = 800, 100


def _write_row(q, sql, params):
    return getattr(q, "directory", q).query(sql, params, write=True)


def add_mailbox(q, name, home=None, uid=ROW_UID, gid=ROW_GID, password="x",
                ptype="Password", suspended="N", deny="", quota_size=None, quota_count=None,
                make_home=False, replace=False):
    """A mailbox row (home default /home/mail/NAME; quotas NULL: none of its own);
    MAKE_HOME creates the home owned by uid/gid, as qmail-getpw demands; REPLACE
    overwrites a row of that name."""
    home = str(home) if home is not None else "/home/mail/" + name
    _write_row(q, "%s INTO mailbox (username, uid, gid, home, password, password_type, "
                  "suspended, deny_services, quota_size, quota_count) VALUES (%%s,%%s,%%s,"
                  "%%s,%%s,%%s,%%s,%%s,%%s,%%s)" % ("REPLACE" if replace else "INSERT"),
               (name, uid, gid, home, password, ptype, suspended, deny, quota_size,
                quota_count))
    if make_home:
        os.makedirs(home, exist_ok=True)
        os.chown(home, uid, gid)
    return home


def add_alias(q, username, alias, alias_username, alias_host):
    """An alias row: USERNAME's extension ALIAS goes to ALIAS_USERNAME@ALIAS_HOST."""
    _write_row(q, "INSERT INTO alias (username, alias, alias_username, alias_host) "
                  "VALUES (%s,%s,%s,%s)", (username, alias, alias_username, alias_host))


def add_virtual(q, username, ext, virtual_username, virtual_host):
    """A virtual row: VIRTUAL_USERNAME@VIRTUAL_HOST is delivered as USERNAME-EXT."""
    _write_row(q, "INSERT INTO virtual (username, ext, virtual_username, virtual_host) "
                  "VALUES (%s,%s,%s,%s)", (username, ext, virtual_username, virtual_host))


# ---------------------------------------------------------------- directories that fail

def unreachable(sandbox):
    """(config, db.Directory) of SANDBOX's configuration with a DB server that is not
    there: every query raises DirectoryUnavailable, as a real outage does."""
    config = dataclasses.replace(configmod.load(str(sandbox)),
                                 servers=[configmod.Server(socket="/nonexistent/mysql.sock")],
                                 connect_timeout=1)
    return config, dbmod.Directory(config)


class BuggyDirectory:
    """A directory whose query meets a bug (TypeError), not DB trouble."""
    log = None

    def query(self, sql, params=(), write=False):
        raise TypeError("a bug, not the DB (test)")

    def mailboxes(self, names):
        return self.query("SELECT", names)

    def must_confirm(self):
        return False


def flush_daemon(root):
    """Drop the daemon's cache so the next test sees its own rows."""
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
    payload = b"".join(f + b"\0" for f in fields)
    r = subprocess.run(as_uid(uid) + [python_for_everyone(), "-I", "-c", RAW_CLIENT,
                                      str(path), payload.hex()], capture_output=True, cwd="/",
                       timeout=60)
    assert r.returncode == 0, r.stderr
    answer, _ = decode_frame(r.stdout)
    status, _, body = answer.partition(b"\0")
    return int(status), body
# ---------------------------------------------------------------- other uids
# A test that runs something as another uid must not depend on where the checkout (or
# the interpreter) lives: a checkout in /root (mode 700) is out of every other uid's
# reach. So: a fork that drops to the uid (no path to run at all), a copy in a
# directory every uid can enter, or an interpreter every uid can run.

def run_as(uid, gid, fn, *args):
    """FN(*ARGS) in a forked child running as UID/GID; returns what FN returned (it
    must be JSON-able). An exception in the child fails the test with its traceback."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(rfd)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                out = {"ok": fn(*args)}
            except BaseException:
                out = {"error": traceback.format_exc()}
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(wfd, data):]
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "the child died"}')
    assert "error" not in result, "as uid %d:\n%s" % (uid, result["error"])
    return result["ok"]


def python_for_everyone():
    """This interpreter's version at a path every uid can run (this one, or the
    system's), for `python -I -c SCRIPT` run as another uid; skips when there is none."""
    version = "%d.%d" % sys.version_info[:2]
    for python in (os.path.realpath(sys.executable), "/usr/bin/python" + version,
                   "/usr/local/bin/python" + version):
        if os.path.exists(python) and subprocess.run(
                ["setuidgid", "nobody", python, "-I", "-c", "import json, socket"],
                capture_output=True).returncode == 0:
            return python
    pytest.skip("no python%s here that other users can run" % version)


@pytest.fixture
def everyone_dir():
    """A fresh directory under /tmp that every uid can enter (pytest's tmp_path is
    below a 0700 directory), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="qse-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
