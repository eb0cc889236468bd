"""A real MariaDB primary and replica (sandbox.up_replica): routing and the lag rule.

The replica's control/sqlserver lists the replica first and names the primary as
write_server, as a mail host next to its own replica would (README, "Several mail
hosts against one replicated DB").
"""
import contextlib
import os
import subprocess
import sys

import pytest
from conftest import add_alias, add_mailbox, add_virtual, replica_pair

import qmailsql
from qmailsql.core import config as configmod, db, resolve
from qmailsql.sandbox import host as sb
from qmailsql.core.resolve import Delivery, Refusal

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
        add_mailbox(d, name, home, uid=UID, gid=GID, password="secret", make_home=True)
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
        assert [r[0] for r in d.mailboxes(["newbie", "alias"])] == ["alias"]
        assert d.last_server == d.config.servers[0]
        r = resolve.Resolver.for_directory(d.config, d)
        assert r.getpw(b"newbie-ext") == Delivery(b"newbie", UID, GID, os.fsencode(home),
                                                   b"-", b"ext")
        assert d.confirmations == 1
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
    """A virtual or alias row made on the primary a moment ago is used, not missed,
    where missing it would bounce (review finding: the replica alone bounced such
    mail)."""
    from qmailsql.core import aliases
    primary, replica, add = repl
    home = add("newbie")
    sb.wait_caught_up(primary, replica)
    sb.stop_replication(replica)
    d = directory(primary.root)
    try:
        add_virtual(d, "newbie", "", "nb", "v.example")
        add_alias(d, "newbie", "list", ".", "/Maildir/")
    finally:
        d.close()
    with qmailsql.connect(str(replica.root)) as q:
        # not a known virtual host on the replica, no such mailbox: that would bounce
        assert q.getpw(b"v.example-nb") == Delivery(b"newbie", UID, GID, os.fsencode(home),
                                                     b"", b"")
        args = (q.directory, q.config, b"newbie", os.fsencode(home), b"newbie-list", b"-",
                b"list", b"example.org")
        # the wrapper found a dot-qmail file: no rows is not final, the replica's word
        assert aliases.delivery_lines(*args) == b""
        # it found none (stock would bounce): asked on the primary
        assert aliases.delivery_lines(*args, confirm=True) == b"./Maildir/\n"
        assert q.directory.confirmations == 2


def test_lag_rule_costs_nothing_on_hits(repl):
    primary, replica, add = repl
    add("erin")
    sb.wait_caught_up(primary, replica)
    sb.stop_replication(replica)
    before = selects(primary)
    with qmailsql.connect(str(replica.root)) as q:
        for local in (b"erin", b"erin-x", b"erin-x-y"):
            assert q.getpw(local).user == b"erin"
        assert q.directory.confirmations == 0
        assert q.directory.last_server == q.config.servers[0]
    assert selects(primary) == before


def test_lag_rule_true_miss_still_goes_to_alias(repl, homes):
    primary, replica, add = repl
    sb.stop_replication(replica)
    before = selects(primary)
    with qmailsql.connect(str(replica.root)) as q:
        d = q.getpw(b"nobody-here")
        assert (d.user, d.dash, d.ext) == (b"alias", b"-", b"nobody-here")
        # one second look, on the primary: the whole answer worked out there again
        assert q.directory.confirmations == 1
    assert selects(primary) > before


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


# ------------------------------------------------------------------ replicas and peers
# (issue 15 item 2) Only an answer that would send mail to the alias user (or 116) is
# confirmed on the write_server; with no write_server line the servers are peers and
# nothing is confirmed; a dead server never stops deliveries while another answers.

def tcp(paths):
    return "127.0.0.1:%d" % sb.db_options(paths)["port"]


def qmail_home(tmp_path, servers, write_server=None, base=None, name="qmail"):
    """A qmail home whose control/sqlserver lists SERVERS (and WRITE_SERVER if given),
    with the credentials of BASE's, 2-second timeouts."""
    cfg = configmod.load(str(base.root))
    home = tmp_path / name
    (home / "control").mkdir(parents=True)
    path = home / "control" / "sqlserver"
    path.write_text("".join("server %s\n" % s for s in servers) +
                    ("write_server %s\n" % write_server if write_server else "") +
                    "login %s\npassword %s\ndb %s\nconnect_timeout 2\nread_timeout 2\n"
                    % (cfg.login, cfg.password, cfg.db))
    os.chmod(path, 0o640)
    return home


@contextlib.contextmanager
def primary_stopped(primary, replica):
    sb.stop_db(primary)
    try:
        yield
    finally:
        sb.restart_db(primary)
        sb.wait_replicating(replica)


def selects(paths):
    """The Com_select counter of the server in PATHS (SHOW STATUS adds nothing to it)."""
    return int(sb.root_sql(paths, [("SHOW GLOBAL STATUS LIKE 'Com_select'", ())])[0][1])


def cli_getpw(home, local):
    return subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "--", local],
                          capture_output=True, timeout=60,
                          env=dict(os.environ, QMAILSQL_QMAIL_DIR=str(home)))


def load_world(repl):
    """iain (with iain-sanity, and a row for iain-slowlaris), frank, a virtual user and a
    catch-all-less virtual host; replicated."""
    primary, replica, add = repl
    homes = {n: add(n) for n in ("iain", "iain-sanity", "frank", "vuser")}
    d = directory(primary.root)
    try:
        add_alias(d, "iain", "slowlaris", ".", "/Maildir/")
        add_virtual(d, "vuser", "", "vu", "v.example")
    finally:
        d.close()
    sb.wait_caught_up(primary, replica)
    return homes


HITS = [("iain", b"iain", b"", b""), ("iain-sanity", b"iain-sanity", b"", b""),
        ("iain-slowlaris", b"iain", b"-", b"slowlaris"), ("frank-x-y", b"frank", b"-", b"x-y"),
        ("v.example-vu", b"vuser", b"", b"")]


def test_dead_first_server_without_write_server_delivers(repl, tmp_path):
    """The issue's reproduction: `server /a/dead.sock` then a live one, no write_server."""
    primary, replica, add = repl
    load_world(repl)
    dead = str(tmp_path / "dead.sock")
    home = qmail_home(tmp_path, [dead, str(replica.db_socket)], base=replica)
    for local, user, dash, ext in HITS + [("stranger", b"alias", b"-", b"stranger")]:
        r = cli_getpw(home, local)
        assert r.returncode == 0, (local, r.stderr)
        assert r.stdout.split(b"\0")[:1] + r.stdout.split(b"\0")[4:6] == [user, dash, ext]


def test_peers_without_write_server_never_confirm(repl, tmp_path):
    """No write_server line: the servers are peers (Galera, failover pairs); not one
    query on the second server, misses included, while the first answers."""
    primary, replica, add = repl
    load_world(repl)
    home = qmail_home(tmp_path, [tcp(replica), tcp(primary)], base=replica)
    before = selects(primary)
    with qmailsql.connect(str(home), admin=False) as q:  # the daemon's own login
        for local, user, dash, ext in HITS:
            d = q.getpw(local.encode())
            assert (d.user, d.dash, d.ext) == (user, dash, ext), local
        assert q.getpw(b"stranger").user == b"alias"
        assert q.getpw(b"v.example-nobody").ext == b"v.example-nobody"
        from qmailsql.core import aliases
        assert aliases.delivery_lines(q.directory, q.config, b"alias", b"/nonexistent",
                                      b"stranger", b"-", b"stranger", b"example.org",
                                      confirm=True) == b""
        assert q.directory.last_server == q.config.servers[0]
    assert selects(primary) == before


def test_replica_hits_cost_the_primary_nothing(repl):
    """Hits and intermediate misses (no virtual host, no virtual row, then a mailbox) come
    from the replica alone; a miss that would bounce is asked on the primary."""
    primary, replica, add = repl
    homes = load_world(repl)
    from qmailsql.core import aliases
    with qmailsql.connect(str(replica.root)) as q:
        before = selects(primary)
        for local, user, dash, ext in HITS:
            d = q.getpw(local.encode())
            assert (d.user, d.dash, d.ext) == (user, dash, ext), local
        for user, local, dash, ext, lines in (
                (b"iain", b"iain-slowlaris", b"-", b"slowlaris", b"./Maildir/\n"),
                (b"iain", b"iain", b"", b"", b""), (b"frank", b"frank", b"", b"", b"")):
            home = os.fsencode(homes[user.decode()])
            assert aliases.delivery_lines(q.directory, q.config, user, home, local, dash,
                                          ext, b"example.org") == lines
        assert selects(primary) == before
        assert q.getpw(b"stranger").user == b"alias"
        assert selects(primary) > before  # the bounce was confirmed there


def test_primary_down_replica_keeps_delivering(repl):
    """The primary stopped: mailboxes, alias rows and virtual users still resolve from the
    replica; only what would go to the alias user (or 116) waits with 111."""
    primary, replica, add = repl
    homes = load_world(repl)
    from qmailsql.core import aliases
    with primary_stopped(primary, replica):
        with qmailsql.connect(str(replica.root)) as q:
            for local, user, dash, ext in HITS:
                d = q.getpw(local.encode())
                assert (d.user, d.dash, d.ext) == (user, dash, ext), local
            home = os.fsencode(homes["iain"])
            assert aliases.delivery_lines(q.directory, q.config, b"iain", home,
                                          b"iain-slowlaris", b"-", b"slowlaris",
                                          b"example.org") == b"./Maildir/\n"
            assert aliases.delivery_lines(q.directory, q.config, b"iain", home, b"iain", b"",
                                          b"", b"example.org") == b""
            for local in (b"stranger", b"v.example-nobody", b"nobody-at-all"):
                with pytest.raises(Refusal) as e:
                    q.getpw(local)
                assert e.value.code == 111, (local, e.value.message)
            # no rows for an address stock qmail-local would bounce: confirmed, so 111
            with pytest.raises(Refusal) as e:
                aliases.delivery_lines(q.directory, q.config, b"iain", home, b"iain-nosuch",
                                       b"-", b"nosuch", b"example.org", confirm=True)
            assert e.value.code == 111
        r = cli_getpw(replica.root, "iain-slowlaris")
        assert r.returncode == 0, r.stderr
        r = cli_getpw(replica.root, "stranger")
        assert r.returncode == 111 and r.stdout == b"", r


def test_no_alias_user_116_waits_while_primary_down(repl):
    primary, replica, add = repl
    load_world(repl)
    d = directory(primary.root)
    try:
        d.query("DELETE FROM mailbox WHERE username='alias'", write=True)
    finally:
        d.close()
    sb.wait_caught_up(primary, replica)
    with qmailsql.connect(str(replica.root)) as q:
        with pytest.raises(Refusal) as e:
            q.getpw(b"stranger")
        assert e.value.code == 116
        with primary_stopped(primary, replica):
            with pytest.raises(Refusal) as e:
                q.getpw(b"stranger")
            assert e.value.code == 111
