"""The Python API: everything the `qmailsql` command does, as methods of a Session.

    import qmailsql
    with qmailsql.connect("/var/qmail") as q:
        q.add_rcpthost("example.org")
        q.add_mailbox("example.org-joe", uid=1001, gid=1001, home="/home/vmail/joe",
                      password="s3cret")
        q.add_virtual("joe@example.org", user="example.org-joe")
        for m in q.mailboxes():
            print(m.username, m.home)

Results are dataclasses (Mailbox, Alias, Virtual, ...) or the core's own types
(Delivery, the doctor's Report, an import Plan); errors are the command's: AdminError
(a row refused, with what to do; the command's exit 100), ConfigError and
DirectoryUnavailable (111), Refusal (.code as qmail-getpw's exit), auth.LoginRefused,
auth.NoSuchMailbox, SyncError, InstallError, ImportError_, DumpError, ValueError.

Every write goes to the write server and then asks qmailsqld to drop its cache (and
Dovecot its auth cache, when it keeps one); a daemon that cannot be reached is a
warning through the Session's WARN (default: a line on stderr), never an error.

Imports qmailsql.core and qmailsql.admin; cli.py imports this, nothing else does.
"""
import sys
from dataclasses import dataclass

import MySQLdb
from typing import List

from qmailsql.core import aliases, auth, client, config as configmod, db, resolve, schema
from qmailsql.core import quota, services, virtual
from qmailsql.core.auth import LoginRefused, NoSuchMailbox
from qmailsql.core.config import DEFAULTS_FILE_ENV, compiled_qmail_dir
from qmailsql.core.db import DirectoryUnavailable
from qmailsql.core.helpers import NAMES, SCRIPTS, HelperMissing, helper_path
from qmailsql.core.hotpath import ConfigError
from qmailsql.core.passwords import hash_password
from qmailsql.core.resolve import Delivery, Refusal
from qmailsql.admin import dovecot as dovecot_admin, importers, install as installmod
from qmailsql.admin import doctor as doctormod, quota as quota_admin, sync as syncmod, tables
from qmailsql.admin.doctor import Progress
from qmailsql.admin.importers import DumpError, ImportError_
from qmailsql.admin.install import InstallError
from qmailsql.admin.quota import QUOTA_HELP
from qmailsql.core.quota import QuotaError
from qmailsql.admin.sync import SyncError
from qmailsql.admin.tables import AdminError

HELPERS = NAMES + tuple(SCRIPTS)  # what `qmailsql helper NAME` knows
check_userlen = schema.check_userlen  # ValueError unless 2..255
parse_services = services.parse      # "pop3,imap" or "all" -> a set; ValueError
parse_size = quota.parse_size        # "500M", bytes, "none" (None), "unlimited" (0)
parse_count = quota.parse_count
format_quota_report = quota_admin.format_report


class ImportFailed(Exception):
    """Writing an import failed and was rolled back: nothing changed. .outcome is the
    comparison that was being written, .error the DB's error."""

    def __init__(self, outcome, error):
        Exception.__init__(self, str(error))
        self.outcome, self.error = outcome, error


def warn_stderr(message):
    sys.stderr.write("qmailsql: warning: %s\n" % message)


# ------------------------------------------------------------------- results

@dataclass(frozen=True)
class Mailbox:
    username: str
    uid: int
    gid: int
    home: str
    password_type: str
    suspended: bool
    deny_services: str  # as stored: '' or a comma list (qmailsql.core.services)


@dataclass(frozen=True)
class Alias:
    """One alias row: USERNAME's dot-qmail line for extension EXT."""
    username: str
    ext: str
    alias_username: str
    alias_host: str


@dataclass(frozen=True)
class Virtual:
    """u@host (virtual_username '' for the catch-all @host) -> USERNAME, EXT."""
    virtual_username: str
    virtual_host: str
    username: str
    ext: str

    @property
    def address(self):
        return "%s@%s" % (self.virtual_username, self.virtual_host)


@dataclass(frozen=True)
class Access:
    """A mailbox's service bars and suspension, as stored after `set_mailbox`."""
    username: str
    deny_services: str
    suspended: str  # 'Y' or 'N'


@dataclass(frozen=True)
class PasswordSet:
    username: str       # as stored
    password_type: str  # the column's value (Crypt-Password, ...)
    scheme: str         # the hash scheme used


@dataclass(frozen=True)
class Login:
    """A correct login: what checkpassword and Dovecot are told."""
    user: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class SyncResult:
    changed: List[str]   # control file names written
    messages: List[str]  # what `qmailsql sync` prints


@dataclass(frozen=True)
class QuotaReport:
    mailboxes: list  # qmailsql.admin.quota.Row: usage against the limits, largest first
    domains: list    # {domain, mailboxes, bytes, messages, default_size, default_count,
                     #  over_quota}


@dataclass
class ImportResult:
    plan: object      # qmailsql.admin.importers.Plan
    outcome: object   # its comparison with the DB (Outcome: new, same, conflict)
    applied: bool


@dataclass(frozen=True)
class FlushResult:
    socket: str


# ------------------------------------------------------------------- the session

class Session:
    """A configuration, one DB connection and the resolver over it.

    Loaded from QMAIL_DIR, it logs in as the administrator (ADMIN, the default: a
    MariaDB option file, see config.as_admin) or with control/sqlserver's own login
    (admin=False: what qmailsqld sees). A CONFIG given is used as it is. WARN(message)
    hears what does not stop a change (a daemon that did not drop its cache)."""

    def __init__(self, qmail_dir=None, config=None, admin=True, defaults_file=None,
                 warn=warn_stderr):
        if config is None:
            config = configmod.load(qmail_dir)
            if admin:
                config = configmod.as_admin(config, defaults_file)
        self.config = config
        self.qmail_dir = config.qmail_dir
        self.warn = warn
        self.directory = db.Directory(self.config)
        self.resolver = resolve.Resolver.for_directory(self.config, self.directory)

    def close(self):
        self.directory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------- delivery questions

    def getpw(self, local, explain=None):
        """The Delivery qmail-getpw would give for LOCAL (bytes), or Refusal. EXPLAIN, a
        list, gets one line per candidate tried."""
        return self.resolver.getpw(local, explain)

    def alias_lines(self, delivery, local):
        """The dot-qmail lines (bytes, b"" for none) the alias table gives DELIVERY of
        LOCAL: what the qmail-local wrapper is told (SPEC section 5)."""
        return aliases.delivery_lines(self.directory, self.config, delivery.user,
                                      delivery.home, local, delivery.dash, delivery.ext, b"")

    def authenticate(self, login, password, service="", remoteip=""):
        """Login for a correct LOGIN and PASSWORD for SERVICE (pop3, imap, smtp, ...);
        LoginRefused (bad login or password, a bar, too many failures) or Refusal
        (trouble: the DB, a broken row)."""
        return Login(*auth.authenticate(self.directory, self.config, login, password,
                                        remoteip, service=service))

    def passwd(self, user, password, scheme=None):
        """Set USER's password (str or bytes), hashed in SCHEME (default: default_scheme
        in control/sqlserver). NoSuchMailbox, ValueError (bad scheme)."""
        result = PasswordSet(*auth.set_password(self.directory, self.config, user, password,
                                                scheme))
        # qmailsqld caches no password; Dovecot's auth cache may
        dovecot_admin.flush_auth_cache(self.warn)
        return result

    # -------------------------------------------------------- schema

    def initdb(self, userlen=32):
        """Create the database (when missing) and every missing table. (created the
        database?, [tables made])."""
        schema.check_userlen(userlen)
        created = schema.create_database(self.config)
        return created, schema.initdb(self.directory, userlen)

    def migrate(self, userlen=None):
        """Bring the tables up to this version; the changes made (lines)."""
        return schema.migrate(self.directory, userlen or self.config.userlen)

    def grant(self, daemon_config, hosts=("localhost",)):
        """DAEMON_CONFIG's login (control/sqlserver's) with exactly the daemon's grants,
        on each of HOSTS. {host: [grant lines]}."""
        return schema.grant_daemon(self.directory, daemon_config.db, daemon_config.login,
                                   daemon_config.password, list(hosts))

    # -------------------------------------------------------- mailbox

    def mailboxes(self):
        return [Mailbox(r[0], int(r[1]), int(r[2]), r[3], r[4], r[5] == "Y", r[6] or "")
                for r in tables.list_mailboxes(self.directory)]

    def add_mailbox(self, name, uid, gid, home, password=None, scheme=None, suspended=False,
                    replace=False):
        """Add mailbox NAME. PASSWORD (str or bytes), when given, is hashed in SCHEME
        (default: default_scheme); without one nobody can log in as NAME."""
        kind, stored = "Crypt-Password", ""
        if password is not None:
            kind, stored = hash_password(scheme or self.config.default_scheme, password)
        tables.add_mailbox(self.directory, name, uid, gid, home, stored, kind, suspended,
                           replace)
        self.flush_caches()
        return Mailbox(name, int(uid), int(gid), home, kind, bool(suspended), "")

    def delete_mailbox(self, name):
        if not tables.del_mailbox(self.directory, name):
            raise AdminError("no mailbox %r" % name)
        self.flush_caches()

    def set_mailbox(self, name, deny=(), allow=(), suspended=None):
        """Bar (DENY) or allow (ALLOW) services: sets of names, or a comma list like
        "pop3,imap" or "all"; SUSPENDED True/False (None: unchanged)."""
        deny, allow = _services(deny), _services(allow)
        denied, flag = tables.set_mailbox(self.directory, name, deny, allow, suspended)
        self.flush_caches()
        return Access(name, denied, flag)

    # -------------------------------------------------------- alias

    def aliases(self, user=None):
        return [Alias(*r) for r in tables.list_aliases(self.directory, user)]

    def add_alias(self, user, line, ext=""):
        """A dot-qmail LINE (./Maildir/, /home/u/Mailbox, |prog, &addr, addr@host) for
        USER's extension EXT ('' is the plain .qmail)."""
        au, ah = tables.parse_line(line)
        tables.add_alias(self.directory, user, ext, au, ah)
        self.flush_caches()
        return Alias(user, ext, au, ah)

    def delete_alias(self, user, ext="", line=None):
        """Delete USER's rows for EXT (only LINE's when given); the number deleted."""
        au = ah = None
        if line:
            au, ah = tables.parse_line(line)
        n = tables.del_alias(self.directory, user, ext, au, ah)
        if not n:
            raise AdminError("no matching alias row")
        self.flush_caches()
        return n

    # -------------------------------------------------------- virtual

    def virtuals(self, host=None):
        return [Virtual(*r) for r in tables.list_virtual(self.directory, host)]

    def add_virtual(self, address, user=None, ext="", forward=None):
        """Map ADDRESS (u@host, or @host: the catch-all) to mailbox/user USER (plus EXT),
        or with FORWARD magic-forward it to that address (needs magic_forwarding)."""
        vu, vh = tables.parse_address(address)
        if bool(forward) == bool(user):
            raise AdminError("give --user NAME (with --ext) or --forward ADDRESS")
        if forward:
            if not self.config.magic_forwarding:
                raise AdminError("--forward needs `magic_forwarding yes` in control/sqlserver")
            user, ext = virtual.FORWARD_USER, forward
        tables.add_virtual(self.directory, vu, vh, user, ext)
        self.flush_caches()
        return Virtual(vu, vh, user, ext or "")

    def delete_virtual(self, address):
        vu, vh = tables.parse_address(address)
        n = tables.del_virtual(self.directory, vu, vh)
        if not n:
            raise AdminError("no virtual row for %s" % address)
        self.flush_caches()
        return n

    # -------------------------------------------------------- rcpthosts

    def rcpthosts(self):
        return [r[0] for r in tables.list_rcpthosts(self.directory)]

    def add_rcpthost(self, host):
        """Accept mail for HOST (besides the virtual hosts); the host as stored."""
        h = tables.add_rcpthost(self.directory, host)
        self.flush_caches()
        return h

    def delete_rcpthost(self, host):
        if not tables.del_rcpthost(self.directory, host):
            raise AdminError("no rcpthost %r" % host)
        self.flush_caches()

    # -------------------------------------------------------- control files, caches

    def sync(self, reload=True, out=None):
        """Write control/virtualdomains, rcpthosts (and morercpthosts) from the DB, then
        HUP qmail-send (unless not RELOAD). OUT(line) hears each step as it happens."""
        messages = []

        def say(line):
            messages.append(line)
            if out is not None:
                out(line)
        changed = syncmod.sync(self.qmail_dir, self.directory, reload=reload, out=say)
        return SyncResult(changed, messages)

    def flush_caches(self):
        """qmailsqld's cache, and Dovecot's auth cache when this host's keeps one."""
        tables.flush_caches(self.config, self.warn)

    # -------------------------------------------------------- doctor, import

    def doctor(self, limit=20, progress=None):
        """Every check of `qmailsql doctor` on this Session's qmail home: a Report
        (.findings: Finding(check, severity, what, fix); .healthy; .summary())."""
        return doctormod.run(self.qmail_dir, limit=limit, progress=progress)

    def plan_import_assign(self, assign=None, passwd=None, shadow=None,
                           min_uid=importers.MIN_UID, max_uid=importers.MAX_UID):
        """The import Plan for users/assign text ASSIGN and/or /etc/passwd text PASSWD
        (with /etc/shadow SHADOW). Lines that cannot be read are plan.problems."""
        entries, problems = importers.parse_assign(assign) if assign is not None else ([], [])
        plan = importers.plan_assign(entries, self.config, self.directory, passwd, shadow,
                                     min_uid, max_uid)
        for lineno, msg in problems:
            plan.problem("line %d: %s" % (lineno, msg))
        return plan

    def plan_import_vpopmail(self, tables_, uid, gid, domains_dir=None):
        """The import Plan for vpopmail TABLES_ (importers.read_dump(text) or
        importers.read_db(...)), mailboxes owned by UID/GID."""
        return importers.plan_vpopmail(tables_, self.config, uid, gid, domains_dir,
                                       self.qmail_dir)

    def import_plan(self, plan, apply=False, replace=False, progress=None):
        """Compare PLAN with the DB; with APPLY write the new rows (and with REPLACE the
        conflicting ones) in one transaction. ImportFailed: nothing was written."""
        outcome = importers.compare(plan, self.directory)
        if apply:
            try:
                importers.apply(plan, outcome, self.config, replace=replace,
                                progress=progress or Progress())
            except MySQLdb.Error as e:
                raise ImportFailed(outcome, e)
            tables.flush_daemon(self.config, warn=lambda m: None)
        return ImportResult(plan, outcome, apply)

    # -------------------------------------------------------- quotas

    def quota_set(self, target, size=False, count=False):
        """Set the Maildir++ limits of mailbox TARGET, or the default of domain '@host'.
        SIZE (bytes) and COUNT (messages): an int (0: unlimited), None (remove: the
        domain default applies again) or False (leave as it is). Returns what is now
        set, as a sentence. QuotaError (a usage error, the command's exit 100)."""
        done = quota_admin.set_limits(self.directory, target, size, count)
        self.flush_caches()  # the wrapper's and Dovecot's answers carry the limits
        return done

    def quota_report(self, users=None):
        """Usage against the limits of USERS (default: every mailbox with a limit), and
        per domain. QuotaError for a user with no mailbox."""
        return QuotaReport(*quota_admin.report(self.directory, users or None))

    def quota_explain(self, user):
        """The quota the qmail-local wrapper would enforce for USER (a sentence)."""
        return quota.explain(self.directory, self.config, user)

    # -------------------------------------------------------- Dovecot

    def dovecot_config(self, version=None, auth_cache=None, socket=None, script=None):
        """The dovecot.conf fragment of `qmailsql dovecot-config` for this qmail home."""
        return dovecot_admin.config_text(self.qmail_dir, version, auth_cache, socket, script)


def _services(value):
    if isinstance(value, str):
        return services.parse(value) if value else set()
    return set(value or ())


def connect(qmail_dir=None, defaults_file=None, admin=True, warn=warn_stderr):
    """A Session on QMAIL/control/sqlserver's DB (default: $QMAILSQL_QMAIL_DIR or
    conf-qmail), as the administrator: the login of DEFAULTS_FILE, else
    $QMAILSQL_DEFAULTS_FILE, else MariaDB's option files (~/.my.cnf; as root on Debian
    none is needed). admin=False: control/sqlserver's own least-privilege login."""
    return Session(qmail_dir, admin=admin, defaults_file=defaults_file, warn=warn)


# ------------------------------------------------------------------- no DB needed

def qmail_dir(given=None):
    """The qmail home: GIVEN, else $QMAILSQL_QMAIL_DIR, else conf-qmail."""
    return configmod.qmail_dir(given)


def daemon_config(qmail_dir=None):
    """control/sqlserver as qmailsqld reads it (its own login)."""
    return configmod.load(qmail_dir)


def flush(qmail_dir=None):
    """Ask the running qmailsqld to drop its cache. OSError/ValueError when it cannot be
    reached, Refusal when it answers an error."""
    path = configmod.socket_path(configmod.qmail_dir(qmail_dir))
    status, body = client.flush(path)
    if status:
        raise Refusal(status, "qmailsqld answered %d: %s" % (
            status, body.decode("utf-8", "replace")))
    return FlushResult(path)


def socket_path(qmail_dir=None):
    return configmod.socket_path(configmod.qmail_dir(qmail_dir))


def install(qmail_dir=None, undo=False, out=print):
    """`qmailsql install` (--undo): the helpers into QMAIL/bin. InstallError."""
    if undo:
        installmod.undo(qmail_dir, out)
    else:
        installmod.install(qmail_dir, out)


def dovecot_config(qmail_dir=None, version=None, auth_cache=None, socket=None, script=None):
    """The dovecot.conf fragment, without a DB connection."""
    return dovecot_admin.config_text(qmail_dir, version, auth_cache, socket, script)


def doctor(qmail_dir=None, limit=20, progress=None):
    """The doctor's Report for QMAIL_DIR, without a Session (the doctor opens its own
    connections, and reports a DB it cannot reach as a finding)."""
    return doctormod.run(qmail_dir, limit=limit, progress=progress)


__all__ = ["Access", "AdminError", "Alias", "ConfigError", "Delivery", "DirectoryUnavailable",
           "DumpError", "FlushResult", "HELPERS", "HelperMissing", "ImportError_",
           "ImportFailed", "ImportResult", "InstallError", "QUOTA_HELP", "QuotaError",
           "QuotaReport", "Login", "LoginRefused", "Mailbox",
           "NoSuchMailbox", "PasswordSet", "Refusal", "Session", "SyncError", "SyncResult",
           "Virtual", "connect", "daemon_config", "doctor", "dovecot_config", "flush",
           "helper_path", "install", "qmail_dir", "socket_path", "warn_stderr", "DEFAULTS_FILE_ENV",
           "compiled_qmail_dir"]
