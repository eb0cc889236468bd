"""initdb / migrate (SPEC section 3) on a real server."""
import subprocess
import sys

import pytest

import qmailsql
from qmailsql.admin import doctor
from qmailsql.core import schema


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
                q.directory.query("ALTER TABLE `%s` MODIFY `%s` VARCHAR(32) NOT NULL DEFAULT ''"
                                  % (table, c), write=True)


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


def test_migrate_adds_the_lookup_indexes_an_old_table_lacks(sandbox):
    """A virtual table from the original patch has no key on virtual_host: every lookup
    then reads the whole table. migrate adds what the lookups need (index-only probes);
    doctor says so until then."""
    with qmailsql.connect(str(sandbox)) as q:
        assert ["virtual_host", "virtual_username"] in index_columns(q, "virtual").values()
        assert schema.missing_indexes(q.directory) == []
        q.directory.query("ALTER TABLE virtual DROP INDEX address", write=True)
        q.directory.query("ALTER TABLE alias DROP INDEX user_alias", write=True)
        try:
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
        finally:
            # back to the stock schema for the other tests
            for table, stock_key in (("virtual", "UNIQUE KEY address (virtual_host, "
                                      "virtual_username)"),
                                     ("alias", "KEY user_alias (username, alias)")):
                for name in index_columns(q, table):
                    if name != "PRIMARY":
                        q.directory.query("ALTER TABLE `%s` DROP INDEX `%s`" % (table, name),
                                          write=True)
                q.directory.query("ALTER TABLE `%s` ADD %s" % (table, stock_key), write=True)


def test_migrate_adds_the_service_bars_column_to_an_old_table(db, sandbox):
    """A mailbox table from before per-service bars: `migrate` (no --userlen needed)
    adds deny_services, rows keep their values and are barred from nothing."""
    d = db.directory
    d.query("INSERT INTO mailbox (username, uid, gid, home) VALUES ('old', 1, 1, '/h')",
            write=True)
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
            d.query("ALTER TABLE mailbox ADD COLUMN deny_services %s" % schema.ADDED_COLUMNS[0][2],
                    write=True)
