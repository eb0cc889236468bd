"""Who may read mail (SPEC section 6): qmailsql.core.auth against a real MariaDB, the
failed-login limiter, opt-in rehash, `qmailsql passwd`, and the compiled
checkpassword end to end against the real qmailsqld."""
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BuggyDirectory, add_mailbox, add_virtual, unreachable

import qmailsql
from qmailsql.core import _crypt, auth, passwords
from qmailsql.sandbox import host as sb
from qmailsql.core.auth import Limiter, LoginRefused
from qmailsql.core.db import DirectoryUnavailable
from qmailsql.core.hotpath import encode_frame
from qmailsql.core.resolve import Refusal

UID, GID = 5000, 5000
PW = b"s3cret pw"


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def limiter():
    """A private limiter per test (the module's LIMITER belongs to the daemon)."""
    return Limiter(clock=Clock())


@pytest.fixture
def logs():
    return []


def row(q, name):
    rows = q.directory.query("SELECT password_type, password FROM mailbox WHERE username=%s",
                             (name,), write=True)
    return rows[0]


def login(q, who, password, limiter, ip="", logs=None, config=None, directory=None,
          service=""):
    return auth.authenticate(directory or q.directory, config or q.config, who, password, ip,
                             log=(logs.append if logs is not None else None), limiter=limiter,
                             service=service)


def refused(q, who, password, limiter, **kw):
    with pytest.raises(LoginRefused) as exc:
        login(q, who, password, limiter, **kw)
    assert exc.value.code == 1
    return exc.value.reason


# ---------------------------------------------------------------- every scheme

def _crypt_hash(setting_prefix):
    return _crypt.crypt(PW, _crypt.gensalt(setting_prefix)).decode("ascii")


SCHEME_ROWS = {
    "plain": lambda: ("Password", PW.decode()),
    "sha512-crypt": lambda: ("Crypt-Password", _crypt_hash(b"$6$")),
    "bcrypt": lambda: ("Crypt-Password", _crypt_hash(b"$2b$")),
    "yescrypt": lambda: ("Crypt-Password", _crypt_hash(b"$y$")),
    "des": lambda: ("Crypt-Password", _crypt.crypt(PW, b"ab").decode("ascii")),
    "md5-crypt": lambda: ("Crypt-Password", _crypt_hash(b"$1$")),
    "mysql-old": lambda: ("MySQL-Password", passwords.mysql_old_password(PW)),
    "mysql41": lambda: ("MySQL-Password", passwords.mysql41_password(PW)),
}


@pytest.mark.parametrize("scheme", sorted(SCHEME_ROWS))
def test_every_scheme_right_and_wrong(db, limiter, logs, scheme):
    ptype, stored = SCHEME_ROWS[scheme]()
    if scheme == "des":
        assert len(stored) == 13
    elif scheme == "mysql-old":
        assert len(stored) == 16
    elif scheme == "mysql41":
        assert stored.startswith("*") and len(stored) == 41
    elif ptype == "Crypt-Password":
        assert stored.startswith({"sha512-crypt": "$6$", "bcrypt": "$2b$", "yescrypt": "$y$",
                                  "md5-crypt": "$1$"}[scheme])
    add_mailbox(db, "alice", password=stored, ptype=ptype, uid=UID, gid=GID)
    assert login(db, b"alice", PW, limiter) == ("alice", UID, GID, "/home/mail/alice", "")
    reason = refused(db, b"alice", b"X" + PW, limiter, logs=logs)
    assert reason.startswith("wrong password for 'alice'")
    assert logs == []  # a well-formed stored value: nothing to complain about
    assert "wrong password" in refused(db, b"alice", b"", limiter)


def test_login_compares_case_not_padding(db, limiter):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    assert login(db, b"ALICE", b"pw", limiter)[0] == "alice"
    # the collation would call these equal to 'alice'; qmail would not
    assert refused(db, b"alice ", b"pw", limiter).startswith("unknown login")
    assert refused(db, "\u00e1lice".encode(), b"pw", limiter).startswith("unknown login")


def test_plain_password_is_case_sensitive(db, limiter):
    add_mailbox(db, "alice", password="Secret", uid=UID, gid=GID)
    assert "wrong password" in refused(db, b"alice", b"secret", limiter)
    assert "wrong password" in refused(db, b"alice", b"Secret ", limiter)


# ---------------------------------------------------------------- refusals

def test_suspended_empty_uid0_unknown(db, limiter):
    add_mailbox(db, "sus", password="pw", uid=UID, gid=GID, suspended="Y")
    add_mailbox(db, "empty", password="", uid=UID, gid=GID)
    add_mailbox(db, "root2", password="pw", gid=GID, uid=0)
    assert "suspended" in refused(db, b"sus", b"pw", limiter)
    assert "empty stored password" in refused(db, b"empty", b"", limiter)
    assert "empty stored password" in refused(db, b"empty", b"anything", limiter)
    assert "uid 0" in refused(db, b"root2", b"pw", limiter)
    assert refused(db, b"nobody", b"pw", limiter) == "unknown login 'nobody'"
    assert "empty login" in refused(db, b"", b"pw", limiter)
    assert "not valid UTF-8" in refused(db, b"\xff\xfe", b"pw", limiter)


def test_service_bars(db, limiter):
    """A mailbox barred from pop3 logs in for imap and smtp, not pop3; Dovecot's
    `submission` is SMTP AUTH; an unnamed or unknown service is refused for a mailbox
    barred from anything, and allowed for one barred from nothing."""
    add_mailbox(db, "nopop", password="pw", uid=UID, gid=GID, deny="pop3")
    add_mailbox(db, "nosmtp", password="pw", uid=UID, gid=GID, deny="smtp")
    add_mailbox(db, "free", password="pw", uid=UID, gid=GID)
    assert login(db, b"nopop", b"pw", limiter, service="imap")[0] == "nopop"
    assert login(db, b"nopop", b"pw", limiter, service="SMTP")[0] == "nopop"
    assert "barred from pop3" in refused(db, b"nopop", b"pw", limiter, service="pop3")
    assert "barred from smtp" in refused(db, b"nosmtp", b"pw", limiter, service="submission")
    for service in ("", "sieve"):
        assert "unnamed service" in refused(db, b"nopop", b"pw", limiter, service=service)
        assert login(db, b"free", b"pw", limiter, service=service)[0] == "free"
    # the bar is checked after the password, like suspension: a wrong password is
    # refused the same way (status 1) and counts for the limiter
    assert refused(db, b"nopop", b"bad", limiter, service="pop3")
    assert limiter.blocked("nopop") is None and len(limiter._records) >= 1


def test_service_bars_through_virtual_login(db, limiter):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID, deny="imap,pop3")
    add_virtual(db, "alice", "", "al", "example.com")
    assert login(db, b"al@example.com", b"pw", limiter, service="smtp")[0] == "alice"
    assert "barred from imap" in refused(db, b"al@example.com", b"pw", limiter,
                                         service="imap")


def test_every_refusal_spends_one_verification(db, limiter, monkeypatch):
    """The constant-time property, structurally: each refusal pays for one hash of real
    cost: the row's own when it holds one, else the dummy (also after a cheap scheme's
    check, so a plain-text row refuses as slowly as an unknown login)."""
    calls = []
    real_verify = passwords.verify

    def verify(ptype, stored, given):
        calls.append("verify")
        return real_verify(ptype, stored, given)

    monkeypatch.setattr(passwords, "verify", verify)
    monkeypatch.setattr(passwords, "dummy_verify", lambda *a, **k: calls.append("dummy"))
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    add_mailbox(db, "sus", password="pw", uid=UID, gid=GID, suspended="Y")
    add_mailbox(db, "empty", password="", uid=UID, gid=GID)
    add_mailbox(db, "zero", password="pw", gid=GID, uid=0)
    add_mailbox(db, "strong", password=_crypt_hash(b"$6$"), ptype="Crypt-Password", uid=UID,
                gid=GID)
    add_mailbox(db, "nopop", password="pw", uid=UID, gid=GID, deny="pop3")
    cases = [(b"alice", ["verify", "dummy"]), (b"sus", ["verify", "dummy"]),
             (b"nopop", ["verify", "dummy"]),
             (b"zero", ["verify", "dummy"]), (b"strong", ["verify"]),
             (b"empty", ["dummy"]), (b"nobody", ["dummy"]), (b"x@nowhere.test", ["dummy"]),
             (b"\xff", ["dummy"]), (b"", ["dummy"])]
    for who, expected in cases:
        calls.clear()
        refused(db, who, b"wrong", Limiter(clock=Clock()))
        assert calls == expected, who


def test_malformed_stored_password_refused_and_logged(db, limiter, logs):
    full = _crypt_hash(b"$6$")
    add_mailbox(db, "trunc", password=full[:40], ptype="Crypt-Password", uid=UID, gid=GID)
    add_mailbox(db, "oldmy", password="*" + passwords.mysql41_password(PW)[1:20],
                ptype="MySQL-Password", uid=UID, gid=GID)
    reason = refused(db, b"trunc", PW, limiter, logs=logs)
    assert "unusable stored password for 'trunc'" in reason
    assert "truncated" in reason
    assert any("trunc" in line and "truncated" in line for line in logs)
    logs.clear()
    reason = refused(db, b"oldmy", PW, limiter, logs=logs)
    assert "MySQL-Password looks truncated" in reason
    assert len(logs) == 1
    # a well-formed row refused for a wrong password logs nothing about its shape
    add_mailbox(db, "good", password=full, ptype="Crypt-Password", uid=UID, gid=GID)
    logs.clear()
    assert "wrong password" in refused(db, b"good", b"nope", limiter, logs=logs)
    assert logs == []


def test_misconfigured_row_is_trouble_only_with_the_right_password(db, limiter):
    add_mailbox(db, "rel", password="pw", uid=UID, gid=GID, home="relative/home")
    assert "wrong password" in refused(db, b"rel", b"nope", limiter)
    with pytest.raises(Refusal) as exc:
        login(db, b"rel", b"pw", limiter)
    assert exc.value.code == 111 and not isinstance(exc.value, LoginRefused)
    assert "absolute home" in exc.value.message


# ---------------------------------------------------------------- virtual logins

def test_virtual_login(db, limiter):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    add_virtual(db, "alice", "", "al", "example.com")
    assert login(db, b"al@example.com", b"pw", limiter)[0] == "alice"
    assert login(db, b"Al@EXAMPLE.com", b"pw", limiter)[0] == "alice"
    assert "wrong password for 'alice' (via virtual: alice)" in refused(
        db, b"al@example.com", b"nope", limiter)
    assert refused(db, b"bob@example.com", b"pw", limiter).startswith("unknown login")
    assert refused(db, b"al@example.org", b"pw", limiter).startswith("unknown login")


def test_virtual_catch_all_grants_no_login(db, limiter):
    add_mailbox(db, "catchall", password="pw", uid=UID, gid=GID)
    add_virtual(db, "catchall", "", "", "example.com")
    add_virtual(db, "catchall", "", "%", "example.com")
    cfg = dataclasses.replace(db.config, funky_queries=True)
    for who in (b"anyone@example.com", b"@example.com"):
        assert refused(db, who, b"pw", limiter, config=cfg).startswith("unknown login")


def test_virtual_ext_reads_the_mailbox_mail_goes_to(db, limiter):
    add_mailbox(db, "iain", password="iainpw", uid=UID, gid=GID)
    add_virtual(db, "iain", "sales", "sales", "example.com")
    assert login(db, b"sales@example.com", b"iainpw", limiter)[0] == "iain"
    add_mailbox(db, "iain-sales", password="salespw", uid=UID, gid=GID)
    assert login(db, b"sales@example.com", b"salespw", limiter)[0] == "iain-sales"
    assert "wrong password" in refused(db, b"sales@example.com", b"iainpw", limiter)


def test_magic_forward_is_not_a_mailbox(db, limiter):
    add_mailbox(db, "forward", password="pw", uid=UID, gid=GID)
    add_virtual(db, "forward", "elsewhere@example.org", "user", "example.com")
    cfg = dataclasses.replace(db.config, magic_forwarding=True)
    assert "magic forward" in refused(db, b"user@example.com", b"pw", limiter, config=cfg)
    # without magic_forwarding `forward` is an ordinary user
    cfg = dataclasses.replace(db.config, magic_forwarding=False)
    assert login(db, b"user@example.com", b"pw", limiter, config=cfg)[0] == "forward"


def test_mailbox_literally_named_like_an_address(db, limiter):
    add_mailbox(db, "bob@example.net", password="pw", uid=UID, gid=GID)
    assert login(db, b"bob@example.net", b"pw", limiter)[0] == "bob@example.net"


def test_hostile_logins_are_plain_refusals(db, limiter):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    for who in (b"' OR '1'='1", b"alice'--", b"al%", b"al_ce", b"a\\lice",
                b"%@%", b"x" * 1000, b"a@b@example.com"):
        assert refused(db, who, b"pw", Limiter(clock=Clock())).startswith("unknown login"), who
    assert "longer than" in refused(db, b"x" * 5000, b"pw", limiter)
    assert "longer than" in refused(db, b"alice", b"p" * 5000, limiter)


# ---------------------------------------------------------------- response payloads

def test_response_payloads(db, logs):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID, home="/home/mail/alice")
    lim = Limiter(clock=Clock())
    ok = auth.response(db.directory, db.config, b"alice", b"pw", b"192.0.2.7", log=logs.append,
                       limiter=lim)
    assert ok == (0, b"alice\x005000\x005000\x00/home/mail/alice\x00\x00")
    bad = auth.response(db.directory, db.config, b"alice", b"pw2", b"192.0.2.7",
                        log=logs.append, limiter=lim)
    assert bad == (1, b"wrong password for 'alice'")
    assert logs == ["auth ok 'alice' from 192.0.2.7: user 'alice' uid 5000",
                    "auth refused 'alice' from 192.0.2.7: wrong password for 'alice'"]
    assert not any("pw2" in line for line in logs)
    logs.clear()
    ok = auth.response(db.directory, db.config, b"alice", b"pw", b"", log=logs.append,
                       limiter=lim, service=b"imap")
    assert ok[0] == 0 and ok[1].startswith(b"alice\x00") and logs == ["auth ok 'alice' (imap): user 'alice' "
                                                         "uid 5000"]


def test_response_never_raises(db, logs):
    class Broken:
        log = None

        def query(self, *a, **k):
            raise RuntimeError("boom")
    out = auth.response(Broken(), db.config, b"alice", b"pw", b"", log=logs.append,
                        limiter=Limiter(clock=Clock()))
    assert out[0] == 111
    assert "boom" in logs[0]


def test_db_trouble_is_111_not_wrong_password(db, logs):
    class Down:
        log = None

        def query(self, *a, **k):
            raise DirectoryUnavailable("no DB server answered (test)")
    with pytest.raises(Refusal) as exc:
        auth.authenticate(Down(), db.config, b"alice", b"pw", "", limiter=Limiter())
    assert exc.value.code == 111 and not isinstance(exc.value, LoginRefused)
    out = auth.response(Down(), db.config, b"alice", b"pw", b"", log=logs.append,
                        limiter=Limiter())
    assert out[0] == 111 and b"no DB server answered" in out[1]


def test_a_bug_is_not_reported_as_db_trouble(sandbox, logs):
    """Only DirectoryUnavailable is DB trouble (cause "db"); a bug goes up as itself
    and response() answers it as an internal error."""
    cfg, down = unreachable(sandbox)
    with pytest.raises(Refusal) as exc:
        auth.authenticate(down, cfg, b"alice", b"pw", "", limiter=Limiter())
    assert exc.value.code == 111 and exc.value.cause == "db"
    with pytest.raises(TypeError):
        auth.authenticate(BuggyDirectory(), cfg, b"alice", b"pw", "", limiter=Limiter())
    answer = auth.response(BuggyDirectory(), cfg, b"alice", b"pw", b"", log=logs.append,
                           limiter=Limiter())
    assert answer == (111, b"internal error in qmailsqld (see its log)")
    assert logs == ["auth trouble 'alice': internal error: TypeError: a bug, not the DB (test)"]


def test_db_killed_is_111(own_sandbox):
    root, _ = own_sandbox
    with qmailsql.connect(str(root)) as q:
        add_mailbox(q, "alice", password="pw", uid=UID, gid=GID)
        lim = Limiter(clock=Clock())
        assert login(q, b"alice", b"pw", lim)[0] == "alice"
        sb.stop_db(sb.Paths(root), sig=signal.SIGKILL)
        with pytest.raises(Refusal) as exc:
            login(q, b"alice", b"pw", lim)
        assert exc.value.code == 111 and not isinstance(exc.value, LoginRefused)
        out = auth.response(q.directory, q.config, b"alice", b"wrong", b"", limiter=lim)
        assert out[0] == 111
        assert len(lim) == 0  # trouble is not a failed login


# ---------------------------------------------------------------- the limiter

def test_limiter_holds_back_the_guessing_addresses_not_the_owner(db):
    """Five wrong passwords for one login from five addresses: the owner still logs in
    from an address that has not failed; an address that fails for the login now is
    held back for that login (even with the right password), for a capped back-off."""
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    clock = Clock()
    lim = Limiter(max_failures=5, window=300, base_delay=5, max_delay=60, clock=clock)
    logs = []
    for i in range(5):
        clock.t += 1
        assert "wrong password" in refused(db, b"alice", b"guess%d" % i, lim,
                                           ip="192.0.2.%d" % i, logs=logs)
    assert logs == ["auth limiter: login 'alice' held back at '192.0.2.4' for 5 s after 5 "
                    "failures in 300 s"]
    assert login(db, b"ALICE", b"pw", lim, ip="192.0.2.99")[0] == "alice"
    reason = refused(db, b"alice", b"pw", lim, ip="192.0.2.4")
    assert reason == "too many failures (login 'alice' held back at '192.0.2.4' for 5 more s)"
    # another guess from an address that guessed before: held back too
    assert "wrong password" in refused(db, b"alice", b"guess", lim, ip="192.0.2.0")
    assert "too many failures" in refused(db, b"alice", b"pw", lim, ip="192.0.2.0")
    # other logins from those addresses are not affected (below the address limit)
    add_mailbox(db, "bob", password="pw2", uid=UID, gid=GID)
    assert login(db, b"bob", b"pw2", lim, ip="192.0.2.4")[0] == "bob"
    clock.t += 5.5
    assert login(db, b"alice", b"pw", lim, ip="192.0.2.4")[0] == "alice"


def test_limiter_never_locks_the_owner_out():
    """The lock-out of issue 12: five wrong passwords from five addresses, then one more
    each time a block ends, for an hour. The owner is let in from any address where
    they have not failed, every time; where they typed one wrong password, within
    max_delay of it, whatever the guessing does."""
    clock = Clock()
    lim = Limiter(max_failures=5, window=300, base_delay=5, max_delay=60, clock=clock)
    guessers = ["192.0.2.%d" % i for i in range(1, 6)]
    for ip in guessers:
        lim.failure("victim", ip)
    typo_at = None
    waited = []
    late_guesses = 0
    for step in range(1, 3601):
        clock.t += 1
        for ip in guessers:  # one more guess from each address as soon as it may
            if lim.blocked("victim", ip) is None:
                lim.failure("victim", ip)
                if step > 3000:
                    late_guesses += 1
        assert lim.blocked("victim", "198.51.100.%d" % (step % 250 + 1)) is None
        if step % 600 == 100:  # the owner mistypes at home, then tries until let in
            lim.failure("victim", "203.0.113.7")
            typo_at = clock.t
        if typo_at is not None and lim.blocked("victim", "203.0.113.7") is None:
            waited.append(clock.t - typo_at)
            lim.success("victim", "203.0.113.7")
            typo_at = None
    print("owner let in at home %s s after a typo" % waited)
    assert len(waited) == 6 and max(waited) <= lim.max_delay
    # the guessing addresses are the ones refused: in the last 10 minutes, at most one
    # guess per address per max_delay
    print("guesses in the last 600 s: %d from %d addresses" % (late_guesses, len(guessers)))
    assert late_guesses <= len(guessers) * (600 // lim.max_delay + 1)
    assert all(lim.blocked("victim", ip) is not None for ip in guessers)


def test_limiter_blocks_an_address(db):
    for name in ("a1", "a2", "a3", "a4", "a5", "victim"):
        add_mailbox(db, name, password="pw", uid=UID, gid=GID)
    clock = Clock()
    lim = Limiter(max_failures=5, clock=clock)
    for name in (b"a1", b"a2", b"a3", b"a4", b"a5"):
        assert "wrong password" in refused(db, name, b"x", lim, ip="198.51.100.1")
    reason = refused(db, b"victim", b"pw", lim, ip="198.51.100.1")
    assert reason.startswith("too many failures (ip '198.51.100.1' blocked")
    # the same login from elsewhere, and the address-less path, are not blocked
    assert login(db, b"victim", b"pw", lim, ip="198.51.100.2")[0] == "victim"
    assert login(db, b"victim", b"pw", lim)[0] == "victim"


def test_limiter_success_forgives_only_that_logins_failures_at_an_address():
    clock = Clock()
    lim = Limiter(max_failures=5, clock=clock)
    ip = "203.0.113.5"
    for victim in ("v1", "v2", "v3", "v4"):
        lim.failure(victim, ip)
    lim.success("attacker", ip)  # their own account: does not wipe the guesses
    lim.failure("v5", ip)
    assert lim.blocked("fresh", ip) is not None
    lim2 = Limiter(max_failures=5, clock=clock)
    for _ in range(4):
        lim2.failure("typo", ip)
    lim2.success("typo", ip)  # the user's own typos are forgiven
    lim2.failure("other", ip)
    assert lim2.blocked("fresh", ip) is None


def test_limiter_backoff_grows_and_is_capped():
    clock = Clock()
    lim = Limiter(max_failures=3, window=1000, base_delay=5, max_delay=60, clock=clock)
    delays = []
    for _ in range(2):
        assert lim.failure("bob", "192.0.2.1") == []
    for _ in range(7):
        started = lim.failure("bob", "192.0.2.1")
        what = {k[0]: (k, d) for k, d in started}
        key, delay = what["login"]
        assert key == ("login", "bob", "192.0.2.1")
        assert what["ip"][1] == delay  # the address is blocked in step
        delays.append(delay)
        clock.t += delay - 0.5
        assert lim.blocked("bob", "192.0.2.1") is not None
        # attempts refused by the limiter do not extend the block
        clock.t += 1
        assert lim.blocked("bob", "192.0.2.1") is None
    assert delays == [5, 10, 20, 40, 60, 60, 60]
    assert max(delays) <= 60


def test_limiter_forgets_after_a_quiet_window():
    clock = Clock()
    lim = Limiter(max_failures=3, window=300, clock=clock)
    for _ in range(3):
        lim.failure("bob", "192.0.2.1")
    assert lim.blocked("bob", "192.0.2.1") is not None
    assert lim.blocked("bob", "192.0.2.2") is None
    clock.t += 301
    assert lim.blocked("bob", "192.0.2.1") is None
    assert len(lim) == 0
    assert lim.failure("bob", "192.0.2.1") == []  # strikes reset with the record


def test_limiter_is_bounded():
    lim = Limiter(max_failures=3, clock=Clock(), max_keys=100)
    for i in range(1000):
        lim.failure("user%d" % i, "10.%d.%d.1" % (i // 256, i % 256))
    assert len(lim) <= 100


def test_limiter_threads():
    import threading
    lim = Limiter(max_failures=1000000, clock=Clock())

    def work(n):
        for i in range(500):
            lim.failure("u%d" % (i % 7), "ip%d" % n)
            lim.blocked("u%d" % (i % 5), "ip%d" % n)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(lim) == 7 + 8  # a record per login and per address, none lost


# ---------------------------------------------------------------- rehash

def rehash_config(q, **kw):
    return dataclasses.replace(q.config, rehash=True, default_scheme="sha512-crypt", **kw)


def test_rehash_upgrades_plain_to_sha512(db, limiter, logs):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    cfg = rehash_config(db)
    assert login(db, b"alice", b"pw", limiter, config=cfg, logs=logs)[0] == "alice"
    ptype, stored = row(db, "alice")
    assert ptype == "Crypt-Password" and stored.startswith("$6$")
    assert passwords.verify(ptype, stored, b"pw")
    assert logs == ["auth: rehashed the Password password of 'alice' to sha512-crypt"]
    # the same password still works, and a strong hash is left alone
    logs.clear()
    assert login(db, b"alice", b"pw", limiter, config=cfg, logs=logs)[0] == "alice"
    assert row(db, "alice") == (ptype, stored)
    assert logs == []


@pytest.mark.parametrize("scheme", ["mysql-old", "mysql41", "des", "md5-crypt"])
def test_rehash_upgrades_weak_hashes(db, limiter, scheme):
    ptype, stored = SCHEME_ROWS[scheme]()
    add_mailbox(db, "alice", password=stored, ptype=ptype, uid=UID, gid=GID)
    assert login(db, b"alice", PW, limiter, config=rehash_config(db))[0] == "alice"
    new_type, new_stored = row(db, "alice")
    assert new_type == "Crypt-Password" and new_stored.startswith("$6$")
    assert login(db, b"alice", PW, limiter, config=rehash_config(db))[0] == "alice"


def test_rehash_off_leaves_the_row_alone(db, limiter):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)
    cfg = dataclasses.replace(db.config, rehash=False)
    assert login(db, b"alice", b"pw", limiter, config=cfg)[0] == "alice"
    assert row(db, "alice") == ("Password", "pw")


def test_rehash_does_not_overwrite_a_concurrent_change(db, limiter, logs):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)

    class Racing:
        """The admin changes the password between our read and our UPDATE."""
        log = None

        def query(self, sql, params=(), write=False):
            if sql.lstrip().upper().startswith("UPDATE"):
                db.directory.query("UPDATE mailbox SET password='pw ' WHERE username='alice'",
                                   write=True)
            return db.directory.query(sql, params, write)

    assert login(db, b"alice", b"pw", limiter, config=rehash_config(db), logs=logs,
                 directory=Racing())[0] == "alice"
    # 'pw ' equals 'pw' under the column's collation: the guard compares bytes
    assert row(db, "alice") == ("Password", "pw ")
    assert logs == ["auth: rehash of 'alice' skipped: its password changed meanwhile"]


def test_rehash_failure_does_not_fail_the_login(db, limiter, logs):
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID)

    class ReadOnly:
        log = None

        def query(self, sql, params=(), write=False):
            if write:
                raise DirectoryUnavailable("write server down (test)")
            return db.directory.query(sql, params, write)

    assert login(db, b"alice", b"pw", limiter, config=rehash_config(db), logs=logs,
                 directory=ReadOnly())[0] == "alice"
    assert row(db, "alice") == ("Password", "pw")
    assert len(logs) == 1 and "rehash of 'alice' failed" in logs[0]
    assert "write server down" in logs[0]


# ---------------------------------------------------------------- qmailsql passwd

def passwd_cli(args, data):
    return subprocess.run([sys.executable, "-m", "qmailsql", "passwd"] + args, input=data,
                          capture_output=True, timeout=60)


def test_passwd_from_stdin(db, limiter):
    add_mailbox(db, "alice", password="old", uid=UID, gid=GID)
    r = passwd_cli(["ALICE"], b"n3w p\xc3\xa4ss\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"password of alice set (Crypt-Password, sha512-crypt)\n"
    ptype, stored = row(db, "alice")
    assert ptype == "Crypt-Password" and stored.startswith("$6$")
    assert login(db, b"alice", "n3w p\u00e4ss".encode(), limiter)[0] == "alice"
    assert "wrong password" in refused(db, b"alice", b"old", limiter)


def test_passwd_scheme_and_crlf(db, limiter):
    add_mailbox(db, "alice", password="old", uid=UID, gid=GID)
    r = passwd_cli(["alice", "--scheme", "bcrypt"], b"abc\r\n")
    assert r.returncode == 0, r.stderr
    assert row(db, "alice")[1].startswith("$2b$")
    assert login(db, b"alice", b"abc", limiter)[0] == "alice"


def test_passwd_refusals(db):
    r = passwd_cli(["nobody"], b"pw\n")
    assert r.returncode == 1
    assert b"no mailbox named 'nobody'" in r.stderr
    add_mailbox(db, "alice", password="old", uid=UID, gid=GID)
    r = passwd_cli(["alice"], b"\n")
    assert r.returncode == 100 and b"empty password" in r.stderr
    r = passwd_cli(["alice", "--scheme", "rot13"], b"pw\n")
    assert r.returncode == 100 and b"unknown password scheme" in r.stderr
    assert row(db, "alice") == ("Password", "old")


def test_passwd_at_a_terminal_asks_twice(db, limiter):
    """getpass at a real terminal (a pty): typed twice, the same; or refused."""
    import pty
    import select

    def converse(answers):
        pid, fd = pty.fork()
        if pid == 0:  # child: the command, its stdin a terminal
            try:
                os.execv(sys.executable, [sys.executable, "-m", "qmailsql", "passwd", "alice"])
            finally:
                os._exit(127)
        out = b""
        deadline = time.monotonic() + 60
        answers = list(answers)
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 1)
                if not ready:
                    continue
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answers and out.rstrip().endswith(b":"):
                    os.write(fd, answers.pop(0) + b"\n")
                    out += b"<typed>"
        finally:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), out

    add_mailbox(db, "alice", password="old", uid=UID, gid=GID)
    code, out = converse([b"typo one", b"typo two"])
    assert code == 1, out
    assert b"differ" in out
    assert row(db, "alice") == ("Password", "old")
    code, out = converse([b"tty pass", b"tty pass"])
    assert code == 0, out
    assert b"New password for alice:" in out and b"Retype it:" in out
    assert b"tty pass" not in out  # no echo
    assert login(db, b"alice", b"tty pass", limiter)[0] == "alice"


# ---------------------------------------------------------------- compiled checkpassword

def daemon_answers_auth(sock_path):
    """None if qmailsqld at SOCK_PATH answers `auth` (status 1 for a bogus login), else why."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(sock_path))
        s.sendall(encode_frame([b"auth", b"qs-probe-no-such-login", b"x", b""]))
        data = b""
        while not data.endswith(b","):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return "qmailsqld does not answer at %s: %s" % (sock_path, e)
    finally:
        s.close()
    payload = data.partition(b":")[2][:-1]
    if not payload.startswith(b"1\x00"):
        return "qmailsqld does not answer auth yet: %r" % payload[:200]
    return None


def checkpassword_path():
    from qmailsql.core.helpers import helper_path
    return str(helper_path("checkpassword"))


def require_daemon(root):
    why = daemon_answers_auth(sb.Paths(root).daemon_socket)
    assert not why, why


@pytest.fixture
def mailhome():
    """A home under a directory every uid can search (pytest's tmp is 0700 root)."""
    if os.geteuid() != 0:
        pytest.skip("checkpassword changes uid: run the tests as root")
    top = tempfile.mkdtemp(prefix="qsauth-", dir="/tmp")
    os.chmod(top, 0o755)
    home = os.path.join(top, "alice")
    os.mkdir(home, 0o700)
    os.chown(home, UID, GID)
    yield home
    shutil.rmtree(top, ignore_errors=True)


REPORT = ['sh', '-c', 'printf "%s|" "$(id -u)" "$(id -g)" "$(id -G)" "$(pwd)" "$USER" '
          '"$HOME" "$SHELL"']


def run_checkpassword(sock, data, prog=REPORT, ip="192.0.2.44", **extra_env):
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    env = {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": str(sock), "TCPREMOTEIP": ip}
    env.update(extra_env)

    def fd3():
        os.dup2(r, 3)
    try:
        return subprocess.run([checkpassword_path()] + prog, env=env, preexec_fn=fd3,
                              close_fds=False, capture_output=True, timeout=60, cwd="/")
    finally:
        os.close(r)


def test_checkpassword_end_to_end(db, sandbox, mailhome):
    require_daemon(sandbox)
    sock = sb.Paths(sandbox).daemon_socket
    add_mailbox(db, "alice", password=_crypt_hash(b"$6$"), ptype="Crypt-Password", uid=UID,
                gid=GID, home=mailhome)
    r = run_checkpassword(sock, b"alice\x00" + PW + b"\x00" + b"1234\x00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "%d|%d|%d|%s|alice|%s|/bin/sh|" % (UID, GID, GID, mailhome,
                                                                    mailhome)
    r = run_checkpassword(sock, b"alice\x00wrong\x00\x00")
    assert r.returncode == 1
    assert r.stdout == b""
    r = run_checkpassword(sock, b"nobody\x00" + PW + b"\x00\x00")
    assert r.returncode == 1 and r.stdout == b""


def test_checkpassword_honours_service_bars(db, sandbox, mailhome):
    require_daemon(sandbox)
    sock = sb.Paths(sandbox).daemon_socket
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID, home=mailhome, deny="pop3")
    data = b"alice\x00pw\x00\x00"
    assert run_checkpassword(sock, data, QMAILSQL_SERVICE="pop3").returncode == 1
    assert run_checkpassword(sock, data).returncode == 1  # service unknown, a bar is set
    r = run_checkpassword(sock, data, SMTPAUTH="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("|")[4] == "alice"
    log = (sb.Paths(sandbox).daemon_log).read_text()
    assert "auth refused 'alice' (pop3) from 192.0.2.44: 'alice' is barred from pop3" in log
    assert "auth ok 'alice' (smtp) from 192.0.2.44" in log


def test_checkpassword_virtual_login(db, sandbox, mailhome):
    require_daemon(sandbox)
    add_mailbox(db, "alice", password="pw", uid=UID, gid=GID, home=mailhome)
    add_virtual(db, "alice", "", "al", "example.com")
    r = run_checkpassword(sb.Paths(sandbox).daemon_socket, b"al@example.com\x00pw\x00\x00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("|")[4] == "alice"


def test_checkpassword_db_down_then_daemon_stopped(own_sandbox, mailhome):
    root, _ = own_sandbox
    require_daemon(root)
    paths = sb.Paths(root)
    with qmailsql.connect(str(root)) as q:
        add_mailbox(q, "alice", password="pw", uid=UID, gid=GID, home=mailhome)
    data = b"alice\x00pw\x00\x00"
    r = run_checkpassword(paths.daemon_socket, data)
    assert r.returncode == 0, r.stderr
    sb.stop_db(paths, sig=signal.SIGKILL)
    r = run_checkpassword(paths.daemon_socket, data)
    assert r.returncode == 111, r.stderr
    assert r.stdout == b""
    sb.stop_daemon(paths)
    r = run_checkpassword(paths.daemon_socket, data)
    assert r.returncode == 111
    assert b"qmailsqld" in r.stderr and r.stdout == b""
