"""Names the Cython hot path (_hot.pyx) and its pure-Python reference (fallback.py)
share, so both builds raise one ConfigError, accept one set of control/sqlserver keys
and name the response cache's shares alike.
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
