"""qmail-getpw resolution against a real MariaDB (SPEC section 4, steps 2-4)."""
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import add_mailbox
from qmailsql.sandbox import demo, host as sb
from qmailsql.core import resolve
from qmailsql.core.resolve import Delivery, Refusal

UID, GID = 800, 100


def getpw_cli(local, env=None):
    return subprocess.run([sys.executable, "-m", "qmailsql", "getpw", local],
                          capture_output=True, env=env, timeout=60)


def test_faq_solaris_example(db, homes):
    demo.load_faq(db.directory, str(homes))
    assert db.getpw(b"iain") == Delivery(b"iain", UID, GID, os.fsencode(homes / "iain"),
                                         b"", b"")
    assert db.getpw(b"iain-sanity") == Delivery(b"iain-sanity", UID, GID,
                                                os.fsencode(homes / "sanity"), b"", b"")
    assert db.getpw(b"iain-slowlaris") == Delivery(b"iain", UID, GID,
                                                   os.fsencode(homes / "iain"), b"-",
                                                   b"slowlaris")


def test_cli_prints_stock_fields(db, homes):
    demo.load_faq(db.directory, str(homes))
    r = getpw_cli("iain-slowlaris")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"iain\x00800\x00100\x00" + os.fsencode(homes / "iain") + b"\x00-\x00slowlaris\x00"


def test_case_lowered_but_ext_keeps_case(db, homes):
    add_mailbox(db, "iain", homes / "iain", make_home=True)
    d = db.getpw(b"IAIN-SlowLaris")
    assert (d.user, d.dash, d.ext) == (b"iain", b"-", b"SlowLaris")


def test_explain_says_why(db, homes):
    add_mailbox(db, "iain", homes / "iain", make_home=True)
    add_mailbox(db, "iain-x", homes / "x")
    story = []
    db.getpw(b"iain-x", story)
    assert "candidate 'iain-x' (mailbox uid 800): rejected: home" in story[0]
    assert "No such file or directory" in story[0]
    assert "taken" in story[1] and "'iain'" in story[1]


def test_home_owned_by_another_uid_is_rejected(db, homes):
    add_mailbox(db, "iain", homes / "iain", make_home=True)
    add_mailbox(db, "iain-other", homes / "other", make_home=True)
    os.chown(homes / "other", UID + 1, GID)
    story = []
    d = db.getpw(b"iain-other", story)
    assert (d.user, d.ext) == (b"iain", b"other")
    assert "owned by uid 801, not 800" in story[0]


def test_uid_zero_is_never_a_candidate(db, homes):
    add_mailbox(db, "boss", homes / "boss", uid=0, gid=0, make_home=True)
    add_mailbox(db, "alias", homes / "alias", uid=UID, make_home=True)
    story = []
    d = db.getpw(b"boss", story)
    assert (d.user, d.dash, d.ext) == (b"alias", b"-", b"boss")
    assert "uid 0 never gets mail" in story[0]


def test_no_candidate_goes_to_alias_user(db, homes):
    add_mailbox(db, "alias", homes / "alias", uid=UID + 5, make_home=True)
    d = db.getpw(b"Nobody-Here")
    assert d == Delivery(b"alias", UID + 5, GID, os.fsencode(homes / "alias"), b"-",
                         b"Nobody-Here")


def test_no_alias_user_is_116(db, homes):
    with pytest.raises(Refusal) as e:
        db.getpw(b"nobody-here")
    assert e.value.code == 116
    assert getpw_cli("nobody-here").returncode == 116


def test_mailbox_row_wins_over_passwd(db, homes):
    add_mailbox(db, "daemon", homes / "d", uid=UID, make_home=True)
    assert db.getpw(b"daemon").uid == UID


def test_system_users_from_passwd_and_switch(db, homes):
    # root is in /etc/passwd everywhere, with uid 0: found there and refused
    story = []
    with pytest.raises(Refusal):
        db.getpw(b"root", story)
    assert "candidate 'root' (passwd uid 0): rejected" in story[0]
    cfg = dataclasses.replace(db.config, system_users=False)
    story = []
    with pytest.raises(Refusal):
        resolve.Resolver(cfg, db.directory.mailboxes).getpw(b"root", story)
    assert story[0] == "candidate 'root': no such user in mailbox"


def test_trailing_space_and_accents_do_not_match(db, homes):
    # MariaDB's collation pads and folds; qmail compares exact lower-case names
    add_mailbox(db, "jose", homes / "jose", make_home=True)
    add_mailbox(db, "alias", homes / "alias", make_home=True)
    assert db.getpw(b"jose ").user == b"alias"
    assert db.getpw("josé".encode()).user == b"alias"
    assert db.getpw(b"JOSE").user == b"jose"


HOSTILE = [b"o'brien", b"back\\slash", b"100%", b"under_score", b"' OR 1=1 -- ",
           b"\xff\xfe\xfd", "ünï".encode(), b"x" * 10240, b"a-" * 5000, b"%-_-%",
           b"x" * 2048, b"a-" * 1024]


@pytest.mark.parametrize("local", HOSTILE, ids=lambda b: "%r (%d bytes)" % (b[:12], len(b)))
def test_hostile_locals_get_a_correct_answer(db, homes, local):
    """A correct answer, or (longer than any address stock qmail passes) a clear 111."""
    add_mailbox(db, "alias", homes / "alias", make_home=True)
    add_mailbox(db, "o'brien", homes / "ob", make_home=True)
    add_mailbox(db, "a", homes / "a", make_home=True)
    if len(local) > resolve.MAX_FIELD:
        with pytest.raises(Refusal) as e:
            db.getpw(local)
        assert e.value.code == 111 and e.value.message == (
            "local part of %d bytes is longer than qmailsql's limit of %d (qmail-smtpd "
            "takes addresses of at most 900 bytes)" % (len(local), resolve.MAX_FIELD))
        return
    d = db.getpw(local)
    if local == b"o'brien":
        assert d.user == b"o'brien" and d.ext == b""
    elif local.startswith(b"a-"):
        assert d.user == b"a" and d.ext == local[2:]
    else:
        assert d.user == b"alias" and d.ext == local


def test_nul_in_local_is_refused(db):
    with pytest.raises(Refusal) as e:
        db.getpw(b"a\0b")
    assert e.value.code == 100


def test_misconfigured_row_is_111(db, homes):
    add_mailbox(db, "rel", homes / "rel", make_home=True)
    db.directory.query("UPDATE mailbox SET home='relative/path' WHERE username='rel'",
                       write=True)
    with pytest.raises(Refusal) as e:
        db.getpw(b"rel")
    assert e.value.code == 111 and "absolute home" in e.value.message


def test_cli_usage_error_is_100():
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw"], capture_output=True)
    assert r.returncode == 100
    assert b"usage" in r.stderr


def test_db_down_is_111_never_alias(own_sandbox, homes):
    root, env = own_sandbox
    import qmailsql
    with qmailsql.connect(str(root)) as q:
        demo.load_faq(q.directory, str(homes))
        add_mailbox(q, "alias", homes, uid=800, gid=100)
    environ = dict(os.environ, **env)
    assert getpw_cli("iain", environ).returncode == 0
    sb.stop_db(sb.Paths(root), sig=signal.SIGKILL)
    r = getpw_cli("iain", environ)
    assert r.returncode == 111
    assert b"no DB server answered" in r.stderr
    assert r.stdout == b""  # never the alias user's fields
    sb.start_db(sb.Paths(root))
    assert getpw_cli("iain", environ).returncode == 0


def test_explain_shows_rows_and_dot_qmail_lines(db, homes):
    demo.load_faq(db.directory, str(homes))
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "--explain",
                        "iain-slowlaris"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "candidate 'iain-slowlaris': no such user" in r.stdout
    assert "dash='-' ext='slowlaris'" in r.stdout
    assert "alias-table rows give these dot-qmail lines:\n  ./Maildir/\n" in r.stdout
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "--explain", "iain-other"],
                       capture_output=True, text=True, timeout=60)
    assert "no alias-table rows" in r.stdout


def test_failed_sandbox_up_leaves_no_server_running(tmp_path, monkeypatch):
    """A daemon that cannot start must not leave the private mariadbd behind."""
    root = Path(tempfile.mkdtemp(prefix="qsx-", dir="/tmp"))
    try:
        monkeypatch.setattr(sb, "start_daemon", lambda paths: (_ for _ in ()).throw(
            sb.SandboxError("daemon refused to start (planted)")))
        with pytest.raises(sb.SandboxError, match="planted"):
            sb.up(root)
        assert not sb._pid_alive(sb.Paths(root).db_pid)
        assert (root / "mysql" / "error.log").exists()  # the logs stay for reading
    finally:
        sb.stop_db(sb.Paths(root))
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ temporary errors

# qmail's error_temp() (error_temp.c), by name; EPROCLIM does not exist on Linux
QMAIL_ERROR_TEMP = ("EINTR ENOMEM ETXTBSY EIO ETIMEDOUT EWOULDBLOCK EAGAIN EDEADLK EBUSY "
                    "ENFILE EMFILE EFBIG ENOSPC ENETDOWN ENETUNREACH ENETRESET ECONNABORTED "
                    "ECONNRESET ENOBUFS ETOOMANYREFS ECONNREFUSED EHOSTDOWN EHOSTUNREACH "
                    "EUSERS EDQUOT ESTALE ENOLCK").split()


def test_temporary_errnos_are_qmails_error_temp():
    import errno
    assert resolve.TEMP_ERRNOS == frozenset(getattr(errno, n) for n in QMAIL_ERROR_TEMP)
    for name in ("EBUSY", "EDQUOT", "ENOSPC", "ENOLCK", "EDEADLK", "ECONNABORTED"):
        assert resolve.is_temporary(getattr(errno, name)), name
    for name in ("ENOENT", "ENOTDIR", "ELOOP", "ENAMETOOLONG", "EREMOTE", "ENOLINK"):
        assert not resolve.is_temporary(getattr(errno, name)), name


@pytest.mark.parametrize("name", QMAIL_ERROR_TEMP)
def test_every_temporary_stat_error_defers(db, homes, monkeypatch, name):
    """stat() of a candidate's home failing with any of qmail's temporary errors defers
    the mail (QLX_NFS, as stock qmail-getpw), never sends it to the alias user."""
    import errno
    add_mailbox(db, "iain", homes / "iain", make_home=True)
    add_mailbox(db, "alias", homes / "alias", make_home=True)
    real_stat = os.stat
    code = getattr(errno, name)

    def failing_stat(path, *a, **kw):
        if os.fspath(path) == str(homes / "iain"):
            raise OSError(code, os.strerror(code), path)
        return real_stat(path, *a, **kw)
    monkeypatch.setattr(resolve.os, "stat", failing_stat)
    with pytest.raises(Refusal) as e:
        db.getpw(b"iain-x")
    assert e.value.code == resolve.EXIT_NFS, e.value.message
    assert os.strerror(code) in e.value.message


@pytest.mark.parametrize("name", ["EBUSY", "EDQUOT"])
def test_real_stat_error_of_a_home_defers(db, homes, name):
    """The real errno from the kernel's stat(), injected by strace into `qmailsql getpw`
    for the home's path only: deferred, not the alias user."""
    add_mailbox(db, "iain", homes / "iain", make_home=True)
    add_mailbox(db, "alias", homes / "alias", make_home=True)
    strace = shutil.which("strace")
    assert strace, "strace is needed (bash .ci/setup installs it)"
    calls = "stat,lstat,newfstatat,statx"
    r = subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", "-P", str(homes / "iain"),
                        "-e", "trace=" + calls, "-e", "inject=%s:error=%s" % (calls, name),
                        sys.executable, "-m", "qmailsql", "getpw", "iain-x"],
                       capture_output=True, timeout=60)
    assert r.returncode == resolve.EXIT_NFS, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == b""
    import errno
    assert os.strerror(getattr(errno, name)).encode() in r.stderr
    # and without the fault the same lookup is iain's
    assert getpw_cli("iain-x").stdout.split(b"\0")[:1] == [b"iain"]


@pytest.mark.parametrize("row", [("neg", -5, 5, "/home/neg"), ("neg", 5, -1, "/home/neg"),
                                 ("nul", 5, 5, "/home/a\0b"), ("", 5, 5, "/home/x")])
def test_unusable_mailbox_row_is_111_for_delivery_as_for_logins(row):
    # one rule (resolve.mailbox_row_fault) for delivery, logins and the doctor: a
    # negative uid/gid was refused by auth but handed to qmail-lspawn by getpw
    from qmailsql.core.resolve import account_from_row
    with pytest.raises(Refusal) as e:
        account_from_row(row)
    assert e.value.code == 111 and e.value.message.startswith("misconfigured mailbox row")
