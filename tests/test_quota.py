"""Maildir++ quotas (SPEC sections 5 and 7) end to end: limits in MariaDB, the daemon's
`localq` answer, the compiled qmail-local wrapper running as the mailbox's uid, and a
stand-in for stock qmail-local (bench/maildir_writer.c) that writes into the Maildir
as stock does (Return-Path and Delivered-To lines, tmp/, fsync, link into new/).

Every expectation about maildirsize is checked against a full recount of the Maildir
(quota.recount), and against the Maildir++ specification's own examples; Dovecot's
`quota = maildir` (doveadm quota get / recalc) reads and recounts the same numbers.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import add_alias, add_mailbox, add_virtual

from qmailsql.core import client, quota
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path

UID, GID = 800, 100
SENDER = "sender@example.net"
ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: a@example.net\nSubject: hello\n\n" + b"x" * 900 + b"\n"


def envelope_size(local, domain, sender=SENDER):
    """What stock qmail-local adds in front of the message in a Maildir file."""
    return len("Return-Path: <%s>\n" % sender) + len("Delivered-To: %s@%s\n" % (local, domain))


@pytest.fixture(scope="module")
def writer():
    d = Path(tempfile.mkdtemp(prefix="qsw", dir="/tmp"))
    os.chmod(d, 0o755)
    out = d / "qmail-local.orig"
    # static, like stock qmail-local, so it starts under softlimit -m 2000000 too
    r = subprocess.run(["cc", "-O2", "-static", "-o", str(out),
                        str(ROOT / "bench" / "maildir_writer.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    yield str(out)
    shutil.rmtree(d, ignore_errors=True)


class Mail:
    """Mailboxes with homes under a directory every uid can reach, and deliveries."""

    def __init__(self, q, root, writer):
        self.q = q
        self.root = str(root)
        self.socket = str(sb.Paths(root).daemon_socket)
        self.top = Path(tempfile.mkdtemp(prefix="qsq", dir="/tmp"))
        os.chmod(self.top, 0o755)
        self.log = self.top / "standin.log"
        self.log.touch()
        os.chown(self.log, UID, GID)
        self.homes = {}
        self.env = {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": self.socket,
                    "QMAILSQL_QMAIL_LOCAL": writer, "QMAILSQL_STANDIN_LOG": str(self.log)}
        self.local = str(helper_path("qmail-local"))
        os.chmod(root, 0o711)  # the socket must be reachable by the mailbox's uid
        q.directory.query("DELETE FROM domain_quota", write=True)

    def sql(self, statement, params=()):
        return self.q.directory.query(statement, params, write=True)

    def mailbox(self, name, size=None, count=None, folders=()):
        home = self.top / name
        for d in [""] + ["." + f for f in folders]:
            for sub in ("tmp", "new", "cur"):
                (home / "Maildir" / d / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", "%d:%d" % (UID, GID), str(home)], check=True)
        add_mailbox(self.q, name, home, uid=UID, gid=GID, quota_size=size, quota_count=count)
        self.flush()
        self.homes[name] = str(home)
        return home

    def flush(self):
        client.flush(self.socket)

    def put(self, home, name, data):
        """HOME/Maildir/NAME with DATA, owned by the mailbox's uid."""
        path = Path(home) / "Maildir" / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.chown(path, UID, GID)

    def deliver(self, user, message=MESSAGE, local=None, domain="example.org", dash="",
                ext="", sender=SENDER, uid=UID, prefix=()):
        home = self.homes[user]
        msg = self.top / ("msg.%d.%d" % (os.getpid(), threading.get_ident()))
        msg.write_bytes(message)
        with open(msg, "rb") as f:
            r = subprocess.run(list(prefix) + [self.local, "--", user, home, local or user, dash,
                                               ext, domain, sender, "./Maildir/"],
                               stdin=f, capture_output=True,
                               env=self.env, user=uid, group=GID, extra_groups=[],
                               timeout=120)
        msg.unlink()
        return r

    def standin_log(self):
        return self.log.read_text().splitlines() if self.log.exists() else []


def maildirsize(home):
    return (Path(home) / "Maildir" / "maildirsize").read_text()


def totals(home):
    """(quota line, bytes, count) as a Maildir++ reader sums maildirsize."""
    got = quota.read_maildirsize(str(Path(home) / "Maildir" / "maildirsize"))
    assert isinstance(got, tuple), got
    return got[0], got[1], got[2]


def messages(home, folder=""):
    d = Path(home) / "Maildir" / folder
    return sorted(p for sub in ("new", "cur") for p in (d / sub).iterdir())


def consistent(home):
    """maildirsize's sums equal a full recount of the Maildir."""
    line, nbytes, count = totals(home)
    assert (nbytes, count) == quota.recount(str(Path(home) / "Maildir")), maildirsize(home)
    return line, nbytes, count


@pytest.fixture
def mail(db, sandbox, writer, settings):
    m = Mail(db, sandbox, writer)
    yield m
    db.directory.query("DELETE FROM domain_quota", write=True)
    shutil.rmtree(m.top, ignore_errors=True)


# ------------------------------------------------------------------ pure functions

@pytest.mark.parametrize("text, value", [
    ("500M", 500 * 1024 ** 2), ("2G", 2 * 1024 ** 3), ("1048576", 1048576), ("10k", 10240),
    ("1.5G", 3 * 1024 ** 3 // 2), ("100MB", 100 * 1024 ** 2), ("none", None),
    ("unlimited", 0), ("0", 0)])
def test_parse_size(text, value):
    assert quota.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12X", "-5M", "1.5", "M", "1e9", "9" * 30])
def test_parse_size_refuses(text):
    with pytest.raises(quota.QuotaError):
        quota.parse_size(text)


def test_dovecot_rule_and_header_match_what_dovecot_writes():
    assert quota.dovecot_quota_rule(quota.Limits(500 * 1024 ** 2, 1000)) == \
        "*:storage=512000K:messages=1000"
    assert quota.dovecot_quota_rule(quota.Limits(1000000, 0)) == "*:storage=1000000B"
    assert quota.dovecot_quota_rule(quota.Limits(0, 50)) == "*:messages=50"
    assert quota.dovecot_quota_rule(quota.Limits()) is None
    assert quota.dovecot_userdb_fields(quota.Limits(0, 5)) == {
        "quota_rule": "*:messages=5", "quota_rule2": "Trash:ignore"}
    # Dovecot's maildirsize_write(): "NS" unless only a count, then ",NC"
    assert quota.header(1000000, 1000) == "1000000S,1000C"
    assert quota.header(0, 1000) == "1000C"
    assert quota.header(1000000, 0) == "1000000S"
    assert quota.parse_header("10000000S,1000C") == (10000000, 1000)


def test_combine_each_limit_on_its_own():
    dom = ("example.com", 2000, 20)
    assert quota.combine(None, None, dom) == quota.Limits(2000, 20, "@example.com")
    assert quota.combine(500, None, dom) == quota.Limits(500, 20, "mailbox+@example.com")
    assert quota.combine(0, None, dom) == quota.Limits(0, 20, "@example.com")
    assert quota.combine(None, None, None) == quota.Limits()


def test_spec_example_is_read_as_the_spec_says(tmp_path):
    """README.maildirquota: `10000000S,1000C` then `bytes count` lines, summed; Courier
    pads its lines with blanks."""
    f = tmp_path / "maildirsize"
    f.write_bytes(b"10000000S,1000C\n" + b"%12d %12d\n" % (4096, 2) + b"1200 1\n-1200 -1\n")
    line, nbytes, count, nlines, _ = quota.read_maildirsize(str(f))
    assert (line, nbytes, count, nlines) == ("10000000S,1000C", 4096, 2, 3)
    for bad in (b"1000S\n12 x\n", b"1000S\n-50 -1\n", b"1000S\n1\x000 1\n",
                b"1000S\n" + b"1 1\n" * 1300, b"1000S\n77 1", b"1000S"):
        f.write_bytes(bad)
        assert isinstance(quota.read_maildirsize(str(f)), str), bad


# ------------------------------------------------------------------ deliveries

def test_under_quota_delivered_and_counted(mail):
    home = mail.mailbox("alice", size=100 * 1024)
    for _ in range(3):
        r = mail.deliver("alice")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"did 1+0+0\n"  # the stand-in (stock) ran and reported
    files = messages(home)
    assert len(files) == 3
    each = len(MESSAGE) + envelope_size("alice", "example.org")
    assert all(f.stat().st_size == each for f in files)
    line, nbytes, count = consistent(home)
    assert (line, nbytes, count) == ("102400S", 3 * each, 3)
    # written by the mailbox's uid, as qmail-local runs
    assert (home / "Maildir" / "maildirsize").stat().st_uid == UID
    # the first delivery created it (recalculation), the others appended one line each
    assert maildirsize(home).splitlines()[1:] == ["0 0"] + ["%d 1" % each] * 3


def test_message_crossing_the_size_limit_bounces(mail):
    each = len(MESSAGE) + envelope_size("bob", "example.org")
    home = mail.mailbox("bob", size=int(2.3 * each))  # two fit
    assert mail.deliver("bob").returncode == 0
    assert mail.deliver("bob").returncode == 0
    before = totals(home)
    r = mail.deliver("bob")
    assert r.returncode == 100, r.stderr
    assert b"#5.2.2" in r.stderr and b"bob@example.org is full" in r.stderr
    assert r.stdout == b""          # the stock qmail-local never ran
    assert len(messages(home)) == 2 and totals(home) == before
    # over quota by a file of several lines: recounted (the spec) before refusing
    assert maildirsize(home) == "%dS\n%d 2\n" % (int(2.3 * each), 2 * each)
    assert mail.deliver("bob").returncode == 100  # and now believed without a recount
    consistent(home)
    # a small message still fits
    small = b"Subject: s\n\nok\n"
    assert mail.deliver("bob", message=small).returncode == 0
    assert len(messages(home)) == 3


def test_count_limit(mail):
    home = mail.mailbox("carol", count=2)
    assert [mail.deliver("carol").returncode for _ in range(3)] == [0, 0, 100]
    assert len(messages(home)) == 2
    assert consistent(home)[0] == "2C"


@pytest.fixture(scope="module")
def settings(sandbox):
    """set(LINES): control/sqlserver plus LINES, and a HUP to the daemon; waits until
    its localq answer shows them. The module runs with quota_warn_percent 0 (tests
    of small limits would otherwise get warnings); the original file afterwards."""
    paths = sb.Paths(sandbox)
    original = paths.sqlserver.read_bytes()

    def set_(extra=b"quota_warn_percent 0\n"):
        paths.sqlserver.write_bytes(original + extra)
        os.kill(int(paths.daemon_pid.read_text()), signal.SIGHUP)
        want = b" %d %s" % (int(extra.split(b"quota_warn_percent ")[1].split()[0])
                            if b"quota_warn_percent" in extra else 90,
                            b"defer" if b"quota_overflow defer" in extra else b"bounce")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = client.call(paths.daemon_socket, [b"localq", b"nobody", b"/", b"x",
                                                              b"", b"", b"example.org"])
            if status == 0 and body.split(b"\n")[0].endswith(want):
                return
            time.sleep(0.05)
        pytest.fail("qmailsqld did not take %r" % extra)
    set_()
    yield set_
    set_(b"")


@pytest.fixture
def warn_at_90(settings):
    settings(b"quota_warn_percent 90\n")
    yield
    settings()


def test_message_crossing_the_limit_defers_when_configured(mail, settings):
    settings(b"quota_overflow defer\nquota_warn_percent 0\n")
    home = mail.mailbox("dave", count=1)
    assert mail.deliver("dave").returncode == 0
    r = mail.deliver("dave")
    assert r.returncode == 111 and b"#4.2.2" in r.stderr, r.stderr
    assert len(messages(home)) == 1
    consistent(home)
    settings()


def test_domain_default(mail):
    add_virtual(mail.q, "erin", "", "erin", "example.com")
    add_virtual(mail.q, "frank", "", "frank", "example.com")
    home_e = mail.mailbox("erin")
    home_f = mail.mailbox("frank", count=5)
    out = run_cli(mail, "quota", "set", "@example.com", "--count", "1")
    assert out.returncode == 0 and "@example.com" in out.stdout
    assert [mail.deliver("erin").returncode for _ in range(2)] == [0, 100]
    assert [mail.deliver("frank").returncode for _ in range(2)] == [0, 0]  # its own 5
    # `--size none` on the mailbox: the domain's default again; unlimited: none at all
    assert run_cli(mail, "quota", "set", "frank", "--count", "none").returncode == 0
    assert mail.deliver("frank").returncode == 100
    assert run_cli(mail, "quota", "set", "erin", "--count", "unlimited").returncode == 0
    assert mail.deliver("erin").returncode == 0
    assert len(messages(home_e)) == 2 and len(messages(home_f)) == 2


def test_concurrent_deliveries_keep_maildirsize_consistent(mail):
    """40 deliveries at once into one Maildir whose maildirsize is about to reach the
    5120 bytes that force a recalculation: afterwards its sums equal a recount."""
    home = mail.mailbox("gina", size=10 * 1024 ** 2)
    mail.put(home, "maildirsize", "10485760S\n" + "0 0\n" * 1260)
    results = []

    def one(i):
        body = MESSAGE + b"y" * (i * 37)  # sizes differ, so a lost line shows
        results.append(mail.deliver("gina", message=body).returncode)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 40
    assert len(messages(home)) == 40
    line, nbytes, count = consistent(home)
    assert count == 40 and line == "10485760S"
    assert len(maildirsize(home)) < 5120  # it was recalculated on the way


def test_maildir_without_maildirsize(mail):
    """Mail delivered before the quota (stock names, no ,S=; Maildir++ folders; Trash)
    is counted by the first delivery's recalculation; Trash is not."""
    home = mail.mailbox("hank", size=10 ** 6, folders=("Lists", "Trash"))
    md = home / "Maildir"
    mail.put(home, "cur/1700000000.1.host:2,S", b"a" * 300)
    mail.put(home, "new/1700000001.2.host,S=5000", b"b" * 10)  # size from the name
    mail.put(home, ".Lists/cur/1700000002.3.host:2,", b"c" * 700)
    mail.put(home, ".Trash/cur/1700000003.4.host:2,ST", b"d" * 9999)
    assert not (md / "maildirsize").exists()
    r = mail.deliver("hank")
    assert r.returncode == 0, r.stderr
    each = len(MESSAGE) + envelope_size("hank", "example.org")
    line, nbytes, count = consistent(home)
    assert (line, nbytes, count) == ("1000000S", 300 + 5000 + 700 + each, 4)


@pytest.mark.parametrize("junk", [b"garbage\n\x00\x01", b"1000S\n-99999 -5\n",
                                  b"not a quota line", b"", b"1000S\n5 5\n" * 600])
def test_corrupt_maildirsize_is_recalculated_and_the_mail_kept(mail, junk):
    home = mail.mailbox("ivy", size=10 ** 6)
    md = home / "Maildir"
    mail.put(home, "cur/1700000000.1.host:2,S", b"a" * 1234)
    mail.put(home, "maildirsize", junk)
    r = mail.deliver("ivy")
    assert r.returncode == 0, r.stderr
    assert len(messages(home)) == 2
    each = len(MESSAGE) + envelope_size("ivy", "example.org")
    assert consistent(home) == ("1000000S", 1234 + each, 2)


@pytest.mark.parametrize("data", [
    "%12d %12d\n" % (100, 1),            # Courier's padding
    "100 1\n\t-40\t-1 \n40 1\n",         # tabs and trailing blanks
    "100 1\n7 1",                        # no newline at the end: an append would merge
    "100 1\n\n",                         # an empty line
    "+100 1\n", "100 1 2\n", "100\n", "100 1\r\n", "1%s 1\n" % ("0" * 18),
    "100 1\n" * 800,                      # 5120 bytes or more
])
def test_wrapper_and_report_read_maildirsize_alike(mail, data):
    """For each file, what the wrapper does (append to it, or recalculate it) is what
    quota.read_maildirsize (the reports' reader) says of it."""
    home = mail.mailbox("abe", size=10 ** 9)
    text = "1000000000S\n" + data
    mail.put(home, "maildirsize", text)
    usable = isinstance(quota.read_maildirsize(str(home / "Maildir" / "maildirsize")), tuple)
    assert mail.deliver("abe").returncode == 0
    each = len(MESSAGE) + envelope_size("abe", "example.org")
    if usable:
        assert maildirsize(home) == text + "%d 1\n" % each
    else:
        assert maildirsize(home) == "1000000000S\n0 0\n%d 1\n" % each


def test_quota_line_changed_recalculates(mail):
    home = mail.mailbox("jack", count=10)
    mail.put(home, "maildirsize", "5S\n999999 99\n")  # an old limit
    assert mail.deliver("jack").returncode == 0
    assert consistent(home)[0] == "10C"


def test_stale_over_quota_verdict_is_rechecked(mail):
    """Over quota by maildirsize but the mail is gone (a client without Maildir++ support
    removed it): the delivery recounts instead of bouncing."""
    home = mail.mailbox("kim", count=3)
    mail.put(home, "maildirsize", "3C\n0 0\n500 3\n")
    assert mail.deliver("kim").returncode == 0
    assert consistent(home) == ("3C", len(MESSAGE) + envelope_size("kim", "example.org"), 1)


def test_courier_style_file_is_appended_to_not_rewritten(mail):
    home = mail.mailbox("lea", size=10 ** 6)
    md = home / "Maildir"
    mail.put(home, "cur/1700000000.1.host,S=4321:2,S", b"z")
    text = "1000000S\n%12d %12d\n" % (4321, 1)
    mail.put(home, "maildirsize", text)
    assert mail.deliver("lea").returncode == 0
    each = len(MESSAGE) + envelope_size("lea", "example.org")
    assert maildirsize(home) == text + "%d 1\n" % each
    assert consistent(home)[1:] == (4321 + each, 2)


def test_warning_sent_once_until_below_again(mail, warn_at_90):
    each = len(MESSAGE) + envelope_size("mia", "example.org")
    home = mail.mailbox("mia", size=20 * each)  # warning at 90%: the 18th message
    md = home / "Maildir"

    def warnings():
        return [p for p in messages(home) if b"Subject: Your mailbox is" in p.read_bytes()]
    for i in range(17):
        assert mail.deliver("mia").returncode == 0
    assert warnings() == [] and not (md / "quotawarn").exists()
    assert mail.deliver("mia").returncode == 0
    sent = warnings()
    assert len(sent) == 1 and (md / "quotawarn").exists()
    text = sent[0].read_bytes()
    assert b"To: mia@example.org" in text and b"90% full" in text
    assert mail.deliver("mia", message=b"Subject: tiny\n\nx\n").returncode == 0
    assert len(warnings()) == 1          # still above: no second warning
    consistent(home)                     # the warning is counted like any message
    # the user deletes mail (as Dovecot does: remove the files, append the change)
    gone = [p for p in messages(home) if p not in sent][:10]
    freed = sum(p.stat().st_size for p in gone)
    for p in gone:
        p.unlink()
    with open(md / "maildirsize", "a") as f:
        f.write("-%d -%d\n" % (freed, len(gone)))
    assert mail.deliver("mia", message=b"Subject: tiny\n\nx\n").returncode == 0
    assert not (md / "quotawarn").exists()   # below again: armed
    while not (md / "quotawarn").exists():
        assert mail.deliver("mia").returncode == 0
    assert len(warnings()) == 2
    consistent(home)


def test_forward_and_program_rows_are_not_counted(mail):
    home = mail.mailbox("ned", count=1)
    add_alias(mail.q, "ned", "", "other", "example.net")
    add_alias(mail.q, "ned", "", "|", "cat >/dev/null")
    mail.flush()
    for _ in range(3):  # far more than its limit of one message
        r = mail.deliver("ned")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"did 0+1+1\n"
    assert mail.standin_log() == ["forward other@example.net"] * 3
    assert not (home / "Maildir" / "maildirsize").exists() and messages(home) == []


def test_rows_into_folders_count_trash_does_not(mail):
    home = mail.mailbox("olga", count=3, folders=("Lists", "Trash"))
    add_alias(mail.q, "olga", "", ".", "/Maildir/.Lists/")
    add_alias(mail.q, "olga", "", ".", "/Maildir/.Trash/")
    add_alias(mail.q, "olga", "", "fwd", "example.net")
    mail.flush()
    assert [mail.deliver("olga").returncode for _ in range(4)] == [0, 0, 0, 100]
    assert len(messages(home, ".Lists")) == 3 and len(messages(home, ".Trash")) == 3
    assert consistent(home)[2] == 3


def test_dot_qmail_file_lines_are_counted(mail):
    home = mail.mailbox("pia", count=4)
    (home / ".qmail").write_text("./Maildir/\n&copy@example.net\n./Maildir/\n")
    assert [mail.deliver("pia").returncode for _ in range(3)] == [0, 0, 100]
    assert len(messages(home)) == 4
    assert consistent(home)[2] == 4


def test_quota_path_under_softlimit(mail):
    """qmail's helpers run under `softlimit -m 2000000` (SPEC 8), the quota path too:
    recalculation, check, child, record, warning."""
    softlimit = shutil.which("softlimit") or "/usr/bin/softlimit"
    home = mail.mailbox("una", count=3, folders=("Lists",))
    mail.put(home, ".Lists/cur/1700000000.1.host:2,S", b"l" * 100)
    limit = (softlimit, "-m", "2000000")
    assert [mail.deliver("una", prefix=limit).returncode for _ in range(3)] == [0, 0, 100]
    assert consistent(home)[2] == 3


def test_sender_quoted_as_stock_does(mail):
    """The recorded size includes Return-Path as stock qmail-local writes it, with the
    local part quoted where RFC 821 needs it."""
    home = mail.mailbox("vera", size=10 ** 6)
    for sender in ("", "#@[]", "a b@example.net", 'q"uote@x', "x..y@z", "@nohost"):
        assert mail.deliver("vera", sender=sender).returncode == 0
    consistent(home)


def test_no_quota_leaves_the_maildir_alone(mail):
    home = mail.mailbox("quinn")
    for _ in range(2):
        assert mail.deliver("quinn").returncode == 0
    assert len(messages(home)) == 2
    assert not (home / "Maildir" / "maildirsize").exists()
    assert not (home / "Maildir" / ".qmailsql.lock").exists()


def test_stock_failure_is_passed_through_and_not_recorded(mail):
    home = mail.mailbox("rob", size=10 ** 6)
    (home / "Maildir" / "new").chmod(0o500)  # stock cannot link into new/: 111
    r = mail.deliver("rob")
    assert r.returncode == 111 and r.stdout == b"", r.stderr
    assert messages(home) == [] and maildirsize(home) == "1000000S\n0 0\n"
    (home / "Maildir" / "new").chmod(0o700)
    # a later line bounces (stock's exit 100, passed on); the copy already in the
    # Maildir is stock's doing, found by the next recalculation, not recorded
    add_alias(mail.q, "rob", "", ".", "/Maildir/")
    add_alias(mail.q, "rob", "", "|", "exit 100")
    mail.flush()
    assert mail.deliver("rob").returncode == 100
    assert maildirsize(home) == "1000000S\n0 0\n" and len(messages(home)) == 1


class FakeDaemon:
    """A qmailsqld stand-in on a socket the mailbox's uid reaches, answering each request
    with ANSWER(command) -> (status, body); ASKED: the commands, in order."""

    def __init__(self, mail, answer, requests):
        import socket as socketmod
        self.path = str(mail.top / "fake.sock")
        self.srv = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        self.srv.bind(self.path)
        os.chmod(self.path, 0o666)
        self.srv.listen(4)
        self.asked = []
        self.thread = threading.Thread(target=self.serve, args=(answer, requests))
        self.thread.start()
        mail.env["QMAILSQL_SOCKET"] = self.path

    def serve(self, answer, requests):
        from qmailsql.core.hotpath import decode_frame, encode_response
        for _ in range(requests):
            c, _ = self.srv.accept()
            buf = b""
            while True:
                buf += c.recv(65536)
                payload, _ = decode_frame(buf, 65536)
                if payload is not None:
                    break
            cmd = payload.split(b"\0")[0]
            self.asked.append(cmd)
            c.sendall(encode_response(*answer(cmd)))
            c.close()

    def close(self):
        self.thread.join(10)
        self.srv.close()


def test_old_daemon_without_localq(mail):
    """A qmailsqld older than the wrapper answers `unknown command`: the wrapper asks
    `local` and delivers without quotas."""
    home = mail.mailbox("sam", count=1)
    fake = FakeDaemon(mail, lambda cmd: (100, b"unknown command localq") if cmd == b"localq"
                      else (0, b""), 2)
    r = mail.deliver("sam")
    fake.close()
    assert r.returncode == 0, r.stderr
    assert fake.asked == [b"localq", b"local"]
    assert len(messages(home)) == 1 and not (home / "Maildir" / "maildirsize").exists()


def test_rows_found_by_local_confirm_go_through_the_quota(mail):
    """No rows for an address with an extension and no dot-qmail file: the wrapper asks
    again with local-confirm (a replica may lag); the rows that answer are delivered
    under the quota of the first (localq) answer."""
    each = len(MESSAGE) + envelope_size("tom-x", "example.org")
    limit = int(1.5 * each)  # one fits
    home = mail.mailbox("tom", size=limit)
    answers = {b"localq": (0, b"%d 0 0 bounce\n" % limit), b"local-confirm": (0, b"./Maildir/\n")}
    fake = FakeDaemon(mail, answers.get, 4)
    r = [mail.deliver("tom", local="tom-x", dash="-", ext="x") for _ in range(2)]
    fake.close()
    assert r[0].returncode == 0, r[0].stderr
    assert r[1].returncode == 100 and b"#5.2.2" in r[1].stderr, r[1].stderr
    assert fake.asked == [b"localq", b"local-confirm"] * 2
    assert len(messages(home)) == 1
    assert consistent(home) == ("%dS" % limit, each, 1)


# ------------------------------------------------------------------ admin

def run_cli(mail, *args):
    return subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", mail.root]
                          + list(args),
                          capture_output=True, text=True, timeout=60)


def test_quota_command_reports_largest_first(mail):
    add_virtual(mail.q, "tom", "", "tom", "example.com")
    add_virtual(mail.q, "uma", "", "uma", "example.com")
    home_t = mail.mailbox("tom", size=10 ** 6)
    home_u = mail.mailbox("uma")
    assert run_cli(mail, "quota", "set", "@example.com", "--size", "2M").returncode == 0
    mail.deliver("tom")
    for _ in range(3):
        mail.deliver("uma")
    out = run_cli(mail, "quota", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    rows = {r["user"]: r for r in got["mailboxes"]}
    assert [r["user"] for r in got["mailboxes"]] == ["uma", "tom"]
    assert (rows["uma"]["bytes"], rows["uma"]["messages"]) == quota.recount(
        str(home_u / "Maildir"))
    assert rows["uma"]["size_limit"] == 2 * 1024 ** 2 and rows["uma"]["limit_from"] == \
        "@example.com"
    assert rows["tom"]["size_limit"] == 10 ** 6 and rows["tom"]["limit_from"] == "mailbox"
    assert rows["tom"]["source"] == "maildirsize"
    dom = {d["domain"]: d for d in got["domains"]}["example.com"]
    assert dom["mailboxes"] == 2 and dom["messages"] == 4
    assert dom["bytes"] == rows["tom"]["bytes"] + rows["uma"]["bytes"]
    text = run_cli(mail, "quota", "tom")
    assert text.returncode == 0 and "tom" in text.stdout and "uma" not in text.stdout
    assert "maildirsize" in text.stdout
    del home_t


def test_mailbox_replace_keeps_the_quota(mail):
    from qmailsql.admin import tables as admin
    mail.mailbox("zoe", size=5000, count=7)
    admin.add_mailbox(mail.q.directory, "zoe", UID, GID, "/elsewhere", replace=True)
    assert mail.sql("SELECT home, quota_size, quota_count FROM mailbox WHERE username='zoe'") \
        == (("/elsewhere", 5000, 7),)


def test_getpw_explain_tells_the_quota(mail):
    mail.mailbox("cleo", size=500 * 1024 ** 2)
    r = run_cli(mail, "getpw", "--explain", "cleo")
    assert r.returncode == 0, r.stderr
    assert "qmail-local: quota 500M, no limit on messages (from mailbox); over it, mail is " \
        "bounced (#5.2.2)" in r.stdout


def test_quota_command_errors(mail):
    r = run_cli(mail, "quota", "set", "nobody-here", "--size", "1M")
    assert r.returncode == 100 and "no mailbox 'nobody-here'" in r.stderr
    r = run_cli(mail, "quota", "set", "x", "--size", "12Q")
    assert r.returncode == 100 and "K, M, G" in r.stderr
    r = run_cli(mail, "quota", "set", "x")
    assert r.returncode == 100 and "--size and/or --count" in r.stderr
    r = run_cli(mail, "quota", "--help")
    assert r.returncode == 0 and "quota set USER" in r.stdout


def test_doctor_reports_over_quota_and_unreadable_maildirsize(mail):
    from qmailsql.admin import doctor
    home_v = mail.mailbox("vic", count=5)
    home_w = mail.mailbox("wes", size=10 ** 6)
    for _ in range(2):  # over quota behind the wrapper's back (as the admin lowered it)
        mail.deliver("vic")
    mail.sql("UPDATE mailbox SET quota_count=1 WHERE username='vic'")
    mail.put(home_v, "new/1700000000.9.host", b"m")
    (home_w / "Maildir" / "maildirsize").mkdir()  # read() fails: EISDIR
    report = doctor.run(mail.root)
    over = report.by_check("quota-over")
    assert [f.what.split("'")[1] for f in over] == ["vic"] and "bounced" in over[0].what
    bad = report.by_check("quota-maildirsize-unreadable")
    assert len(bad) == 1 and "wes" in bad[0].what and "Is a directory" in bad[0].what
    # the wrapper defers (never bounces, never loses) while it cannot read it
    r = mail.deliver("wes")
    assert r.returncode == 111 and b"maildirsize" in r.stderr
    # one that root made (root can read it, the mailbox's uid cannot)
    (home_w / "Maildir" / "maildirsize").rmdir()
    (home_w / "Maildir" / "maildirsize").write_text("1000000S\n0 0\n")
    os.chmod(home_w / "Maildir" / "maildirsize", 0o600)
    assert mail.deliver("wes").returncode == 111
    bad = doctor.run(mail.root).by_check("quota-maildirsize-unreadable")
    assert len(bad) == 1 and "belongs to uid 0, not the mailbox's uid %d" % UID in bad[0].what
    assert bad[0].fix.startswith("rm -r %s/Maildir/maildirsize" % home_w)


def test_unmigrated_schema_means_no_quota_and_migrate_adds_it(mail):
    home = mail.mailbox("xena", count=1)
    mail.sql("ALTER TABLE mailbox DROP COLUMN quota_size, DROP COLUMN quota_count")
    mail.sql("DROP TABLE domain_quota")
    try:
        mail.flush()
        assert [mail.deliver("xena").returncode for _ in range(2)] == [0, 0]
        from qmailsql.admin import doctor
        report = doctor.run(mail.root)
        assert [f.fix for f in report.by_check("schema-quota")] == ["qmailsql migrate"]
    finally:
        r = run_cli(mail, "migrate")
    assert r.returncode == 0, r.stderr
    assert "added mailbox.quota_size" in r.stdout and "created table domain_quota" in r.stdout
    mail.sql("UPDATE mailbox SET quota_count=1 WHERE username='xena'")
    mail.flush()
    assert mail.deliver("xena").returncode == 100
    assert len(messages(home)) == 2


# ------------------------------------------------------------------ Dovecot

DOVECOT_CONF = """\
base_dir = {top}/run
state_dir = {top}/state
instance_name = qmailsql-quota-{pid}
log_path = {top}/dovecot.log
protocols =
ssl = no
mail_location = maildir:~/Maildir
mail_plugins = quota
first_valid_uid = {uid}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home} {fields}
}}
plugin {{
  quota = maildir:User quota
}}
"""


def test_dovecot_reads_and_recounts_the_same_numbers(mail):
    dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
    assert os.access(dovecot, os.X_OK), "apt-get install dovecot-core (bash .ci/setup does)"
    home = mail.mailbox("yara", size=40 * 1024, count=4, folders=("Lists", "Trash"))
    md = home / "Maildir"
    mail.put(home, ".Lists/cur/1700000000.1.host:2,S", b"l" * 2000)
    mail.put(home, ".Trash/cur/1700000001.2.host:2,ST", b"t" * 5000)
    subprocess.run(["chown", "-R", "%d:%d" % (UID, GID), str(md)], check=True)
    for _ in range(3):
        assert mail.deliver("yara").returncode == 0
    limits = quota.Limits(40 * 1024, 4)
    fields = " ".join("%s=%s" % kv for kv in quota.dovecot_userdb_fields(limits).items())
    top = Path(tempfile.mkdtemp(prefix="qsdq", dir="/tmp"))
    conf = top / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(top=top, pid=os.getpid(), uid=UID, gid=GID,
                                        home=home, fields=fields))
    subprocess.run([dovecot, "-c", str(conf)], check=True)

    def doveadm(command, *query):
        r = subprocess.run(["doveadm", "-c", str(conf)] + command.split() + ["-u", "yara"]
                           + list(query), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr + (top / "dovecot.log").read_text()
        return r.stdout
    try:
        ours = consistent(home)
        assert ours == ("40960S,4C", 2000 + 3 * (len(MESSAGE) + envelope_size(
            "yara", "example.org")), 4)
        rows = [line.split() for line in doveadm("quota get").splitlines()[1:]]
        got = {r[2]: (int(r[3]), int(r[4])) for r in rows}  # STORAGE in KiB; MESSAGE
        assert got == {"STORAGE": (-(-ours[1] // 1024), 40), "MESSAGE": (4, 4)}  # KiB up
        doveadm("quota recalc")              # Dovecot's own recount, written back
        assert totals(home) == ours          # the same quota line and the same numbers
        assert mail.deliver("yara").returncode == 100   # 4 of 4 messages: full
        # an IMAP expunge: Dovecot appends the change, and the wrapper sees the room
        doveadm("expunge", "mailbox", "Lists", "all")
        assert maildirsize(home).splitlines()[-1] == "-2000 -1"
        assert mail.deliver("yara").returncode == 0
        assert consistent(home)[2] == 4
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
