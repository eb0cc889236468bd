"""The one place that talks to MySQL/MariaDB: connections, failover, parameterised queries.

Every query here takes its values as parameters; nothing is pasted into SQL text.
Trouble of any kind becomes DirectoryUnavailable, which callers turn into exit 111.
"""
import threading
import time

import MySQLdb

COOL_DOWN = 30.0  # seconds a server that failed is skipped while others remain


class DirectoryUnavailable(Exception):
    """The DB can't answer now (down, timeout, refused login): try again later."""


class ServerHealth:
    """Shared by every connection of a process: which servers failed recently."""

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

    def failed(self, server):
        with self._lock:
            self._failed[server] = time.monotonic() + self.cool_down

    def ok(self, server):
        with self._lock:
            self._failed.pop(server, None)


def connect(config, server):
    args = dict(server.connect_args(), user=config.login, passwd=config.password,
                db=config.db, connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout, write_timeout=config.read_timeout,
                charset="utf8mb4", use_unicode=True, autocommit=True)
    if config.ssl:
        ssl = {k: v for k, v in config.ssl.items() if k in ("ca", "cert", "key")}
        if config.ssl.get("verify"):
            ssl["check_hostname"] = True
        args["ssl"] = ssl
    return MySQLdb.connect(**args)


class Directory:
    """One DB connection (reconnecting, failing over); not shared between threads."""

    def __init__(self, config, health=None, log=None):
        self.config = config
        self.health = health or ServerHealth()
        self.log = log or (lambda msg: None)
        self.conn = None
        self.server = None

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except MySQLdb.Error:
                pass
        self.conn = None

    def _connect(self, servers):
        problems = []
        for server in self.health.order(servers):
            try:
                self.conn = connect(self.config, server)
                self.server = server
                self.health.ok(server)
                return
            except MySQLdb.Error as e:
                self.health.failed(server)
                problems.append("%s: %s" % (server, _reason(e)))
                self.log("db %s unreachable: %s" % (server, _reason(e)))
        raise DirectoryUnavailable("no DB server answered (" + "; ".join(problems) + ")")

    def query(self, sql, params=(), write=False):
        """Run SQL with PARAMS; rows as tuples. One retry on a fresh connection."""
        servers = [self.config.write_server] if write else self.config.servers
        for attempt in (1, 2):
            if self.conn is None or (write and self.server != self.config.write_server):
                self.close()
                self._connect(servers)
            try:
                cur = self.conn.cursor()
                try:
                    cur.execute(sql, params)
                    return cur.fetchall()
                finally:
                    cur.close()
            except MySQLdb.OperationalError as e:
                self.health.failed(self.server)
                self.log("db %s failed: %s" % (self.server, _reason(e)))
                self.close()
                if attempt == 2:
                    raise DirectoryUnavailable("DB query failed on %s: %s"
                                               % (self.server, _reason(e)))
            except MySQLdb.Error as e:
                # a programming or schema problem: no retry will help, but mail waits
                raise DirectoryUnavailable("DB error on %s: %s" % (self.server, _reason(e)))

    def mailboxes(self, names):
        """mailbox rows whose username is one of NAMES (any case; caller picks exact)."""
        if not names:
            return []
        marks = ",".join(["%s"] * len(names))
        return self.query("SELECT username, uid, gid, home FROM mailbox WHERE username IN ("
                          + marks + ")", list(names))


def _reason(err):
    args = getattr(err, "args", ())
    if len(args) >= 2:
        return "%s (%s)" % (args[1], args[0])
    return str(err) or err.__class__.__name__
