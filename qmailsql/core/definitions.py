"""Names the Cython hot path (_hot.pyx) and its pure-Python reference (fallback.py)
share, so both builds raise one ConfigError, accept one set of control/sqlserver keys,
name the response cache's shares, answer kinds and dispatch actions alike and keep
answers as long (cache_times: once per worker answer, not per request, so not compiled).
"""

# Canonical key <- every spelling control/sqlserver accepts.
KEY_ALIASES = {
    "server": "server", "port": "port", "socket": "socket",
    "login": "login", "user": "login",
    "password": "password", "pass": "password", "password_file": "password_file",
    "db": "db", "database": "db",
    "connect_timeout": "connect_timeout", "read_timeout": "read_timeout",
    "ssl_ca": "ssl_ca", "ssl_cert": "ssl_cert", "ssl_key": "ssl_key",
    "ssl_verify": "ssl_verify", "write_server": "write_server",
    "auto_break": "auto_break", "userlen": "userlen",
    "funky_queries": "funky_queries", "magic_forwarding": "magic_forwarding",
    "system_users": "system_users", "cache_ttl": "cache_ttl",
    "negative_ttl": "negative_ttl", "stale_ttl": "stale_ttl",
    "rehash": "rehash", "default_scheme": "default_scheme",
    "quota_overflow": "quota_overflow", "quota_warn_percent": "quota_warn_percent",
}
REPEATABLE = frozenset(["server"])


class ConfigError(ValueError):
    """A control/sqlserver problem; str() names the file and line."""

    def __init__(self, filename, lineno, message):
        self.filename = filename
        self.lineno = lineno
        self.message = message
        where = "%s:%d" % (filename, lineno) if lineno else filename
        ValueError.__init__(self, "%s: %s" % (where, message))


# The response cache's shares (ResponseCache.put's owner, besides a peer's uid).
PRIVILEGED = -1  # the owner of what privileged peers' requests put in the cache
STALE = -2       # the share of privileged answers kept for DB outages (stale > 0)

# What kind of answer a worker gave (Task.kind), which decides how long the cache may
# keep it (cache_times): the worker knows, from the resolver's result; nobody guesses
# it from the bytes.
HIT = "hit"            # a delivery (getpw): fresh cache_ttl, then stale_ttl for DB outages
FRESH = "fresh"        # an answer kept while fresh only (local, localq, Dovecot's userdb)
NEGATIVE = "negative"  # getpw's alias user for an unknown local, or 116: negative_ttl
NEVER = "never"        # not cached (auth, passdb, local-confirm, every refusal)


def cache_times(kind, cache_ttl, negative_ttl, stale_ttl):
    """How long qmailsqld may keep an answer of KIND (Task.kind, set by the worker that
    gave it). Returns (ttl, stale): the answer is fresh for ttl seconds and may then be
    given for stale more seconds while the DB is unreachable; ttl 0 means never cache.

    HIT (a getpw delivery, a magic forward's too: it is configured, not a bounce in
    waiting; its `local` answer is FRESH, so a stale one ends in the forward or 111):
    cache_ttl + stale_ttl. NEGATIVE (getpw's alias user for an
    unknown local, Delivery.bounce, and 116): negative_ttl with no stale time, so a new
    user is not bounced for long and an unknown address never goes to the alias user
    because the DB is down. FRESH (local, localq, Dovecot's userdb): cache_ttl, no
    stale time. NEVER (auth, passdb, local-confirm, 111, ...): 0.
    """
    if kind == HIT:
        return (cache_ttl, stale_ttl)
    if kind == FRESH:
        return (cache_ttl, 0)
    if kind == NEGATIVE:
        return (negative_ttl, 0)
    return (0, 0)


# What the loop does with a request (the first item of Dispatcher.dispatch()'s result).
CACHED = "cached"      # (CACHED, frame): send the cached answer
REFUSED = "refused"    # (REFUSED, frame, log kind, log line, close after it): RefusalLog it
STALE_NOW = "stale"    # (STALE_NOW, frame, log line): the DB failed a moment ago
INLINE = "inline"      # (INLINE, handler): the loop's own method answers
WORK = "work"          # (WORK, pool, command, args, cache key, stale frame or None)
