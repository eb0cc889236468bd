"""qmailsql: stock qmail on a MySQL/MariaDB user database.

The Python API, for scripts:

    import qmailsql
    with qmailsql.connect("/var/qmail") as q:        # reads control/sqlserver
        d = q.getpw(b"iain-slowlaris")               # Delivery(user=b"iain", ..., ext=b"slowlaris")

Errors: qmailsql.ConfigError (bad control/sqlserver), qmailsql.Refusal (no delivery
answer; .code is the exit code qmail-getpw would give: 111, 115, 116 or 100).
"""
__version__ = "0.1.0"

from qmailsql.hotpath import ConfigError  # noqa: E402
from qmailsql.resolve import Delivery, Refusal  # noqa: E402


class Session:
    """A configuration, one DB connection and the resolver over it."""

    def __init__(self, qmail_dir=None, config=None):
        from qmailsql import config as configmod, db, resolve
        self.config = config or configmod.load(qmail_dir)
        self.directory = db.Directory(self.config)
        self.resolver = resolve.Resolver.for_directory(self.config, self.directory)

    def getpw(self, local, explain=None):
        return self.resolver.getpw(local, explain)

    def close(self):
        self.directory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(qmail_dir=None):
    """A Session on QMAIL/control/sqlserver (default: $QMAILSQL_QMAIL_DIR or conf-qmail)."""
    return Session(qmail_dir)


__all__ = ["ConfigError", "Delivery", "Refusal", "Session", "connect", "__version__"]
