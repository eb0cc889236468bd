"""The tables (SPEC section 3): `qmailsql initdb` creates them, `migrate` widens them
and adds what later releases added (the quota columns and table).

Column names are the original patch's, so existing dumps load unchanged.
DDL cannot take parameters; the only thing formatted into it is USERLEN, an int.
"""

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
    # Maildir++ quota defaults of a virtual domain (qmailsql/quota.py)
    "domain_quota": """CREATE TABLE IF NOT EXISTS domain_quota (
  host VARCHAR(255) NOT NULL,
  quota_size BIGINT UNSIGNED NULL DEFAULT NULL,
  quota_count BIGINT UNSIGNED NULL DEFAULT NULL,
  PRIMARY KEY (host)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci""",
}

# columns added after the first release: `migrate` adds them to existing tables
# (NULL: no limit of the mailbox's own; see qmailsql/quota.py)
ADDED_COLUMNS = {
    "mailbox": [("quota_size", "BIGINT UNSIGNED NULL DEFAULT NULL"),
                ("quota_count", "BIGINT UNSIGNED NULL DEFAULT NULL")],
}

# columns that hold user names, widened by --userlen
USERNAME_COLUMNS = {
    "mailbox": ["username"],
    "alias": ["username", "alias"],
    "virtual": ["username", "virtual_username"],
}


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


def migrate(directory, userlen=None):
    """Add missing tables and columns; widen the username columns to USERLEN (never
    narrows; None: leave the widths). Returns the changes."""
    changes = add_missing(directory, userlen or 32)
    if userlen is None:
        return changes
    userlen = check_userlen(userlen)
    widths = column_widths(directory)
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
                changes.append("%s.%s: %d -> %d" % (table, column, width, userlen))
    return changes


def add_missing(directory, userlen=32):
    """Create the tables and add the ADDED_COLUMNS that an older schema lacks."""
    widths = column_widths(directory)
    tables = {t for t, _ in widths}
    changes = []
    if not ({"mailbox", "alias", "virtual", "rcpthosts"} & tables):
        return changes  # no schema at all: that is initdb's job
    for name in initdb(directory, userlen):
        changes.append("created table %s" % name)
    for table, columns in ADDED_COLUMNS.items():
        for column, ddl in columns:
            if table in tables and (table, column) not in widths:
                directory.query("ALTER TABLE `%s` ADD `%s` %s" % (table, column, ddl),
                                write=True)
                changes.append("added %s.%s" % (table, column))
    return changes
