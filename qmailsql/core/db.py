"""The one place that talks to MySQL/MariaDB: connections, failover, parameterised queries.

Every query here takes its values as parameters; nothing is pasted into SQL text.
Trouble of any kind becomes DirectoryUnavailable, which callers turn into exit 111.

Routing. control/sqlserver lists servers (`server`, tried in order, sockets first) and
one `write_server` (default: the first server). Reads go to the first healthy server;
writes (`query(..., write=True)`) go to the write_server only, on their own connection,
so a rehash never moves the reads of a host off its nearest replica. A server that
fails to connect, or loses the connection mid-query, is skipped for
ServerHealth.cool_down seconds while others remain; once that has passed, the next read
tries it again (fail-back to the preferred server). A statement the server refuses (a
write on a read_only replica, a lock wait timeout, a bad column) is not retried on
another server: it is DirectoryUnavailable at once.

Replication lag (the lag rule). A replica may not yet have a row the primary already
has. Finding a row on a lagging replica is harmless, and so is missing one on the way
to another answer (no virtual host, no virtual row, then a mailbox). Only a final
answer that would send the mail to the alias user (or 116), or let stock qmail-local
bounce it, must not come from a lagging replica: it would bounce a just-created user's
mail. So such an answer, when it came from a server other than the write_server, is
worked out again on the write_server (`must_confirm()`, `on_write_server()`; the
resolver and the alias lookups decide what is final), and that answer is the one
used. Hits cost the primary nothing; if the write_server cannot be reached, the
answer is DirectoryUnavailable (exit 111: the mail waits), never a bounce. Changes to
existing rows (a new home) are still seen with the replica's delay.

With no `write_server` line the servers are peers (Galera, a failover pair): every
answer is taken from whichever answers first, nothing is asked twice, and a dead
first server costs nothing once it is cooling down.
"""
import threading
import time
from collections import namedtuple
from decimal import Decimal

import MySQLdb

from qmailsql.core.config import ADMIN_GROUP, describe_admin

COOL_DOWN = 30.0  # seconds a server that failed is skipped while others remain

# Client-side errors (CR_*, 2000-2999) mean the connection or the server is gone:
# fail over. These server errors mean the same; any other server error is an answer
# about the statement, the same on every server: no failover.
SERVER_GOING_AWAY = {
    1040,  # ER_CON_COUNT_ERROR, too many connections
    1053,  # ER_SERVER_SHUTDOWN
    1077,  # ER_NORMAL_SHUTDOWN
    1152,  # ER_ABORTING_CONNECTION
    1184,  # ER_NEW_ABORTING_CONNECTION
    1927,  # ER_CONNECTION_KILLED
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
}
CR_SERVER_GONE_ERROR = 2006  # "server has gone away": also an idle connection it closed
# ... except these, which are about the statement: too big for the server's
# max_allowed_packet (ER_NET_PACKET_TOO_LARGE) or for the client's (CR_NET_PACKET_TOO_LARGE)
STATEMENT_TOO_BIG = {1153, 2020}
PACKET_ROOM = 1024  # of max_allowed_packet, kept for the packet's own header


class DirectoryUnavailable(Exception):
    """The DB can't answer now (down, timeout, refused login): try again later."""


class StatementRefused(DirectoryUnavailable):
    """The server answered that it will not run the statement (a missing column, no
    grant, read_only): the same on every server."""


class StatementTooLong(DirectoryUnavailable):
    """A statement longer than the server's max_allowed_packet: not sent."""


class NotFetched(Exception):
    """A sealed Batch was asked a read it did not fetch ahead."""


# One SELECT of a read: SELECT COLUMNS (WIDTH of them) FROM SOURCE WHERE WHERE REST,
# PARAMS (a tuple) for WHERE's marks (REST has none: ORDER BY with LIMIT, or LIMIT).
# A read is a tuple of Parts, its rows theirs one after another (UNION ALL), so that
# Batch can send many reads as one statement. Without LIMIT no ORDER BY: callers sort.
Part = namedtuple("Part", "columns width source where params rest", defaults=("",))


def part_sql(p, tag=None):
    head = "SELECT " if tag is None else "SELECT %d, " % tag
    return "%s%s FROM %s WHERE %s%s" % (head, p.columns, p.source, p.where,
                                         " " + p.rest if p.rest else "")


def union(parts, tags=None):
    """(sql, params) of the read PARTS; with TAGS (one int per part) each row starts
    with its part's tag."""
    if len(parts) == 1 and tags is None:
        p, = parts
        return part_sql(p), p.params
    sql = []
    params = []
    for i, p in enumerate(parts):
        sql.append("(" + part_sql(p, None if tags is None else tags[i]) + ")")
        params.extend(p.params)
    return " UNION ALL ".join(sql), params


def select(directory, parts):
    """The rows of the read PARTS (a tuple of Part) from DIRECTORY, in one statement."""
    return directory.query(*union(parts))


class ServerHealth:
    """Shared by every connection of a process: which servers failed recently.

    COOL_DOWN: seconds a failed server is tried only after the healthy ones
    (default db.COOL_DOWN; 0 turns the skipping off).
    """

    def __init__(self, cool_down=COOL_DOWN):
        self.cool_down = cool_down
        self._failed = {}
        self._lock = threading.Lock()

    def order(self, servers):
        """Healthy servers in configured order, then cooling ones (best first)."""
        now = time.monotonic()
        with self._lock:
            ok = [s for s in servers if self._failed.get(s, 0) <= now]
            cooling = sorted((s for s in servers if self._failed.get(s, 0) > now),
                             key=lambda s: self._failed[s])
        return ok + cooling

    def cooling(self, server):
        with self._lock:
            return self._failed.get(server, 0) > time.monotonic()

    def failed(self, server):
        with self._lock:
            self._failed[server] = time.monotonic() + self.cool_down

    def ok(self, server):
        with self._lock:
            self._failed.pop(server, None)


def connect_args(config, server):
    """MySQLdb.connect() arguments for SERVER.

    TLS (any ssl_* key in control/sqlserver) applies to TCP servers; a unix socket is
    local and is used as it is. With TLS the connection fails rather than fall back to
    plain text. Given ssl_ca, the server's certificate must be signed by that CA;
    `ssl_verify yes` (the default when ssl_ca is given) also checks that the
    certificate names the host connected to (subjectAltName). `ssl_verify no` without
    ssl_ca encrypts without checking who answers. ssl_cert/ssl_key: the client
    certificate, for accounts created REQUIRE X509.

    The daemon logs in with control/sqlserver's login and password; an admin config
    (config.as_admin) with the user and password of a MariaDB option file instead.
    """
    if config.admin:  # the administrator's login: a MariaDB option file (SPEC 2)
        login = {"read_default_group": ADMIN_GROUP}
        if config.defaults_file:
            login["read_default_file"] = config.defaults_file
    else:
        login = {"user": config.login, "passwd": config.password}
    args = dict(server.connect_args(), connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout, write_timeout=config.read_timeout,
                charset="utf8mb4", use_unicode=True, autocommit=True, **login)
    if config.db:  # none: a connection that selects no database (CREATE DATABASE)
        args["db"] = config.db
    if config.ssl and not server.socket:
        # the client certificate is the daemon's identity, not the administrator's (whose
        # ssl-cert/ssl-key belong in the option file): the admin checks the server only
        mine = ("ca",) if config.admin else ("ca", "cert", "key")
        args["ssl"] = {k: config.ssl[k] for k in mine if config.ssl.get(k)}
        verify = config.ssl.get("verify", bool(config.ssl.get("ca")))
        # mysqlclient maps ssl_mode onto MariaDB's MYSQL_OPT_SSL_ENFORCE and
        # MYSQL_OPT_SSL_VERIFY_SERVER_CERT (which checks chain and host name)
        args["ssl_mode"] = "VERIFY_IDENTITY" if verify else "REQUIRED"
    return args


def connect(config, server):
    return MySQLdb.connect(**connect_args(config, server))


class _Link:
    """One connection, the server it goes to, and the longest statement that server
    takes (a longer one makes it close the connection mid-send, which looks like a
    dead server: it is refused here instead)."""
    __slots__ = ("conn", "server", "used", "max_statement")

    def __init__(self, conn, server, max_statement):
        self.conn = conn
        self.server = server
        self.used = False
        self.max_statement = max_statement


def max_statement(conn):
    """The longest statement (bytes) CONN's server takes: its max_allowed_packet."""
    cur = conn.cursor()
    try:
        cur.execute("SELECT @@max_allowed_packet")
        (value,), = cur.fetchall()
    finally:
        cur.close()
    return int(value) - PACKET_ROOM


def run(conn, sql, params):
    """SQL with PARAMS on CONN: its rows, as a cursor's fetchall() gives them, from the
    connection's own query() and store_result(): a cursor's bookkeeping costs more
    than the lookup it runs."""
    statement = sql.encode(conn.encoding)
    if params is not None:  # as a cursor fills them in
        try:
            if isinstance(params, dict):
                statement %= {(k.encode(conn.encoding) if isinstance(k, str) else k):
                              conn.literal(v) for k, v in params.items()}
            else:
                statement %= tuple(map(conn.literal, params))
        except (TypeError, ValueError) as e:
            raise MySQLdb.ProgrammingError(str(e))
    conn.query(statement)
    result = conn.store_result()
    return result.fetch_row(0) if result is not None else ()


class Directory:
    """DB connections (reconnecting, failing over); not shared between threads.

    At most two connections: one for reads, one to the write_server for writes (the
    read connection is used for both when it already goes to the write_server).
    """

    def __init__(self, config, health=None, log=None):
        self.config = config
        self.health = health or ServerHealth()
        self.log = log or (lambda msg: None)
        self._read = None
        self._write = None
        self.last_server = None   # the server that answered the last query
        self.confirmations = 0    # final answers worked out again on the write_server
        self.batch_refused_at = -1e9  # when the server last refused a Batch's statement

    # compatibility: the read connection and its server
    @property
    def conn(self):
        return self._read.conn if self._read else None

    @property
    def server(self):
        return self._read.server if self._read else None

    def close(self):
        for link in (self._read, self._write):
            if link is not None:
                try:
                    link.conn.close()
                except MySQLdb.Error:
                    pass
        self._read = self._write = None

    def _drop(self, link):
        try:
            link.conn.close()
        except MySQLdb.Error:
            pass
        if self._read is link:
            self._read = None
        if self._write is link:
            self._write = None

    def _connect(self, servers):
        problems = []
        for server in self.health.order(servers):
            try:
                conn = connect(self.config, server)
                limit = max_statement(conn)
            except (MySQLdb.Error, ValueError, TypeError) as e:
                self.health.failed(server)
                problems.append("%s: %s" % (server, _reason(e)))
                self.log("db %s unreachable: %s" % (server, _reason(e)))
                continue
            self.health.ok(server)
            return _Link(conn, server, limit)
        why = "no DB server answered (" + "; ".join(problems) + ")"
        if self.config.admin:
            why += "; " + describe_admin(self.config)
        raise DirectoryUnavailable(why)

    def _link(self, write):
        wserver = self.config.write_server
        if write:
            if self._read is not None and self._read.server == wserver:
                return self._read
            if self._write is None:
                self._write = self._connect([wserver])
            return self._write
        if self._read is not None and self._read.server != self.config.servers[0]:
            preferred = self.health.order(self.config.servers)[0]
            if preferred != self._read.server and not self.health.cooling(preferred):
                # a server listed before ours is out of its cool-down: go back to it
                self.log("db trying %s again instead of %s" % (preferred, self._read.server))
                self._drop(self._read)
        if self._read is None:
            self._read = self._connect(self.config.servers)
        return self._read

    def query(self, sql, params=(), write=False):
        """Run SQL with PARAMS; rows as tuples. One retry on a fresh connection.

        WRITE: run it on the write_server (writes, and reads that must see the newest
        data). Otherwise on the first healthy server.
        """
        size = statement_size(sql, params)
        for attempt in (1, 2):
            link = self._link(write)
            if size > link.max_statement:  # the statement's trouble, not the server's
                raise StatementTooLong(
                    "statement of up to %d bytes not sent to %s: longer than its "
                    "max_allowed_packet allows (%d)" % (size, link.server, link.max_statement))
            try:
                rows = run(link.conn, sql, params)
                link.used = True
                self.last_server = link.server
                return rows
            except MySQLdb.Error as e:
                code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
                lost = ((2000 <= code < 3000 or code in SERVER_GOING_AWAY
                         or isinstance(e, MySQLdb.InterfaceError))
                        and code not in STATEMENT_TOO_BIG)
                if not lost:
                    # the server answered: the statement is refused (read_only, lock
                    # timeout, schema problem). Another server would say the same or,
                    # worse, accept a write meant for elsewhere. Mail waits.
                    raise StatementRefused("DB error on %s: %s" % (link.server,
                                                                        _reason(e)))
                # an idle connection the server closed is not a sick server
                if not (code == CR_SERVER_GONE_ERROR and link.used and attempt == 1):
                    self.health.failed(link.server)
                self.log("db %s failed: %s" % (link.server, _reason(e)))
                self._drop(link)
                if attempt == 2:
                    raise DirectoryUnavailable("DB query failed on %s: %s"
                                               % (link.server, _reason(e)))

    def must_confirm(self):
        """Whether a final miss just read must be asked again on the write_server: there
        is a `write_server` line and the last answer came from another server."""
        return self.config.confirm_misses and self.last_server != self.config.write_server

    def on_write_server(self):
        """The same reads, every one sent to the write_server (the lag rule's second look)."""
        self.confirmations += 1
        self.log("db final miss on %s: asking write_server %s" % (self.last_server,
                                                                  self.config.write_server))
        return WriteServerReads(self)

    def mailboxes(self, names):
        """mailbox rows whose username is one of NAMES (any case; caller picks exact)."""
        if not names:
            return []
        return select(self, mailbox_read(names))


def mailbox_read(names):
    """The read of the mailbox rows (username, uid, gid, home) named NAMES."""
    return (Part("username, uid, gid, home", 4, "mailbox",
                 "username IN (" + ",".join(["%s"] * len(names)) + ")", tuple(names)),)


class WriteServerReads:
    """A Directory whose reads all go to its write_server (see the lag rule above)."""

    def __init__(self, directory):
        self.directory = directory
        self.config = directory.config

    def query(self, sql, params=(), write=True):
        return self.directory.query(sql, params, write=True)

    mailboxes = Directory.mailboxes

    def must_confirm(self):
        return False


class Batch:
    """A Directory whose reads were planned ahead (plan(): reads, each a tuple of Part):
    the first planned read asked sends all those planned and not yet sent as one
    statement, one round trip, and the others are answered from its rows. A read is
    known by its statement (union()), so the code that asks it need not know about
    the batch. Anything else goes to the Directory as usual, or raises NotFetched
    once the batch is sealed. The lag rule and the write_server are the Directory's.
    The statement: combined()."""

    def __init__(self, directory):
        self.directory = directory
        self.config = directory.config
        self.pending = {}   # statement -> read: planned, not sent
        self.rows = {}      # statement -> its rows

    sealed = False

    def plan(self, reads):
        for read in reads:
            sql, params = union(read)
            key = (sql, tuple(params))
            if key not in self.rows:
                self.pending[key] = read

    def query(self, sql, params=(), write=False):
        if not write:
            key = (sql, tuple(params))
            rows = self.rows.get(key)
            if rows is None and key in self.pending and not self.sealed:
                self.fetch(key)
                rows = self.rows.get(key)
            if rows is not None:
                return rows
        if self.sealed:  # no more round trips
            raise NotFetched(sql)
        return self.directory.query(sql, params, write)

    mailboxes = Directory.mailboxes

    def fetch(self, asked):
        """Send the pending reads as one statement. When the server cannot take it, the
        read ASKED (a statement) goes alone and the others are dropped (asked on their
        own when they are needed)."""
        reads, self.pending = self.pending, {}
        if len(reads) > 1:
            sql, params, layout = combined(reads)
            try:
                self.rows.update(split(self.directory.query(sql, params), layout, reads))
                return
            except StatementTooLong:
                pass
            except StatementRefused:
                # e.g. a schema without the quota columns, which the reads that do not
                # need them survive
                self.directory.batch_refused_at = time.monotonic()
        self.rows[asked] = self.directory.query(*asked)

    def must_confirm(self):
        return self.directory.must_confirm()

    def on_write_server(self):
        return self.directory.on_write_server()


MAX_SHAPES = 512  # combined() plans kept; past that they are all dropped (rare shapes)
_shapes = {}      # the reads' statement texts, in order -> combined()'s plan for them


def combined(reads):
    """(sql, params, layout) of one statement for READS ({statement: read}).

    Parts of one SOURCE without REST, of any reads, are asked as one SELECT whose WHERE
    is theirs joined by OR, with each part's columns side by side and, for each part,
    its WHERE as a column (the DB's own answer to which part a row belongs to). The
    others are asked as they are. These SELECTs are joined by UNION ALL, each row
    tagged with its SELECT and its columns in the slot of its SELECT's column list
    (NULL in the others), so that each column keeps its type; but NULL next to an
    unsigned column makes it DECIMAL, which split() turns back into int. layout: for
    each tag, [(index of the read in READS, index of the part in its read, first
    column, width, flag column or None)]. The SQL and layout depend on the reads'
    statement texts only (the values differ from one delivery to the next), so they
    are worked out once for each such shape."""
    shape = tuple(sql for sql, _ in reads)
    plan = _shapes.get(shape)
    if plan is None:
        if len(_shapes) >= MAX_SHAPES:
            _shapes.clear()
        plan = _shapes[shape] = _combine(list(reads.values()))
    sql, order, layout = plan
    values = list(reads.values())
    return sql, [v for r, i in order for v in values[r][i].params], layout


def _combine(reads):
    """combined()'s (sql, order, layout) for READS (a list of reads): ORDER lists the
    (read, part) indexes whose params, one after another, fill the statement's marks."""
    units = {}   # source (mergeable) or a unique key -> [(read index, part index, part)]
    for r, read in enumerate(reads):
        for i, p in enumerate(read):
            units.setdefault(p.source if not p.rest else (r, i), []).append((r, i, p))
    selects = []  # (part, its params' (read, part) indexes, its members)
    for unit in units.values():
        if len(unit) == 1:
            r, i, p = unit[0]
            selects.append((p, [(r, i)], [(r, i, 0, p.width, None)]))
            continue
        columns, flags, mine = [], [], []
        at = 0
        for r, i, p in unit:
            columns.append(p.columns)
            flags.append("(" + p.where + ")")
            mine.append((r, i, at, p.width))
            at += p.width
        mine = [(r, i, start, n, at + j) for j, (r, i, start, n) in enumerate(mine)]
        whose = [(r, i) for r, i, _ in unit]
        selects.append((Part(", ".join(columns + flags), at + len(flags), unit[0][2].source,
                             " OR ".join(flags), ()), whose + whose, mine))
    slots = {}   # a select's column list -> where its columns start in a row
    width = 1
    for p, _, _ in selects:
        if p.columns not in slots:
            slots[p.columns] = width
            width += p.width
    parts = []
    order = []
    layout = []
    for p, whose, mine in selects:
        start = slots[p.columns]
        parts.append(p._replace(columns="NULL, " * (start - 1) + p.columns +
                                ", NULL" * (width - start - p.width), params=()))
        order.extend(whose)
        layout.append([(r, i, start + at, n, None if flag is None else start + flag)
                       for r, i, at, n, flag in mine])
    sql, _ = union(parts, range(len(parts)))
    return sql, order, layout


def split(rows, layout, reads):
    """{statement: rows} of the rows of combined()'s statement for READS."""
    by_tag = [[] for _ in layout]
    for row in rows:
        by_tag[row[0]].append(row)
    got = {}  # (read index, part index) -> its rows; each part is in one SELECT
    for mine, tagged in zip(layout, by_tag):
        if tagged:  # most SELECTs find nothing
            for r, i, start, n, flag in mine:
                end = start + n
                got[r, i] = [tuple(int(v) if type(v) is Decimal else v for v in row[start:end])
                             for row in tagged if flag is None or row[flag]]
    return {key: [row for i in range(len(read)) for row in got.get((r, i), ())]
            for r, (key, read) in enumerate(reads.items())}


def statement_size(sql, params):
    """An upper bound of SQL's length once PARAMS are in it, escaped and quoted."""
    size = len(sql)
    for p in (params.values() if isinstance(params, dict) else params or ()):
        if isinstance(p, str):
            p = p.encode("utf-8", "surrogatepass")
        if isinstance(p, (bytes, bytearray)):
            size += 2 * len(p) + 2  # every byte escaped, at worst
        else:
            size += len(str(p))
    return size


def _reason(err):
    args = getattr(err, "args", ())
    if len(args) >= 2:
        return "%s (%s)" % (args[1], args[0])
    return str(err) or err.__class__.__name__
