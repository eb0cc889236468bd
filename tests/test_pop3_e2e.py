"""A real POP3 login: Dovecot's checkpassword passdb runs the compiled checkpassword,
which asks qmailsqld, which asks MariaDB. This is the old way in, kept working for
sites that have it; the README's recipe is Dovecot's Lua passdb (tests/test_dovecot.py),
which needs neither a root auth process nor INSECURE_SETUID.

Dovecot (Debian: dovecot-core, dovecot-pop3d; 2.3) runs as a child of the test with
its own dovecot.conf, base_dir, state_dir and log in a temporary directory and a
POP3 listener on a free 127.0.0.1 port, so a system dovecot service (if the package
started one) is neither used nor disturbed.

How Dovecot drives checkpassword (db-checkpassword.c, checkpassword-reply.c): the
auth process runs `<args> /usr/lib/dovecot/checkpassword-reply` with
`login\\0password\\0\\0` on fd 3; the checkpassword program exits 1 for a bad login
(Dovecot: "[AUTH] Authentication failed"), any other failure (111) is an internal
failure ("[SYS/TEMP] Temporary authentication failure" / "[UNAVAIL]"); on success
it execs checkpassword-reply, which sends USER, HOME and its own uid/gid back on
fd 4 (userdb fields for `userdb { driver = prefetch }`). Our checkpassword
setuid()s to the mailbox uid before that exec, so checkpassword-reply runs as that
uid and refuses unless INSECURE_SETUID is in its environment (Dovecot >= 2.2.7,
"Security" in Dovecot's checkpassword page). Hence `service auth { user = root }`
(checkpassword must be root to change uid, and qmailsqld answers `auth` to root)
and `import_environment = ... INSECURE_SETUID=1 QMAILSQL_SOCKET=...`.
"""
import os
import poplib
import shutil
import tempfile

import pytest
from conftest import add_mailbox

import qmailsql
from qmailsql.sandbox import dovecot as private_dovecot
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path

UID, GID = 5000, 5000
PASSWORD = "pop secret"
MESSAGE = (b"From: sender@example.org\r\nTo: alice@example.com\r\n"
           b"Subject: qmailsql pop3 test\r\n\r\nHello from the maildir.\r\n")
REPLY = "/usr/lib/dovecot/checkpassword-reply"

@pytest.fixture
def pop3_world(own_sandbox):
    """A private sandbox (its daemon gets stopped here), a mailbox with one message,
    and a Dovecot POP3 server using our checkpassword."""
    assert os.access(REPLY, os.X_OK), ("Dovecot's %s is missing: apt-get install "
                                       "dovecot-core dovecot-pop3d (bash .ci/setup does)"
                                       % REPLY)
    root, _ = own_sandbox
    paths = sb.Paths(root)
    if os.geteuid() != 0:
        pytest.skip("Dovecot's auth must run checkpassword as root here: run the tests as root")
    cp = str(helper_path("checkpassword"))
    if " " in cp:
        pytest.skip("Dovecot splits passdb args at spaces: %r" % cp)
    top = tempfile.mkdtemp(prefix="qsdv-", dir="/tmp")  # short and searchable by every uid
    os.chmod(top, 0o755)
    home = os.path.join(top, "alice")
    for sub in ("", "/Maildir", "/Maildir/new", "/Maildir/cur", "/Maildir/tmp"):
        os.mkdir(home + sub, 0o700)
        os.chown(home + sub, UID, GID)
    msg = os.path.join(home, "Maildir", "new", "1700000000.P1Q1.qmailsql-test")
    with open(msg, "wb") as f:
        f.write(MESSAGE)
    os.chown(msg, UID, GID)
    from qmailsql.core.passwords import hash_password
    ptype, stored = hash_password("sha512-crypt", PASSWORD.encode())
    with qmailsql.connect(str(root)) as q:
        add_mailbox(q, "alice", home, uid=UID, gid=GID, password=stored, ptype=ptype)
    body = private_dovecot.CHECKPASSWORD_RECIPE.format(socket=paths.daemon_socket, checkpassword=cp)
    server = private_dovecot.Private(top, body, {"pop3": sb.free_port()})
    try:
        server.start()
        yield {"port": server.ports["pop3"], "paths": paths, "server": server, "home": home}
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def pop3(world):
    return poplib.POP3("127.0.0.1", world["port"], timeout=30)


def test_pop3_login_retr_refusal_and_trouble(pop3_world):
    world = pop3_world
    # the right password: one message, its content
    p = pop3(world)
    try:
        p.user("alice")
        p.pass_(PASSWORD)
        count, _ = p.stat()
        assert count == 1
        resp, lines, _ = p.retr(1)
        assert resp.startswith(b"+OK")
        assert b"\r\n".join(lines) + b"\r\n" == MESSAGE
    finally:
        p.quit()

    # a wrong password: Dovecot's plain authentication failure
    p = pop3(world)
    try:
        p.user("alice")
        with pytest.raises(poplib.error_proto) as exc:
            p.pass_("not the password")
        wrong = str(exc.value)
        assert "[AUTH]" in wrong and "Authentication failed" in wrong
    finally:
        p.close()

    # qmailsqld stopped: a temporary failure, not "wrong password"
    sb.stop_daemon(world["paths"])
    p = pop3(world)
    try:
        p.user("alice")
        with pytest.raises(poplib.error_proto) as exc:
            p.pass_(PASSWORD)
        temp = str(exc.value)
        assert "Authentication failed" not in temp, temp
        assert "[UNAVAIL]" in temp or "[SYS/TEMP]" in temp or "Temporary" in temp, temp
    finally:
        p.close()
    log = world["server"].log()
    assert "exited with status 111" in log, log
