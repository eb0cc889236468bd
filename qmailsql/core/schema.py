"""The database and its tables (SPEC 2, 3): `qmailsql initdb` creates them, `migrate`
widens them and adds the columns, tables and indexes later versions brought (service
bars, the quota columns and domain_quota), `grant` gives the daemon's login exactly what
it needs.

The tables are data (TABLES below): initdb's CREATE TABLE, migrate's ALTER TABLE and
the doctor's column checks all come from it. DDL cannot take parameters; what is
formatted into it is that data, USERLEN (an int) and the database name, checked by
identifier() first. Every other value is a parameter.
"""
import dataclasses
import re

from qmailsql.core import db


@dataclasses.dataclass(frozen=True)
class Column:
    """A column: NAME and its SQL type with options. `{n}` in TYPE marks a column that
    holds user names: USERLEN wide, widened by `migrate --userlen`. ADDED: it came after
    the first release, so `migrate` adds it to an existing table. NEEDED=False: without
    it a feature is off rather than the lookups failing (the quota columns: quota.py
    reads them as "no limits" and its own doctor check says so), so the column check
    does not report it."""
    name: str
    type: str
    added: bool = False
    needed: bool = True

    @property
    def username(self):
        return "{n}" in self.type

    def sql(self, userlen):
        """Its definition, as CREATE TABLE and ALTER TABLE ... ADD/MODIFY take it."""
        return "%s %s" % (self.name, self.type.format(n=userlen))


@dataclasses.dataclass(frozen=True)
class Key:
    """An index: NAME over COLUMNS (in order). SLOW: what reads rows one by one
    without it (for the doctor's finding)."""
    name: str
    columns: tuple
    unique: bool = False
    slow: str = ("every lookup there reads the table (or the whole domain) row by row, "
                 "which slows every delivery down as it grows")

    def sql(self):
        return "%sKEY %s (%s)" % ("UNIQUE " if self.unique else "", self.name,
                                  ", ".join(self.columns))


def starts_with(columns, wanted):
    """Whether an index over COLUMNS serves a lookup on WANTED (its leading columns)."""
    return list(columns[:len(wanted)]) == list(wanted)


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: its COLUMNS in order, PRIMARY key columns, further KEYS, and LOOKUPS:
    the indexes the lookups need (an index must start with their columns; initdb makes
    those that no key above starts with, migrate adds them to older tables under that
    name). ADDED and NEEDED as for a Column."""
    name: str
    columns: tuple
    primary: tuple
    keys: tuple = ()
    lookups: tuple = ()
    added: bool = False
    needed: bool = True

    def column(self, name):
        return next(c for c in self.columns if c.name == name)

    def indexes(self):
        """The Keys besides the primary key that CREATE TABLE makes."""
        made = [self.primary] + [k.columns for k in self.keys]
        return list(self.keys) + [k for k in self.lookups
                                  if not any(starts_with(c, k.columns) for c in made)]

    def create_sql(self, userlen):
        lines = [c.sql(userlen) for c in self.columns]
        lines.append("PRIMARY KEY (%s)" % ", ".join(self.primary))
        lines += [k.sql() for k in self.indexes()]
        return ("CREATE TABLE IF NOT EXISTS %s (\n  %s\n) ENGINE=InnoDB DEFAULT "
                "CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
                % (self.name, ",\n  ".join(lines)))

    def place(self, column):
        """Where CREATE TABLE has COLUMN, for ALTER TABLE ... ADD or MODIFY."""
        at = self.columns.index(column)
        return " AFTER %s" % self.columns[at - 1].name if at else " FIRST"

    def add_column_sql(self, column, userlen):
        return "ALTER TABLE `%s` ADD COLUMN %s%s" % (self.name, column.sql(userlen),
                                                    self.place(column))


NAME = "VARCHAR({n}) NOT NULL"
NAME_OR_EMPTY = "VARCHAR({n}) NOT NULL DEFAULT ''"
TEXT = "VARCHAR(255) NOT NULL"
TEXT_OR_EMPTY = "VARCHAR(255) NOT NULL DEFAULT ''"
ID = "INT UNSIGNED NOT NULL AUTO_INCREMENT"
LIMIT = "BIGINT UNSIGNED NULL DEFAULT NULL"  # NULL: no limit of its own (core/quota.py)

# Column names are the original patch's, so existing dumps load unchanged.
TABLES = {t.name: t for t in (
    Table("mailbox", (
        Column("username", NAME),
        Column("uid", "INT UNSIGNED NOT NULL"),
        Column("gid", "INT UNSIGNED NOT NULL"),
        Column("home", TEXT),
        Column("password", TEXT_OR_EMPTY),
        Column("password_type", "ENUM('Password','Crypt-Password','MySQL-Password') "
                                "NOT NULL DEFAULT 'Crypt-Password'"),
        Column("suspended", "ENUM('N','Y') NOT NULL DEFAULT 'N'"),
        # per-service bars (qmailsql/core/services.py)
        Column("deny_services", "SET('pop3','imap','smtp') NOT NULL DEFAULT ''", added=True),
        # Maildir++ limits (qmailsql/core/quota.py)
        Column("quota_size", LIMIT, added=True, needed=False),
        Column("quota_count", LIMIT, added=True, needed=False),
    ), primary=("username",), lookups=(Key("username", ("username",)),)),
    Table("alias", (
        Column("id", ID),
        Column("username", NAME),
        Column("alias", NAME_OR_EMPTY),
        Column("alias_username", TEXT_OR_EMPTY),
        Column("alias_host", TEXT_OR_EMPTY),
    ), primary=("id",), lookups=(Key("user_alias", ("username", "alias")),)),
    Table("virtual", (
        Column("id", ID),
        Column("username", NAME),
        Column("ext", TEXT_OR_EMPTY),
        Column("virtual_username", NAME_OR_EMPTY),
        Column("virtual_host", TEXT),
    ), primary=("id",), keys=(Key("address", ("virtual_host", "virtual_username"),
                                  unique=True),),
        # an address; and a mailbox's domains, for its quota default (core/quota.py)
        lookups=(Key("host_user", ("virtual_host", "virtual_username")),
                 Key("username", ("username",), slow=(
                     "the quota look-up of a mailbox's domain default (localq, Dovecot's "
                     "userdb) reads every virtual row of each domain that has one, which "
                     "slows those look-ups down as the domains grow")))),
    Table("rcpthosts", (
        Column("host", TEXT),
    ), primary=("host",)),
    # Maildir++ quota defaults of a virtual domain (qmailsql/core/quota.py)
    Table("domain_quota", (
        Column("host", TEXT),
        Column("quota_size", LIMIT),
        Column("quota_count", LIMIT),
    ), primary=("host",), added=True, needed=False),
)}

# what the lookups need: (table, name for a new index, the columns an index must start
# with); initdb's keys have them, tables from the original patch may not
LOOKUP_INDEXES = [(t.name, k.name, list(k.columns)) for t in TABLES.values()
                  for k in t.lookups]
# the columns that hold user names, widened by --userlen: {table: [column]}
USERNAME_COLUMNS = {t.name: [c.name for c in t.columns if c.username]
                    for t in TABLES.values() if any(c.username for c in t.columns)}


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
    for name, table in TABLES.items():
        if name not in existing:
            directory.query(table.create_sql(userlen), write=True)
            made.append(name)
    return made


def column_widths(directory):
    """{(table, column): width} for the username-like columns."""
    rows = directory.query(
        "SELECT table_name, column_name, character_maximum_length "
        "FROM information_schema.columns WHERE table_schema = DATABASE()", write=True)
    return {(t, c): w for t, c, w in rows}


def lookup_key(table, name):
    """The Key of TABLE's lookups called NAME."""
    return next(k for k in TABLES[table].lookups if k.name == name)


def missing_indexes(directory):
    """[(table, name, columns)] of LOOKUP_INDEXES that no index of an existing table
    starts with (so a lookup there reads the table, or a whole domain, row by row)."""
    starts = {}
    for table, name, column in directory.query(
            "SELECT table_name, index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index"):
        starts.setdefault((table, name), []).append(column)
    tables = {t for t, _ in starts} | {r[0] for r in directory.query("SHOW TABLES")}
    return [(table, name, columns) for table, name, columns in LOOKUP_INDEXES
            if table in tables and not any(t == table and starts_with(cols, columns)
                                           for (t, _), cols in starts.items())]


def add_indexes(directory):
    """Add the missing LOOKUP_INDEXES; the changes, as sentences."""
    changes = []
    for table, name, columns in missing_indexes(directory):
        directory.query("ALTER TABLE `%s` ADD %s" % (table, Key(name, tuple(columns)).sql()),
                        write=True)
        changes.append("added index %s on %s (%s)" % (name, table, ", ".join(columns)))
    return changes


def migrate(directory, userlen=None):
    """Add the added columns a table lacks and the added tables that are missing, widen
    the username columns to USERLEN (never narrows; None: leave the widths) and add the
    indexes the lookups need. Returns the changes."""
    widths = column_widths(directory)
    tables = {t for t, _ in widths}
    changes = []
    for table in TABLES.values():
        if table.added:
            if table.name not in tables:
                directory.query(table.create_sql(check_userlen(userlen or 32)), write=True)
                changes.append("created table %s" % table.name)
            continue
        for column in table.columns:
            if not column.added:
                continue
            if table.name not in tables:
                raise ValueError("table %s does not exist: run `qmailsql initdb` first"
                                 % table.name)
            if (table.name, column.name) not in widths:
                directory.query(table.add_column_sql(column, check_userlen(userlen or 32)),
                                write=True)
                changes.append("added %s.%s" % (table.name, column.name))
    if userlen is None:
        return changes + add_indexes(directory)
    userlen = check_userlen(userlen)
    for table, columns in USERNAME_COLUMNS.items():
        for name in columns:
            width = widths.get((table, name))
            if width is None:
                raise ValueError("table %s has no column %s: run `qmailsql initdb` first"
                                 % (table, name))
            if width < userlen:
                directory.query("ALTER TABLE `%s` MODIFY %s"
                                % (table, TABLES[table].column(name).sql(userlen)),
                                write=True)
                changes.append("widened %s.%s: %d -> %d" % (table, name, width, userlen))
    return changes + add_indexes(directory)
