"""qmailsql: stock qmail on a MySQL/MariaDB user database.

The Python API, for scripts (qmailsql/api.py has every method):

    import qmailsql
    with qmailsql.connect("/var/qmail") as q:        # control/sqlserver + ~/.my.cnf
        d = q.getpw(b"iain-slowlaris")               # Delivery(user=b"iain", ..., ext=b"slowlaris")
        q.add_mailbox("joe", uid=1001, gid=1001, home="/home/joe", password="s3cret")
        q.add_virtual("joe@example.org", user="joe")

control/sqlserver says where the DB is; the login is the administrator's, from a
MariaDB option file (connect(defaults_file=...), $QMAILSQL_DEFAULTS_FILE or
~/.my.cnf), never the daemon's.

Errors: qmailsql.ConfigError (bad control/sqlserver), qmailsql.Refusal (no delivery
answer; .code is the exit code qmail-getpw would give: 111, 115, 116 or 100),
qmailsql.AdminError (a row refused; the message says what to do), and the others
named in qmailsql/api.py.

The layout, and the one-way rule between its folders (no circles):

  qmailsql/core/      the rules (config, DB, resolution, passwords, auth, hot path);
                      imports nothing else from qmailsql
  qmailsql/daemon/    qmailsqld; imports core
  qmailsql/admin/     the administrator's tools (tables, sync, install, doctor,
                      importers, dovecot-config); imports core
  qmailsql/sandbox/   throw-away hosts, the demo; imports core and admin
  qmailsql/api.py     this API; imports core and admin (never sandbox)
  qmailsql/cli.py     the `qmailsql` command; imports the API (and daemon for
                      `qmailsql daemon`, sandbox for `sandbox` and `demo`).
                      Nothing imports cli.
"""
__version__ = "0.1.0"

from qmailsql.api import (Access, AdminError, Alias, ConfigError, Delivery,  # noqa: E402
                          Login, Mailbox, PasswordSet, Refusal, Session, SyncResult,
                          Virtual, connect)

__all__ = ["Access", "AdminError", "Alias", "ConfigError", "Delivery", "Login", "Mailbox",
           "PasswordSet", "Refusal", "Session", "SyncResult", "Virtual", "connect",
           "__version__"]
