"""Every deferral qmailsql causes carries its reason into qmail-send's log (SPEC 7).

qmail-lspawn gives qmail-getpw no usable stderr (qmail-start closes it; the message
file may sit on fd 2, read-only). The compiled qmail-getpw and wrapper run here exactly
as qmail-lspawn runs them (tests/qmail_lspawn.py): the report that qmail-send would
read, and its log line, must name the cause, and nothing may be delivered or bounced.
"""
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import qmailsql

from conftest import add_mailbox, environ
from qmail_lspawn import FD2_CLOSED, FD2_MESSAGE, QLX_NOALIAS, deliver
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path

QMAILP, NOFILES = 64011, 64012   # stand-ins for qmail's qmailp user and nofiles group
MAILBOX_UID, MAILBOX_GID = 64013, 64014
DEFER_HOME = "/dev/null/qmailsql-deferral/"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs helpers as other uids")

STOCK_STANDIN = """#!/bin/sh
# stands in for the stock qmail-local: records that it ran, and as whom
id -u > %s
exit 0
"""


@pytest.fixture(scope="module")
def qmail():
    """A sandbox whose qmailsqld answers getpw for the qmailp stand-in uid, its
    directories reachable by that uid, and a recording stock qmail-local."""
    root = Path(tempfile.mkdtemp(prefix="qsd-", dir="/tmp"))
    with environ({"QMAILSQL_CLIENT_UIDS": str(QMAILP)}):
        sb.up(str(root))
    paths = sb.Paths(root)
    for d in (root, paths.run, paths.bin):
        os.chmod(d, 0o755)
    records = root / "records"
    records.mkdir()
    os.chmod(records, 0o777)  # the stand-in runs as whichever uid qmail-lspawn picked
    ran = records / "stock-ran"
    stock = root / "qmail-local.orig"
    stock.write_text(STOCK_STANDIN % ran)
    os.chmod(stock, 0o755)
    message = root / "message"
    message.write_text("Subject: test\n\nhello\n")

    class Q:
        dir = root
        stock_ran = ran

        @staticmethod
        def env(socket_path=paths.daemon_socket):
            return {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": str(socket_path),
                    "QMAILSQL_QMAIL_LOCAL": str(stock)}

        @staticmethod
        def deliver(local, env=None, fd2=FD2_CLOSED, qmail_dir=root):
            if ran.exists():
                ran.unlink()
            return deliver(str(qmail_dir), local, "example.org", env or Q.env(), QMAILP,
                           NOFILES, str(message), fd2=fd2)
    try:
        yield Q
    finally:
        sb.down(str(root))
        shutil.rmtree(root, ignore_errors=True)


def assert_deferred(q, d, reason):
    """D is a deferral whose report is exactly REASON, made through the deferral answer:
    qmail-local ran as the unprivileged qmailp uid, under /dev/null, and the stock
    program (the only thing that could deliver or bounce) never ran."""
    assert d.report == b"Z" + reason.encode() + b"\n", d.report
    assert d.code == 111
    assert not q.stock_ran.exists(), "the stock qmail-local ran"
    user, uid, gid, home, dash, ext = d.nughde.split(b"\0")[:6]
    assert (user, uid, gid, dash, ext) == (b"qmailsql-deferral", b"%d" % QMAILP,
                                           b"%d" % NOFILES, b"", b"")
    assert home == (DEFER_HOME + reason).encode()
    assert d.local_argv[3] == home


@pytest.mark.parametrize("fd2", [FD2_CLOSED, FD2_MESSAGE])
def test_daemon_not_running_socket_missing(qmail, fd2):
    sock = qmail.dir / "gone" / "qmailsqld.sock"
    d = qmail.deliver("iain", env=qmail.env(sock), fd2=fd2)
    reason = ("qmail-getpw: cannot reach qmailsqld at %s: No such file or directory; is the "
              "daemon running? (qmailsql doctor)" % sock)
    assert_deferred(qmail, d, reason)
    assert d.log_line(30) == (
        "delivery 30: deferral: qmail-getpw:_cannot_reach_qmailsqld_at_%s:_No_such_file_or_"
        "directory;_is_the_daemon_running?_(qmailsql_doctor)/" % sock)


def test_daemon_not_running_stale_socket(qmail):
    sock = qmail.dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # bound, never listening: what a killed daemon leaves
    os.chmod(sock, 0o777)
    try:
        d = qmail.deliver("iain", env=qmail.env(sock))
    finally:
        s.close()
        sock.unlink()
    assert_deferred(qmail, d, "qmail-getpw: cannot reach qmailsqld at %s: Connection refused; "
                    "is the daemon running? (qmailsql doctor)" % sock)


def test_daemon_does_not_answer_in_time(qmail, tmp_path):
    """A daemon that accepts and never answers: the client's own timeout (built short)."""
    from test_c_clients import build
    qdir = Path(tempfile.mkdtemp(prefix="qst-", dir="/tmp"))
    try:
        os.chmod(qdir, 0o755)
        (qdir / "bin").mkdir(mode=0o755)
        build("qmail-getpw", qdir / "bin" / "qmail-getpw", defines=["-DQS_TIMEOUT_S=1"])
        shutil.copy2(helper_path("qmail-local"), qdir / "bin" / "qmail-local")
        sock = qdir / "mute.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(sock))
        s.listen(8)  # connections wait in the backlog, unanswered
        os.chmod(sock, 0o777)
        try:
            d = qmail.deliver("iain", env=qmail.env(sock), qmail_dir=qdir)
        finally:
            s.close()
        assert_deferred(qmail, d, "qmail-getpw: timed out after 1 s talking to qmailsqld at %s"
                        % sock)
    finally:
        shutil.rmtree(qdir, ignore_errors=True)


def test_misconfigured_row(qmail):
    with qmailsql.connect(str(qmail.dir)) as q:
        add_mailbox(q, "badrow", "relative/home", uid=800, gid=100)
    try:
        d = qmail.deliver("badrow")
    finally:
        sb.root_sql(sb.Paths(qmail.dir), [("DELETE FROM qmail.mailbox WHERE username='badrow'",
                                          ())])
    text = d.report.decode()
    assert text.startswith("Zqmail-getpw: misconfigured mailbox row for 'badrow'"), text
    assert_deferred(qmail, d, text[1:-1])


def test_db_down_nothing_cached(qmail):
    paths = sb.Paths(qmail.dir)
    sb.stop_db(paths)
    try:
        d = qmail.deliver("never-asked-before")
    finally:
        sb.restart_db(paths)
    text = d.report.decode()
    assert text.startswith("Zqmail-getpw: DB lookup") and "no DB server answered" in text, text
    assert str(paths.db_socket) in text  # which server, and why
    assert_deferred(qmail, d, text[1:-1])


def test_a_normal_delivery_still_runs_the_stock_program(qmail):
    """The same emulation, with an answer: the stock qmail-local runs as the mailbox uid."""
    home = qmail.dir / "home-ok"
    home.mkdir()
    os.chown(home, MAILBOX_UID, MAILBOX_GID)
    with qmailsql.connect(str(qmail.dir)) as q:
        add_mailbox(q, "okuser", home, uid=MAILBOX_UID, gid=MAILBOX_GID)
    try:
        d = qmail.deliver("okuser")
    finally:
        sb.root_sql(sb.Paths(qmail.dir), [("DELETE FROM qmail.mailbox WHERE username='okuser'",
                                          ())])
    assert d.report == b"K", d.report
    assert qmail.stock_ran.read_text().strip() == str(MAILBOX_UID)


def test_no_alias_user_is_still_qmail_lspawns_own_deferral(qmail):
    d = qmail.deliver("nobody-at-all-here")
    assert d.code == QLX_NOALIAS and d.local_argv is None
    assert d.report == b"ZUnable to find alias user!\n"


def test_the_deferral_home_cannot_be_entered():
    """What keeps a stock qmail-local (were the wrapper missing) from delivering: it
    refuses a relative home (exit 100) and defers when chdir(home) fails (exit 111)
    before it reads the message; a path below /dev/null is absolute and never a
    directory."""
    home = DEFER_HOME + "qmail-getpw: some reason / with slashes"
    assert home.startswith("/")
    with pytest.raises(NotADirectoryError):
        os.chdir(home)


def test_direct_use_keeps_stderr_and_exit_codes(tmp_path):
    """Run by hand (stderr open), or as root, qmail-getpw exits 111 with the reason on
    stderr and writes nothing on stdout."""
    getpw = str(helper_path("qmail-getpw"))
    env = {"QMAILSQL_SOCKET": str(tmp_path / "none.sock")}
    r = subprocess.run([getpw, "iain"], capture_output=True, env=env)
    assert (r.returncode, r.stdout) == (111, b"")
    assert r.stderr.startswith(b"qmail-getpw: cannot reach qmailsqld at ")
    # root with no stderr: qmail-lspawn would refuse uid 0, so no deferral answer
    r = subprocess.run([getpw, "iain"], stdout=subprocess.PIPE, env=env,
                       preexec_fn=lambda: os.close(2))
    assert (r.returncode, r.stdout) == (111, b"")
    r = subprocess.run([getpw], capture_output=True, env=env)
    assert r.returncode == 100 and b"usage" in r.stderr
