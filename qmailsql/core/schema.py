"""The database and its tables (SPEC 2, 3): `qmailsql initdb` creates them, `migrate`
widens them and adds the columns, tables and indexes later versions brought (service
bars, the quota columns and domain_quota), `grant` gives the daemon's login exactly what
it needs.

Column names are the original patch's, so existing dumps load unchanged.
DDL cannot take parameters; what is formatted into it is USERLEN, an int, and the
database name, checked by identifier() first. Every other value is a parameter.
"""
import dataclasses
import re

from qmailsql.core import db

TABLES = {
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
    # Maildir++ quota defaults of a virtual domain (qmailsql/core/quota.py)
    "domain_quota": """CREATE TABLE IF NOT EXISTS domain_quota (
  host VARCHAR(255) NOT NULL,
  quota_size BIGINT UNSIGNED NULL DEFAULT NULL,
  quota_count BIGINT UNSIGNED NULL DEFAULT NULL,
  PRIMARY KEY (host)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
}

# what the lookups need, by table: an index whose leading columns are these (initdb's
# keys have them; tables from the original patch may not). (name for a new one, columns)
LOOKUP_INDEXES = {
    "mailbox": ("username", ["username"]),
    "alias": ("user_alias", ["username", "alias"]),
    "virtual": ("host_user", ["virtual_host", "virtual_username"]),
}
# columns added after the first release: `migrate` adds them to existing tables
# (the old daemon names its columns, so adding one never disturbs it)
ADDED_COLUMNS = [
    ("mailbox", "deny_services", "SET('pop3','imap','smtp') NOT NULL DEFAULT '' "
                                 "AFTER suspended"),  # qmailsql/core/services.py
    # Maildir++ limits; NULL: no limit of the mailbox's own (qmailsql/core/quota.py)
    ("mailbox", "quota_size", "BIGINT UNSIGNED NULL DEFAULT NULL AFTER deny_services"),
    ("mailbox", "quota_count", "BIGINT UNSIGNED NULL DEFAULT NULL AFTER quota_size"),
]
# tables added after the first release: `migrate` creates them (from TABLES)
ADDED_TABLES = ["domain_quota"]

# columns that hold user names, widened by --userlen
USERNAME_COLUMNS = {
    "mailbox": ["username"],
    "alias": ["username", "alias"],
    "virtual": ["username", "virtual_username"],
}


# what the daemon's login needs, and all it gets (README "The DB user")
DAEMON_GRANTS = ("GRANT SELECT ON {db}.* TO %s@%s",
                 "GRANT UPDATE (password, password_type) ON {db}.`mailbox` TO %s@%s")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_$]{1,64}\Z")


def identifier(name):
    """NAME (a database) quoted for DDL; only letters, digits, _ and $ are accepted."""
    if not _IDENTIFIER.match(name or ""):
        raise ValueError("database name %r: use letters, digits, _ and $ only (1 to 64), "
                         "in the `db` line of control/sqlserver" % (name,))
    return "`%s`" % name


def create_database(admin_config):
    """CREATE DATABASE admin_config.db (utf8mb4) on the write_server unless it exists;
    True when it was created. ADMIN_CONFIG: config.as_admin()."""
    quoted = identifier(admin_config.db)
    directory = db.Directory(dataclasses.replace(admin_config, db=""))
    try:
        if directory.query("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                           (admin_config.db,), write=True):
            return False
        directory.query("CREATE DATABASE IF NOT EXISTS %s CHARACTER SET utf8mb4 "
                        "COLLATE utf8mb4_general_ci" % quoted, write=True)
        return True
    finally:
        directory.close()


def grant_daemon(directory, database, login, password, hosts):
    """Create or correct LOGIN@HOST for each of HOSTS: password PASSWORD, and exactly
    DAEMON_GRANTS on DATABASE (whatever else it had is revoked). Needs the mailbox
    table (a column grant). Returns {host: its SHOW GRANTS lines, password hidden}."""
    quoted = identifier(database)
    if not directory.query("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                           "AND table_name = 'mailbox'", (database,), write=True):
        raise ValueError("database %s has no mailbox table yet: run `qmailsql initdb` first"
                         % quoted)
    shown = {}
    for host in hosts:
        for sql, params in (
                ("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (login, host, password)),
                ("ALTER USER %s@%s IDENTIFIED BY %s", (login, host, password)),
                ("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (login, host))):
            directory.query(sql, params, write=True)
        for sql in DAEMON_GRANTS:
            directory.query(sql.format(db=quoted), (login, host), write=True)
        rows = directory.query("SHOW GRANTS FOR %s@%s", (login, host), write=True)
        shown[host] = [re.sub(r"PASSWORD '[^']*'", "PASSWORD '...'", r[0]) for r in rows]
    return shown


def check_userlen(userlen):
    userlen = int(userlen)
    if not 2 <= userlen <= 255:
        raise ValueError("--userlen must be between 2 and 255 (index limits), not %d" % userlen)
    return userlen


def initdb(directory, userlen=32):
    """Create every missing table; existing tables and rows are left alone."""
    userlen = check_userlen(userlen)
    made = []
    existing = {r[0] for r in directory.query("SHOW TABLES", write=True)}
    for name, ddl in TABLES.items():
        if name not in existing:
            directory.query(ddl.format(n=userlen), write=True)
            made.append(name)
    return made


def column_widths(directory):
    """{(table, column): width} for the username-like columns."""
    rows = directory.query(
        "SELECT table_name, column_name, character_maximum_length "
        "FROM information_schema.columns WHERE table_schema = DATABASE()", write=True)
    return {(t, c): w for t, c, w in rows}


def missing_indexes(directory):
    """[(table, name, columns)] of LOOKUP_INDEXES that no index of an existing table
    starts with (so a lookup there reads the table, or a whole domain, row by row)."""
    starts = {}
    for table, name, column in directory.query(
            "SELECT table_name, index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index"):
        starts.setdefault((table, name), []).append(column)
    tables = {t for t, _ in starts} | {r[0] for r in directory.query("SHOW TABLES")}
    out = []
    for table, (name, columns) in LOOKUP_INDEXES.items():
        if table in tables and not any(t == table and cols[:len(columns)] == columns
                                       for (t, _), cols in starts.items()):
            out.append((table, name, columns))
    return out


def add_indexes(directory):
    """Add the missing LOOKUP_INDEXES; the changes, as sentences."""
    changes = []
    for table, name, columns in missing_indexes(directory):
        directory.query("ALTER TABLE `%s` ADD KEY `%s` (%s)" % (
            table, name, ", ".join("`%s`" % c for c in columns)), write=True)
        changes.append("added index %s on %s (%s)" % (name, table, ", ".join(columns)))
    return changes


def migrate(directory, userlen=None):
    """Add the ADDED_COLUMNS a table lacks and the ADDED_TABLES that are missing, widen
    the username columns to USERLEN (never narrows; None: leave the widths) and add the
    indexes the lookups need. Returns the changes."""
    widths = column_widths(directory)
    tables = {t for t, _ in widths}
    changes = []
    for table, column, ddl in ADDED_COLUMNS:
        if table not in tables:
            raise ValueError("table %s does not exist: run `qmailsql initdb` first" % table)
        if (table, column) not in widths:
            directory.query("ALTER TABLE `%s` ADD COLUMN `%s` %s" % (table, column, ddl),
                            write=True)
            changes.append("added %s.%s" % (table, column))
    for table in ADDED_TABLES:
        if table not in tables:
            directory.query(TABLES[table].format(n=check_userlen(userlen or 32)), write=True)
            changes.append("created table %s" % table)
    if userlen is None:
        return changes + add_indexes(directory)
    userlen = check_userlen(userlen)
    for table, columns in USERNAME_COLUMNS.items():
        for column in columns:
            width = widths.get((table, column))
            if width is None:
                raise ValueError("table %s has no column %s: run `qmailsql initdb` first"
                                 % (table, column))
            if width < userlen:
                default = "" if (table, column) == ("mailbox", "username") else " DEFAULT ''"
                directory.query("ALTER TABLE `%s` MODIFY `%s` VARCHAR(%d) NOT NULL%s"
                                % (table, column, userlen, default), write=True)
                changes.append("widened %s.%s: %d -> %d" % (table, column, width, userlen))
    return changes + add_indexes(directory)
