"""A real MariaDB primary and replica (sandbox.up_replica): routing and the lag rule.

The replica's control/sqlserver lists the replica first and names the primary as
write_server, as a mail host next to its own replica would (README, "Several mail
hosts against one replicated DB").
"""
import os
import subprocess
import sys

import pytest
from conftest import replica_pair

import qmailsql
from qmailsql import config as configmod, db, sandbox as sb
from qmailsql.resolve import Delivery, Refusal

UID, GID = 800, 100


@pytest.fixture(scope="module")
def pair():
    """(primary Paths, replica Paths): a primary with a binary log and its replica."""
    yield from replica_pair(daemon_on_replica=False)


def directory(root, admin=True, **kw):
    """A Directory on ROOT's servers, as the administrator (writes) or, ADMIN false,
    with control/sqlserver's least-privilege login (what the daemon has)."""
    cfg = configmod.load(str(root))
    return db.Directory(configmod.as_admin(cfg) if admin else cfg, **kw)


@pytest.fixture
def repl(pair, homes):
    """Empty tables on both, replication running, an alias user; yields (P, R, add)."""
    primary, replica = pair
    if sb.db_options(primary) and not sb._pid_alive(primary.db_pid):
        sb.restart_db(primary)
    status = sb.replica_status(replica)
    if status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
        sb.start_replication(replica)
    d = directory(primary.root)
    for t in ("mailbox", "alias", "virtual", "rcpthosts"):
        d.query("DELETE FROM `%s`" % t, write=True)

    def add(name, home_name=None):
        home = homes / (home_name or name)
        home.mkdir(exist_ok=True)
        os.chown(home, UID, GID)
        d.query("INSERT INTO mailbox (username, uid, gid, home, password, password_type) "
                "VALUES (%s, %s, %s, %s, 'secret', 'Password')", (name, UID, GID, str(home)),
                write=True)
        return home

    add("alias")
    sb.wait_caught_up(primary, replica)
    yield primary, replica, add
    d.close()


def server_id(directory_):
    return directory_.query("SELECT @@server_id")[0][0]


def test_replica_replicates_with_gtid(repl):
    primary, replica, add = repl
    add("carol")
    sb.wait_caught_up(primary, replica)
    st = sb.replica_status(replica)
    assert st["Using_Gtid"] == "Slave_Pos"
    assert st["Slave_IO_Running"] == st["Slave_SQL_Running"] == "Yes"
    rows = sb.root_sql(replica, [("SELECT username FROM qmail.mailbox ORDER BY username", ())])
    assert rows == (("alias",), ("carol",))
    ro = sb.root_sql(replica, [("SELECT @@read_only, @@server_id", ())])[0]
    assert ro[0] == 1
    assert ro[1] != sb.root_sql(primary, [("SELECT @@server_id", ())])[0][0]


def test_replica_sqlserver_lists_replica_first_and_primary_for_writes(pair):
    primary, replica = pair
    cfg = configmod.load(str(replica.root))
    rport, pport = sb.db_options(replica)["port"], sb.db_options(primary)["port"]
    assert [(s.host, s.port) for s in cfg.servers] == [("127.0.0.1", rport),
                                                        ("127.0.0.1", pport)]
    assert (cfg.write_server.host, cfg.write_server.port) == ("127.0.0.1", pport)
    assert oct(replica.sqlserver.stat().st_mode & 0o777) == "0o640"


def test_reads_go_to_replica_writes_to_primary(repl):
    primary, replica, add = repl
    rid = sb.root_sql(replica, [("SELECT @@server_id", ())])[0][0]
    pid = sb.root_sql(primary, [("SELECT @@server_id", ())])[0][0]
    d = directory(replica.root)
    try:
        assert server_id(d) == rid
        assert d.query("SELECT @@server_id", write=True)[0][0] == pid
        d.query("INSERT INTO rcpthosts (host) VALUES (%s)", ("written.example",), write=True)
        assert d.last_server == d.config.write_server
        # the write did not move the reads off the replica
        assert server_id(d) == rid
        assert d.server == d.config.servers[0]
    finally:
        d.close()
    sb.wait_caught_up(primary, replica)
    assert sb.root_sql(replica, [("SELECT host FROM qmail.rcpthosts", ())]) == (
        ("written.example",),)


def test_replica_refuses_writes_from_the_daemon_user(repl):
    primary, replica, add = repl
    add("dave")
    sb.wait_caught_up(primary, replica)
    d = directory(replica.root, admin=False)
    try:
        with pytest.raises(db.DirectoryUnavailable) as e:
            d.query("DELETE FROM mailbox WHERE username=%s", ("dave",))  # a read connection
        # its grants refuse it (1142) before the replica's read_only would (1290)
        assert "(1142)" in str(e.value) or "(1290)" in str(e.value)
    finally:
        d.close()
    # refused, and not retried on the next server (the primary) either
    for paths in (primary, replica):
        assert sb.root_sql(paths, [("SELECT COUNT(*) FROM qmail.mailbox WHERE username='dave'",
                                    ())])[0][0] == 1


def test_lag_rule_new_user_is_not_sent_to_alias(repl):
    primary, replica, add = repl
    sb.stop_replication(replica)
    home = add("newbie")  # on the primary only: the replica lags behind
    log = []
    d = directory(replica.root, log=log.append)
    try:
        # the replica alone would say: no such user
        rows = d.mailboxes(["newbie", "alias"], confirm_miss=False)
        assert [r[0] for r in rows] == ["alias"]
        assert d.last_server == d.config.servers[0]
        before = d.confirmed_misses
        rows = d.mailboxes(["newbie", "alias"])
        assert "newbie" in [r[0] for r in rows]
        assert d.confirmed_misses == before + 1
        assert any("asking write_server" in m for m in log)
    finally:
        d.close()
    with qmailsql.connect(str(replica.root)) as q:
        assert q.getpw(b"newbie-ext") == Delivery(b"newbie", UID, GID, os.fsencode(home),
                                                   b"-", b"ext")
        assert q.config.servers[0] != q.config.write_server
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "newbie"],
                       capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILSQL_QMAIL_DIR=str(replica.root)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(b"\0")[0] == b"newbie"


def test_lag_rule_covers_virtual_and_alias_rows(repl, homes):
    """A virtual or alias row made on the primary a moment ago is used, not missed
    (review finding: the replica alone bounced such mail)."""
    from qmailsql import aliases
    primary, replica, add = repl
    home = add("newbie")
    sb.wait_caught_up(primary, replica)
    sb.stop_replication(replica)
    d = directory(primary.root)
    try:
        d.query("INSERT INTO virtual (username, ext, virtual_username, virtual_host) "
                "VALUES ('newbie', '', 'nb', 'v.example')", write=True)
        d.query("INSERT INTO alias (username, alias, alias_username, alias_host) "
                "VALUES ('newbie', 'list', '.', '/Maildir/')", write=True)
    finally:
        d.close()
    with qmailsql.connect(str(replica.root)) as q:
        assert q.getpw(b"v.example-nb") == Delivery(b"newbie", UID, GID, os.fsencode(home),
                                                     b"", b"")
        lines = aliases.delivery_lines(q.directory, q.config, b"newbie", os.fsencode(home),
                                       b"newbie-list", b"-", b"list", b"example.org")
        assert lines == b"./Maildir/\n"
        assert q.directory.confirmed_misses >= 2


def test_lag_rule_costs_nothing_on_hits(repl):
    primary, replica, add = repl
    add("erin")
    sb.wait_caught_up(primary, replica)
    sb.stop_replication(replica)
    d = directory(replica.root)
    try:
        rows = d.mailboxes(["erin-x", "erin", "alias"])
        assert "erin" in [r[0] for r in rows]
        assert d.confirmed_misses == 0
        assert d.last_server == d.config.servers[0]
    finally:
        d.close()


def test_lag_rule_true_miss_still_goes_to_alias(repl, homes):
    primary, replica, add = repl
    sb.stop_replication(replica)
    with qmailsql.connect(str(replica.root)) as q:
        d = q.getpw(b"nobody-here")
        assert (d.user, d.dash, d.ext) == (b"alias", b"-", b"nobody-here")
        # confirmed twice: no virtual row for host 'nobody', no mailbox row
        assert q.directory.confirmed_misses == 2


def test_lag_rule_miss_waits_while_primary_is_down(repl):
    """A miss that cannot be confirmed is 111 (the mail waits), not the alias user."""
    primary, replica, add = repl
    home = add("frank")
    sb.wait_caught_up(primary, replica)
    sb.stop_db(primary)
    try:
        with qmailsql.connect(str(replica.root)) as q:
            # hits are still served by the replica
            assert q.getpw(b"frank") == Delivery(b"frank", UID, GID, os.fsencode(home),
                                                 b"", b"")
            with pytest.raises(Refusal) as e:
                q.getpw(b"stranger")
            assert e.value.code == 111
    finally:
        sb.restart_db(primary)
        sb.wait_replicating(replica)


def test_replica_restarts_replicating(repl):
    primary, replica, add = repl
    sb.stop_db(replica)
    add("gina")
    sb.restart_db(replica)
    sb.wait_replicating(replica)
    sb.wait_caught_up(primary, replica)
    assert sb.root_sql(replica, [("SELECT COUNT(*) FROM qmail.mailbox WHERE username='gina'",
                                  ())])[0][0] == 1


def test_up_replica_is_idempotent(pair):
    primary, replica = pair
    before = replica.sqlserver.read_text()
    sb.up_replica(str(primary.root), str(replica.root))
    assert replica.sqlserver.read_text() == before
    sb.wait_replicating(replica)


def test_up_replica_needs_a_primary_sandbox(tmp_path):
    with pytest.raises(sb.SandboxError):
        sb.up_replica(str(tmp_path / "none"), str(tmp_path / "r"))
