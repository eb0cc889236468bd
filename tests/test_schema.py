"""initdb / migrate (SPEC section 3) on a real server."""
import contextlib
import dataclasses
import subprocess
import sys

import pytest
from conftest import add_mailbox, add_virtual

import qmailsql
from qmailsql.admin import doctor
from qmailsql.core import db as dbmod, quota, schema

# initdb's DDL as the release before the tables became data wrote it (commit 233a374):
# the tables it made are the ones the derived DDL must make, on the server
RELEASED_DDL = {
    "mailbox": """CREATE TABLE IF NOT EXISTS mailbox (
  username VARCHAR({n}) NOT NULL,
  uid INT UNSIGNED NOT NULL,
  gid INT UNSIGNED NOT NULL,
  home VARCHAR(255) NOT NULL,
  password VARCHAR(255) NOT NULL DEFAULT '',
  password_type ENUM('Password','Crypt-Password','MySQL-Password') NOT NULL
    DEFAULT 'Crypt-Password',
  suspended ENUM('N','Y') NOT NULL DEFAULT 'N',
  deny_services SET('pop3','imap','smtp') NOT NULL DEFAULT '',
  quota_size BIGINT UNSIGNED NULL DEFAULT NULL,
  quota_count BIGINT UNSIGNED NULL DEFAULT NULL,
  PRIMARY KEY (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "alias": """CREATE TABLE IF NOT EXISTS alias (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  username VARCHAR({n}) NOT NULL,
  alias VARCHAR({n}) NOT NULL DEFAULT '',
  alias_username VARCHAR(255) NOT NULL DEFAULT '',
  alias_host VARCHAR(255) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  KEY user_alias (username, alias)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "virtual": """CREATE TABLE IF NOT EXISTS virtual (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  username VARCHAR({n}) NOT NULL,
  ext VARCHAR(255) NOT NULL DEFAULT '',
  virtual_username VARCHAR({n}) NOT NULL DEFAULT '',
  virtual_host VARCHAR(255) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY address (virtual_host, virtual_username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "rcpthosts": """CREATE TABLE IF NOT EXISTS rcpthosts (
  host VARCHAR(255) NOT NULL,
  PRIMARY KEY (host)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
    "domain_quota": """CREATE TABLE IF NOT EXISTS domain_quota (
  host VARCHAR(255) NOT NULL,
  quota_size BIGINT UNSIGNED NULL DEFAULT NULL,
  quota_count BIGINT UNSIGNED NULL DEFAULT NULL,
  PRIMARY KEY (host)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
}


def widths(q):
    return {k: v for k, v in schema.column_widths(q.directory).items()
            if k[1] in ("username", "alias", "virtual_username")}


def test_initdb_is_idempotent_and_keeps_rows(db):
    db.directory.query("INSERT INTO rcpthosts (host) VALUES ('example.com')", write=True)
    assert schema.initdb(db.directory) == []
    assert db.directory.query("SELECT host FROM rcpthosts") == (("example.com",),)


def test_tables_have_faq_columns_and_keys(db):
    cols = {(t, c) for t, c in db.directory.query(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = DATABASE()")}
    for t, c in [("mailbox", "username"), ("mailbox", "uid"), ("mailbox", "gid"),
                 ("mailbox", "home"), ("mailbox", "password"), ("mailbox", "password_type"),
                 ("mailbox", "suspended"), ("alias", "alias"), ("alias", "alias_username"),
                 ("alias", "alias_host"), ("virtual", "ext"), ("virtual", "virtual_username"),
                 ("virtual", "virtual_host"), ("rcpthosts", "host")]:
        assert (t, c) in cols
    charsets = db.directory.query(
        "SELECT DISTINCT table_collation FROM information_schema.tables "
        "WHERE table_schema = DATABASE()")
    assert all(c[0].startswith("utf8mb4") for c in charsets)
    # raw: the table itself must refuse a second row of one name, even in one statement
    with pytest.raises(Exception):
        db.directory.query("INSERT INTO mailbox (username, uid, gid, home) VALUES "
                           "('dup',1,1,'/h'),('dup',1,1,'/h')", write=True)


@pytest.fixture
def username_widths_restored(sandbox):
    """The test widens the shared sandbox's name columns: back to the stock 32 for the
    other tests afterwards, even when it fails."""
    yield
    with qmailsql.connect(str(sandbox)) as q:
        for table, columns in schema.USERNAME_COLUMNS.items():
            for c in columns:
                q.directory.query("ALTER TABLE `%s` MODIFY %s"
                                  % (table, schema.TABLES[table].column(c).sql(32)),
                                  write=True)


@pytest.fixture
def indexes_restored(sandbox):
    """The test drops indexes of the shared sandbox: afterwards, even when it fails,
    every table has exactly the indexes the schema data gives it."""
    yield
    with qmailsql.connect(str(sandbox)) as q:
        for table in schema.TABLES.values():
            for name in index_columns(q, table.name):
                if name != "PRIMARY":
                    q.directory.query("ALTER TABLE `%s` DROP INDEX `%s`" % (table.name, name),
                                      write=True)
            for key in table.indexes():
                q.directory.query("ALTER TABLE `%s` ADD %s" % (table.name, key.sql()),
                                  write=True)


@contextlib.contextmanager
def scratch_database(q, name):
    """A Directory on a new, empty database NAME of the sandbox, dropped afterwards."""
    config = dataclasses.replace(q.config, db=name)
    q.directory.query("DROP DATABASE IF EXISTS `%s`" % name, write=True)
    assert schema.create_database(config)
    directory = dbmod.Directory(config)
    try:
        yield directory
    finally:
        directory.close()
        q.directory.query("DROP DATABASE IF EXISTS `%s`" % name, write=True)


def show_create(directory):
    """{table: SHOW CREATE TABLE's text} of DIRECTORY's database."""
    return {name: directory.query("SHOW CREATE TABLE `%s`" % name, write=True)[0][1]
            for (name,) in directory.query("SHOW TABLES", write=True)}


def test_initdb_makes_the_released_tables_plus_the_domain_lookup_index(sandbox):
    """The DDL derived from the schema data makes, on the server, the tables the released
    DDL text made; the one difference is the index on virtual(username) that the quota
    domain lookup needs, which migrate adds to the released tables under initdb's name."""
    with qmailsql.connect(str(sandbox)) as q, \
            scratch_database(q, "qst_released") as released, \
            scratch_database(q, "qst_derived") as derived:
        for ddl in RELEASED_DDL.values():
            released.query(ddl.format(n=32), write=True)
        assert schema.initdb(derived) == list(schema.TABLES)
        assert schema.migrate(released) == ["added index username on virtual (username)"]
        assert show_create(released) == show_create(derived)
        assert set(show_create(derived)) == set(RELEASED_DDL)


def test_migrate_brings_a_first_release_table_to_initdbs_layout(sandbox):
    """Tables of the first release (no service bars, no quota columns or domain_quota)
    at userlen 32, migrated with --userlen 64, are the tables initdb makes at 64: added
    columns in their places, the name columns widened to the very definitions initdb
    gives them (no DEFAULT where initdb has none)."""
    with qmailsql.connect(str(sandbox)) as q, \
            scratch_database(q, "qst_first") as first, \
            scratch_database(q, "qst_derived") as derived:
        for name, ddl in RELEASED_DDL.items():
            if name != "domain_quota":
                first.query(ddl.format(n=32), write=True)
        first.query("ALTER TABLE mailbox DROP COLUMN deny_services, DROP COLUMN quota_size, "
                    "DROP COLUMN quota_count", write=True)
        schema.initdb(derived, 64)
        changes = schema.migrate(first, 64)
        assert changes[:4] == ["added mailbox.deny_services", "added mailbox.quota_size",
                               "added mailbox.quota_count", "created table domain_quota"]
        assert show_create(first) == show_create(derived)


def test_migrate_widens_and_never_narrows(sandbox, username_widths_restored):
    with qmailsql.connect(str(sandbox)) as q:
        assert set(widths(q).values()) == {32}
        changes = schema.migrate(q.directory, 128)
        assert "widened mailbox.username: 32 -> 128" in changes and len(changes) == 5
        assert set(widths(q).values()) == {128}
        assert schema.migrate(q.directory, 64) == []
        assert set(widths(q).values()) == {128}
        r = subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", str(sandbox),
                            "migrate", "--userlen", "128"], capture_output=True, text=True)
        assert r.returncode == 0 and "nothing to do" in r.stdout


@pytest.mark.parametrize("n", [1, 256])
def test_userlen_bounds(db, n):
    with pytest.raises(ValueError, match="between 2 and 255"):
        schema.initdb(db.directory, n)


def index_columns(q, table):
    """{index name: [columns in order]} of TABLE."""
    out = {}
    for name, column in q.directory.query(
            "SELECT index_name, column_name FROM information_schema.statistics WHERE "
            "table_schema = DATABASE() AND table_name = %s ORDER BY index_name, seq_in_index",
            (table,)):
        out.setdefault(name, []).append(column)
    return out


def test_migrate_adds_the_lookup_indexes_an_old_table_lacks(sandbox, indexes_restored):
    """A virtual table from the original patch has no key on virtual_host: every lookup
    then reads the whole table. migrate adds what the lookups need (index-only probes);
    doctor says so until then."""
    with qmailsql.connect(str(sandbox)) as q:
        assert ["virtual_host", "virtual_username"] in index_columns(q, "virtual").values()
        assert schema.missing_indexes(q.directory) == []
        q.directory.query("ALTER TABLE virtual DROP INDEX address", write=True)
        q.directory.query("ALTER TABLE alias DROP INDEX user_alias", write=True)
        assert [t for t, _, _ in schema.missing_indexes(q.directory)] == ["alias",
                                                                           "virtual"]
        report = doctor.Doctor(str(sandbox)).run()
        found = report.by_check("schema-index-missing")
        assert len(found) == 2 and all("qmailsql migrate" in f.fix for f in found)
        r = subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", str(sandbox),
                            "migrate"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "added index" in r.stdout and "virtual (virtual_host, virtual_username)" \
            in r.stdout, r.stdout
        assert schema.missing_indexes(q.directory) == []
        assert ["virtual_host", "virtual_username"] in index_columns(q, "virtual").values()
        assert ["username", "alias"] in index_columns(q, "alias").values()
        assert not doctor.Doctor(str(sandbox)).run().by_check("schema-index-missing")
        assert schema.migrate(q.directory, 32) == []  # idempotent


def test_migrate_adds_the_service_bars_column_to_an_old_table(db, sandbox):
    """A mailbox table from before per-service bars: `migrate` (no --userlen needed)
    adds deny_services, rows keep their values and are barred from nothing."""
    d = db.directory
    add_mailbox(db, "old", home="/h", uid=1, gid=1)
    d.query("ALTER TABLE mailbox DROP COLUMN deny_services", write=True)
    try:
        r = subprocess.run([sys.executable, "-m", "qmailsql", "--qmail-dir", str(sandbox),
                            "migrate"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "added mailbox.deny_services" in r.stdout
        rows = d.query("SELECT username, deny_services FROM mailbox", write=True)
        assert [(u, v) for u, v in rows] == [("old", "")]
        assert schema.migrate(d) == []  # idempotent
    finally:
        if ("mailbox", "deny_services") not in schema.column_widths(d):
            mailbox = schema.TABLES["mailbox"]
            d.query(mailbox.add_column_sql(mailbox.column("deny_services"), 32), write=True)


def domain_lookup_plan(q, user):
    """{table alias: (access type, index used)} of the quota domain-default lookup."""
    rows = q.directory.query("EXPLAIN " + quota.DOMAIN_DEFAULT_SQL, (user,), write=True)
    return {r[2]: (r[3], r[5]) for r in rows}


def test_the_quota_domain_lookup_probes_an_index_on_virtual_username(db, sandbox,
                                                                      indexes_restored):
    """quota.mailbox_limits finds a mailbox's domains by virtual.username: initdb gives
    it an index, so it reads that mailbox's rows only; on a table without it doctor says
    so and migrate adds it."""
    d = db.directory
    try:
        for n in range(40):
            host = "d%02d.example" % n
            d.query("INSERT INTO domain_quota (host, quota_size) VALUES (%s, %s)",
                    (host, 1000 + n), write=True)
            for u in range(25):
                add_virtual(db, "%s-u%02d" % (host, u), "", "u%02d" % u, host)
        d.query("ANALYZE TABLE virtual, domain_quota", write=True)
        assert domain_lookup_plan(db, "d07.example-u03")["v"] == ("ref", "username")
        d.query("ALTER TABLE virtual DROP INDEX username", write=True)
        assert schema.missing_indexes(d) == [("virtual", "username", ["username"])]
        assert domain_lookup_plan(db, "d07.example-u03")["v"][1] != "username"
        [f] = doctor.Doctor(str(sandbox)).run().by_check("schema-index-missing")
        assert "table virtual has no index starting with (username)" in f.what
        assert "quota look-up" in f.what and "every delivery" not in f.what  # what it slows
        assert schema.migrate(d) == ["added index username on virtual (username)"]
        assert domain_lookup_plan(db, "d07.example-u03")["v"] == ("ref", "username")
        assert not doctor.Doctor(str(sandbox)).run().by_check("schema-index-missing")
    finally:
        d.query("DELETE FROM domain_quota", write=True)
