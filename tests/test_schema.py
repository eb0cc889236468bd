"""initdb / migrate (SPEC section 3) on a real server."""
import subprocess
import sys

import pytest

from qmailsql import schema


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


def test_migrate_widens_and_never_narrows(sandbox):
    import qmailsql
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
        # back to the default so other tests see a stock schema
        for table, columns in schema.USERNAME_COLUMNS.items():
            for c in columns:
                q.directory.query("ALTER TABLE `%s` MODIFY `%s` VARCHAR(32) NOT NULL DEFAULT ''"
                                  % (table, c), write=True)


@pytest.mark.parametrize("n", [1, 256])
def test_userlen_bounds(db, n):
    with pytest.raises(ValueError, match="between 2 and 255"):
        schema.initdb(db.directory, n)


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
