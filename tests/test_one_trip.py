"""One DB round trip per uncached delivery (issue 16): qmail-getpw, run as qmail-lspawn
runs it (a privileged peer), then the qmail-local wrapper's `localq`, asked as the
mailbox's uid, cost the sandbox's MariaDB one statement between them, counted in its
general log."""
import os
import subprocess
import types

import pytest
from conftest import ROW_UID, add_alias, add_mailbox, add_virtual, as_uid, flush_daemon, raw_as

from qmailsql.core import config as configmod
from qmailsql.core.helpers import helper_path
from qmailsql.core.hotpath import HIT, NEGATIVE, ResponseCache, encode_response, local_cache_key
from qmailsql.daemon.workers import Task, put_fills
from qmailsql.sandbox import host as sb

# what a new DB connection asks once (db.max_statement), before any lookup
SETUP_STATEMENTS = ("SELECT @@max_allowed_packet",)


class GeneralLog:
    """The statements qmailsqld's DB login sends while it is on."""

    def __init__(self, paths, login):
        self.paths, self.login = paths, login

    def __enter__(self):
        sb.root_sql(self.paths, [("SET GLOBAL log_output = 'TABLE'", ()),
                                 ("TRUNCATE TABLE mysql.general_log", ()),
                                 ("SET GLOBAL general_log = 1", ())])
        return self

    def __exit__(self, *exc):
        sb.root_sql(self.paths, [("SET GLOBAL general_log = 0", ())])

    def statements(self):
        rows = sb.root_sql(self.paths, [(
            "SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log WHERE "
            "command_type = 'Query' AND user_host LIKE %s ORDER BY event_time",
            (self.login + "[%",))])
        return [r[0] for r in rows if r[0] not in SETUP_STATEMENTS]


def daemon_login(root):
    return configmod.load(str(root)).login


@pytest.fixture
def trip(db, sandbox, everyone_dir):
    paths = sb.Paths(sandbox)
    for d in (sandbox, paths.run):  # the wrapper runs as the mailbox's uid
        os.chmod(d, 0o755)
    env = {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": str(paths.daemon_socket),
           "QMAILSQL_QMAIL_LOCAL": "/bin/true"}

    class Trip:
        def mailbox(self, name):
            return add_mailbox(db, name, everyone_dir / name, make_home=True)

        def deliver(self, local, domain="example.org"):
            """qmail-lspawn's two steps; (getpw fields, the statements they cost)."""
            with GeneralLog(paths, daemon_login(sandbox)) as log:
                got, w = self.run(local, domain)
                assert w.returncode == 0, w.stderr
                return got, log.statements()

        def run(self, local, domain="example.org"):
            """(getpw fields, the wrapper's CompletedProcess)."""
            r = subprocess.run([str(helper_path("qmail-getpw")), local], env=env,
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            user, uid, gid, home, dash, ext = r.stdout.split(b"\0")[:6]
            w = subprocess.run(as_uid(int(uid), int(gid)) + [
                str(helper_path("qmail-local")), "--", user, home, local, dash, ext, domain,
                "sender@example.net", "./Maildir/"], env=env, capture_output=True,
                timeout=60, cwd="/")
            return (user, dash, ext), w
    return Trip()


def test_plain_mailbox_costs_one_statement(trip):
    trip.mailbox("plain")
    got, statements = trip.deliver("plain")
    assert got == (b"plain", b"", b"")
    assert len(statements) == 1, statements


def test_extension_with_alias_rows_costs_one_statement(db, trip):
    trip.mailbox("iain")
    add_alias(db, "iain", "slowlaris", ".", "/Maildir/")
    add_alias(db, "iain", "default", "&", "elsewhere@example.net")
    got, statements = trip.deliver("iain-slowlaris")
    assert got == (b"iain", b"-", b"slowlaris")
    assert len(statements) == 1, statements


def test_virtual_address_costs_two_statements(db, trip):
    """The virtual row's target is known only from the first statement's rows: its
    mailbox rows, alias rows and quota come in a second one."""
    trip.mailbox("sales")
    add_virtual(db, "sales", "", "sales", "sillydomain.com")
    got, statements = trip.deliver("sillydomain.com-sales", "sillydomain.com")
    assert got == (b"sales", b"", b"")
    assert len(statements) == 2, statements


def test_prefilled_answer_is_the_one_local_gives(db, sandbox, trip):
    """What getpw put in the cache for the wrapper (asked again: no statement) is what
    `localq` works out when it is asked afresh, after a flush."""
    home = trip.mailbox("iain")
    add_alias(db, "iain", "slowlaris", ".", "/Maildir/")
    paths = sb.Paths(sandbox)
    request = [b"localq", b"iain", home.encode(), b"iain-slowlaris", b"-", b"slowlaris",
               b"example.org"]
    trip.deliver("iain-slowlaris")
    with GeneralLog(paths, daemon_login(sandbox)) as log:
        prefilled = raw_as(ROW_UID, paths.daemon_socket, request)
        assert log.statements() == []
    assert prefilled[0] == 0 and prefilled[1].endswith(b"\n./Maildir/\n"), prefilled
    flush_daemon(sandbox)
    assert raw_as(ROW_UID, paths.daemon_socket, request) == prefilled


def test_misconfigured_alias_row_is_refused_as_before(db, trip):
    """A row the fill cannot use is worked out again when the wrapper asks: the same
    111 and the same message for the peer."""
    trip.mailbox("u")
    add_alias(db, "u", "", "", "")
    got, w = trip.run("u")
    assert got == (b"u", b"", b"")
    assert w.returncode == 111
    assert b"misconfigured alias row id=" in w.stderr
    assert b"both alias_username and alias_host blank" in w.stderr


def filled_task(getpw_body, generation=0, negative_ttl=5, cache_ttl=300):
    """A getpw task as its worker leaves it: its answer, what kind of answer it is (an
    answer of the alias user for an unknown local part is NEGATIVE) and its fills."""
    config = types.SimpleNamespace(cache_ttl=cache_ttl, negative_ttl=negative_ttl,
                                   stale_ttl=3600)
    task = Task(None, b"getpw\0who\0", b"getpw", (b"who",), None, generation, config)
    task.status, task.body = 0, getpw_body
    task.kind = NEGATIVE if getpw_body.startswith(b"alias\0") else HIT
    key = local_cache_key(800, b"localq", b"who", b"/h", b"who", b"", b"")
    task.fills = [(800, key, encode_response(0, b"0 0 90 bounce\n"))]
    return task, key


def test_fills_do_not_survive_a_flush_meanwhile():
    cache = ResponseCache(100, 10)
    task, key = filled_task(b"who\0" b"800\0" b"100\0" b"/h\0\0\0", cache.generation)
    cache.clear()  # a flush while the worker had the getpw
    put_fills(cache, task, 1000.0)
    assert cache.get(key, 1000.0) is None
    task.generation = cache.generation
    put_fills(cache, task, 1000.0)
    assert cache.get(key, 1000.0) == task.fills[0][2]


def test_fills_of_a_delivery_to_the_alias_user_live_negative_ttl():
    cache = ResponseCache(100, 10)
    task, key = filled_task(b"alias\0" b"800\0" b"100\0" b"/h\0-\0who\0", negative_ttl=5)
    put_fills(cache, task, 1000.0)
    assert cache.get(key, 1004.0) is not None
    assert cache.get(key, 1006.0) is None
    task, key = filled_task(b"who\0" b"800\0" b"100\0" b"/h\0\0\0", negative_ttl=5)
    put_fills(cache, task, 1000.0)
    assert cache.get(key, 1006.0) is not None


def test_no_reads_ahead_when_answers_are_not_kept(db, sandbox, trip):
    """With cache_ttl 0 nothing the wrapper will ask can be kept for it: getpw reads its
    own rows only (the mailbox lookup alone), and works nothing out ahead."""
    import dataclasses
    from qmailsql.daemon import server as daemon
    trip.mailbox("plain")
    config = configmod.load(str(sandbox))
    d = daemon.Daemon(config)
    worker = daemon.Worker(d, None, "test")
    root = types.SimpleNamespace(privileged=True, uid=0)
    paths = sb.Paths(sandbox)
    try:
        for ttl, ahead in ((300, True), (0, False)):
            worker.setup(dataclasses.replace(config, cache_ttl=ttl))
            worker.directory.query("SELECT 1")  # connected before the count
            task = Task(root, b"", b"getpw", [b"plain"], None, 0, worker.config)
            with GeneralLog(paths, daemon_login(sandbox)) as log:
                worker.handle(task)
                [statement] = [s for s in log.statements() if s != "SELECT 1"]
            assert task.status == 0 and (task.fills is not None) == ahead, ttl
            if ahead:  # only what the wrapper asks: `localq` (`local` of an older daemon)
                assert [key.split(b"\0")[1] for _, key, _ in task.fills()] == [b"localq"]
            assert ("FROM alias" in statement) == ahead, statement
    finally:
        worker.directory.close()
        d.ep.close()
