"""qmailsql: stock qmail on a MySQL/MariaDB user database.

The Python API, for scripts:

    import qmailsql
    with qmailsql.connect("/var/qmail") as q:        # control/sqlserver + ~/.my.cnf
        d = q.getpw(b"iain-slowlaris")               # Delivery(user=b"iain", ..., ext=b"slowlaris")

control/sqlserver says where the DB is; the login is the administrator's, from a
MariaDB option file (connect(defaults_file=...), $QMAILSQL_DEFAULTS_FILE or
~/.my.cnf), never the daemon's.

Errors: qmailsql.ConfigError (bad control/sqlserver), qmailsql.Refusal (no delivery
answer; .code is the exit code qmail-getpw would give: 111, 115, 116 or 100).
"""
__version__ = "0.1.0"

from qmailsql.core.hotpath import ConfigError  # noqa: E402
from qmailsql.core.resolve import Delivery, Refusal  # noqa: E402


class Session:
    """A configuration, one DB connection and the resolver over it.

    Loaded from QMAIL_DIR, it logs in as the administrator (ADMIN, the default: a
    MariaDB option file, see config.as_admin) or with control/sqlserver's own login
    (admin=False: what qmailsqld sees). A CONFIG given is used as it is."""

    def __init__(self, qmail_dir=None, config=None, admin=True, defaults_file=None):
        from qmailsql.core import config as configmod, db, resolve
        if config is None:
            config = configmod.load(qmail_dir)
            if admin:
                config = configmod.as_admin(config, defaults_file)
        self.config = config
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


def connect(qmail_dir=None, defaults_file=None, admin=True):
    """A Session on QMAIL/control/sqlserver's DB (default: $QMAILSQL_QMAIL_DIR or
    conf-qmail), as the administrator: the login of DEFAULTS_FILE, else
    $QMAILSQL_DEFAULTS_FILE, else MariaDB's option files (~/.my.cnf; as root on Debian
    none is needed). admin=False: control/sqlserver's own least-privilege login."""
    return Session(qmail_dir, admin=admin, defaults_file=defaults_file)


__all__ = ["ConfigError", "Delivery", "Refusal", "Session", "connect", "__version__"]
