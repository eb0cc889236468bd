"""The DB: every server (and the write_server) connected to separately; the schema
(tables, columns, username widths, the lookups' indexes); and Tables, the handle the
row scans stream through (one server-side cursor per table, on a connection of its own)."""
import time

import MySQLdb
import MySQLdb.cursors

from qmailsql.core import db, schema

from .common import q

FETCH = 5000
ER_ACCESS_DENIED, ER_DBACCESS_DENIED, ER_BAD_DB = 1045, 1044, 1049
# the tables whose columns the lookups need (domain_quota and the quota columns are
# the quota check's: without them quotas are off, see Column.needed)
CHECKED = [t for t in schema.TABLES.values() if t.needed]


def check_servers(ctx, cfg):
    """Connect to every server separately; True if one of the read servers answers."""
    servers = list(cfg.servers)
    if cfg.write_server is not None and cfg.write_server not in servers:
        servers.append(cfg.write_server)
    any_ok = False
    for server in servers:
        role = "write_server" if server not in cfg.servers else "server"
        try:
            conn = db.connect(cfg, server)
        except MySQLdb.Error as e:
            server_finding(ctx, cfg, server, role, e)
            continue
        conn.close()
        if server in cfg.servers:
            any_ok = True
    return any_ok


def server_finding(ctx, cfg, server, role, err):
    args = getattr(err, "args", ())
    code = args[0] if args and isinstance(args[0], int) else 0
    text = args[1] if len(args) > 1 else str(err)
    where = "%s %s" % (role, server)
    # `qmailsql grant` makes the login as control/sqlserver says, on the write_server
    grant = "qmailsql --qmail-dir %s grant" % q(ctx.qmail_dir)
    if not server.socket:
        grant += "  (with --host THIS-MAIL-HOST as %s sees it)" % server
    if code == ER_ACCESS_DENIED:
        ctx.add("db-login-refused", "error", "%s refuses login %r: %s" % (where, cfg.login,
                                                                           text),
                 "%s  (as the DB administrator: creates the login with %s's password "
                 "and exactly SELECT on %s.* plus UPDATE (password, password_type) on "
                 "%s.mailbox)" % (grant, ctx.sqlserver_path, cfg.db, cfg.db))
    elif code == ER_DBACCESS_DENIED:
        ctx.add("db-login-refused", "error", "%s: login %r may not use database %r: %s"
                 % (where, cfg.login, cfg.db, text),
                 "%s  (grants SELECT ON `%s`.* and UPDATE (password, password_type) on "
                 "`%s`.mailbox)" % (grant, cfg.db, cfg.db))
    elif code == ER_BAD_DB:
        ctx.add("db-unreachable", "error", "%s has no database %r: %s" % (where, cfg.db, text),
                 "qmailsql --qmail-dir %s initdb && %s  (as the DB administrator)"
                 % (q(ctx.qmail_dir), grant))
    else:
        how = ("mysql -S %s -u %s -p %s" % (q(server.socket), q(cfg.login), q(cfg.db))
               if server.socket else "mysql -h %s -P %d -u %s -p %s"
               % (q(server.host), server.port, q(cfg.login), q(cfg.db)))
        ctx.add("db-unreachable", "error", "%s is unreachable: %s (code %s); mail waits "
                 "(exit 111) while no server answers, and qmail-send logs `deferral: "
                 "qmail-getpw: DB lookup ... failed: no DB server answered (...)`"
                 % (where, text, code or "?"),
                 "start MariaDB there or correct the `%s` line in %s; test with: %s"
                 % (role, ctx.sqlserver_path, how))


class Schema:
    """What information_schema says: {table: columns}, {(table, column): width},
    {"username": mailbox.username's collation}, {table: estimated rows}."""

    def __init__(self, columns, collations, widths, estimates):
        self.columns, self.collations = columns, collations
        self.widths, self.estimates = widths, estimates


class Tables:
    """The DB as the doctor reads it: a Directory for small queries, one streaming
    connection for the table scans (open_stream), closed by close()."""

    def __init__(self, ctx, config):
        self.ctx = ctx
        self.config = config
        self.directory = db.Directory(config)
        self.stream_conn = None

    def close(self):
        if self.stream_conn is not None:
            try:
                self.stream_conn.close()
            except Exception:
                pass
            self.stream_conn = None
        self.directory.close()

    def read_schema(self):
        names = [t.name for t in CHECKED]
        marks = ", ".join(["%s"] * len(names))
        rows = self.directory.query(
            "SELECT table_name, column_name, character_maximum_length, collation_name "
            "FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name IN (%s)" % marks, names)
        columns, widths, collations = {}, {}, {}
        for t, c, w, coll in rows:
            columns.setdefault(t, set()).add(c)
            widths[(t, c)] = w
            if (t, c) == ("mailbox", "username"):
                collations["username"] = coll
        est = {}
        for t, n in self.directory.query(
                "SELECT table_name, table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name IN (%s)" % marks, names):
            est[t] = int(n or 0)
        return Schema(columns, collations, widths, est)

    def open_stream(self):
        last = None
        for server in self.directory.health.order(self.config.servers):
            try:
                conn = db.connect(self.config, server)
                break
            except MySQLdb.Error as e:
                last = e
        else:
            raise last or MySQLdb.OperationalError(0, "no server")
        # a long scan must not hit the client read timeout between batches
        cur = conn.cursor()
        try:
            cur.execute("SET SESSION net_write_timeout = 600")
        except MySQLdb.Error:
            pass
        cur.close()
        self.stream_conn = conn

    def stream(self, sql, table, estimate):
        cur = self.stream_conn.cursor(MySQLdb.cursors.SSCursor)
        started = time.monotonic()
        n = 0
        try:
            cur.execute(sql)
            while True:
                rows = cur.fetchmany(FETCH)
                if not rows:
                    break
                n += len(rows)
                yield rows
                self.ctx.progress.update(table, n, estimate, started)
        finally:
            cur.close()
            self.ctx.report.rows[table] = n
            self.ctx.progress.update(table, n, estimate, started, force=True)

    @staticmethod
    def select(table, wanted, present):
        cols = [c if c in present else "NULL" for c in wanted]
        return "SELECT %s FROM `%s`" % (", ".join(cols), table)


def check_schema(ctx, cfg, found, directory):
    """FOUND: a Schema."""
    columns, widths, userlen = found.columns, found.widths, cfg.userlen
    for table in CHECKED:
        if table.name not in columns:
            ctx.add("schema-missing-table", "error", "table %s does not exist in database %r"
                     % (table.name, cfg.db), "qmailsql initdb --userlen %d" % userlen)
            continue
        for col in table.columns:
            if not col.needed or col.name in columns[table.name]:
                continue
            if col.added:
                ctx.add("schema-missing-column", "error",
                         "table %s has no column %s (tables older than this qmailsql): "
                         "logins fail with a temporary error" % (table.name, col.name),
                         "qmailsql migrate")
            else:
                ctx.add("schema-missing-column", "error",
                         "table %s has no column %s (an old qmail-mysql layout?): queries "
                         "on it fail and mail is deferred" % (table.name, col.name),
                         add_column_fix(table, col, userlen))
    for table, cols in schema.USERNAME_COLUMNS.items():
        for col in cols:
            w = widths.get((table, col))
            if w is not None and w < userlen:
                ctx.add("schema-userlen", "error", "%s.%s is VARCHAR(%d), narrower than "
                         "userlen %d: longer names are cut off or refused"
                         % (table, col, w, userlen),
                         "qmailsql migrate --userlen %d" % userlen)
    for table, name, cols in schema.missing_indexes(directory):
        ctx.add("schema-index-missing", "error",
                 "table %s has no index starting with (%s): %s" % (
                     table, ", ".join(cols), schema.lookup_key(table, name).slow),
                 "qmailsql migrate --userlen %d  (adds it, and widens nothing narrower)"
                 % userlen)


def add_column_fix(table, column, userlen):
    """ALTER TABLE adding COLUMN as initdb defines it, at the end; an AUTO_INCREMENT id
    must be a key, so it comes first as the primary key."""
    key = " PRIMARY KEY FIRST" if "AUTO_INCREMENT" in column.type else ""
    return "ALTER TABLE `%s` ADD %s%s;" % (table.name, column.sql(userlen), key)
