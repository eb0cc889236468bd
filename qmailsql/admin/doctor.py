"""`qmailsql doctor`: every pitfall of the qmail-mysql FAQ, found and explained (SPEC 7).

Each finding is a Finding(check, severity, what, fix): one line saying what is wrong,
one line saying how to fix it (the exact command or SQL where there is one). The
checks, by the name they report under:

  sqlserver-missing / -unreadable / -world-readable / -invalid
                        control/sqlserver (FAQ: "alert: out of memory", "insecure")
  db-unreachable / db-login-refused
                        each `server` (and the write_server) connected to separately
  schema-missing-table / schema-missing-column / schema-userlen / schema-index-missing
                        tables, columns, username columns narrower than `userlen`, the
                        indexes the lookups need
  mailbox-misconfigured, uid-zero, username-case, username-too-long, password-type
  home-missing / home-owner / home-group / home-writable / home-sticky
  maildir-missing / maildir-owner / path-not-searchable
                        FAQ: "prints alias although the user is in mailbox" and POP3's
                        "this user has no $HOME/Maildir": every directory from / down
                        to home/Maildir must be searchable by the row's uid/gid
  alias-blank / alias-misconfigured
                        rows that would eat or defer mail
  alias-shadowed        rows whose delivery the qmail-local wrapper defers: a dot-qmail
                        file stock qmail-local would read instead of them
  virtual-funky-catchall, virtual-forward-loop, virtual-forward-user,
  virtual-blank-username, virtual-pattern, virtual-target-missing
  control-stale         virtualdomains / rcpthosts / morercpthosts(.cdb) vs what
                        `qmailsql sync` would write (sync.plan), compared line by line
  control-locals        a virtual host also in control/locals (qmail-send reads locals
                        first: u@host goes to the local user u)
  users-cdb-shadow      QMAIL/users/cdb (or users/assign) entries that qmail-lspawn
                        consults before qmail-getpw, hiding DB mailboxes
  users-cdb-bypass      entries whose account is not the DB's although the DB has rows
                        or a mailbox for that name: delivered as stock, rows skipped
  helper-missing / helper-outdated / helper-overwritten / qmail-local-orig
  helper-qmail-dir      helpers built (conf-qmail) for another qmail home
  daemon-not-running / daemon-not-answering
  alias-user-missing
  doctor-no-access      a path the doctor itself (run as this uid) may not examine: the
                        checks needing it were skipped; every probe ends in a finding,
                        never in a traceback
  quota-over / quota-maildirsize-unreadable / schema-quota
                        Maildir++ quotas (qmailsql/core/quota.py)

Speed: each table is read ONCE, streamed with a server-side cursor (SSCursor) on a
connection of its own; every path is stat()ed once (a bounded cache), and the
searchability of a home's parents is computed once per (parent, uid, gid).
Findings of one kind are capped (`limit`, default 20 shown; the counts are exact).
"""
import errno
import os
import pwd
import re
import shlex
import socket
import stat
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

from qmailsql.core import aliases, cdb, client, passwords, schema, virtual
from qmailsql.admin import sync
from qmailsql.core import config as configmod
from qmailsql.core.helpers import HelperMissing, helper_path
from qmailsql.core.hotpath import ConfigError, parse_sqlserver
from qmailsql.core.resolve import ALIAS_USER, Refusal
from qmailsql.core.virtual import FORWARD_USER

TABLE_COLUMNS = OrderedDict([
    ("mailbox", ["username", "uid", "gid", "home", "password", "password_type", "suspended",
                 "deny_services"]),
    ("alias", ["id", "username", "alias", "alias_username", "alias_host"]),
    ("virtual", ["id", "username", "ext", "virtual_username", "virtual_host"]),
    ("rcpthosts", ["host"]),
])
STAT_CACHE_MAX = 200000
FETCH = 5000
PING_TIMEOUT = 3.0
DAEMON_MARKER = b"QMAILSQL_SOCKET"  # every compiled helper contains this string
UCRED = struct.Struct("3i")  # SO_PEERCRED's struct ucred: pid, uid, gid
ER_ACCESS_DENIED, ER_DBACCESS_DENIED, ER_BAD_DB = 1045, 1044, 1049


@dataclass
class Finding:
    check: str
    severity: str  # "error" (mail lost, deferred or misdelivered) or "warning"
    what: str
    fix: str


def sql_str(value):
    """VALUE as an SQL string literal, for fix lines a human pastes (never executed here)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def q(path):
    return shlex.quote(str(path))


def _mode(st):
    return stat.filemode(st.st_mode)


def can(st, uid, gids, bit):
    """True if UID (with groups GIDS) has permission BIT (1 x, 2 w, 4 r) on ST.

    Plain Unix modes: the owner bits if uid owns it, else the group bits if one of
    gids is its group, else the other bits. Root may do anything (x on a directory).
    ACLs are not consulted."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def grant_fix(path, st, uid, gids, letter):
    """The chmod that grants UID/GIDS permission LETTER (x or r) on PATH."""
    if st.st_uid == uid:
        return "chmod u+%s %s" % (letter, q(path))
    if st.st_gid in gids:
        return "chmod g+%s %s" % (letter, q(path))
    return "chmod o+%s %s" % (letter, q(path))


def _parents(path):
    """'/', '/a', '/a/b' for '/a/b/c' (every directory above PATH)."""
    parts = [p for p in path.split("/") if p]
    out = ["/"]
    for i in range(1, len(parts)):
        out.append("/" + "/".join(parts[:i]))
    return out


class Report:
    """Findings, capped per check; exact counts; the numbers for the summary line."""

    def __init__(self, limit=20):
        self.limit = limit
        self.findings = []
        self.counts = OrderedDict()
        self.rows = OrderedDict()
        self.elapsed = 0.0
        self.total = 0

    def add(self, check, severity, what, fix):
        self.total += 1
        n = self.counts.get(check, 0)
        self.counts[check] = n + 1
        if self.limit is None or n < self.limit:
            self.findings.append(Finding(check, severity, what, fix))

    def checks(self):
        return set(self.counts)

    def by_check(self, check):
        return [f for f in self.findings if f.check == check]

    def capped(self):
        """Findings, plus one line per check that had more than `limit`."""
        out = list(self.findings)
        if self.limit is not None:
            for check, n in self.counts.items():
                if n > self.limit:
                    out.append(Finding(check, "warning", "... and %d more %s findings not "
                                       "shown" % (n - self.limit, check),
                                       "qmailsql doctor --all  (shows every one)"))
        return out

    @property
    def healthy(self):
        return not self.counts

    def summary(self):
        found = ", ".join("%s %d" % kv for kv in self.counts.items()) or "none"
        rows = " + ".join("%d %s" % (n, t) for t, n in self.rows.items()) or "no"
        total = sum(self.rows.values())
        rate = (" (%.0f rows/s)" % (total / self.elapsed)) if self.elapsed > 0 and total else ""
        return ("doctor: %d finding%s (%s); scanned %s rows in %.2fs%s"
                % (sum(self.counts.values()), "" if sum(self.counts.values()) == 1 else "s",
                   found, rows, self.elapsed, rate))


class Progress:
    """rows done / total and the rate, on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None, enabled=None):
        self.stream = stream or sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.last = 0.0
        self.shown = False

    def update(self, what, done, total, started, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        rate = done / (now - started) if now > started else 0.0
        of = ("/%d" % total) if total else ""
        pct = (" %3d%%" % min(100, done * 100 // total)) if total else ""
        self.stream.write("\r\033[Kdoctor: %s %d%s rows%s, %.0f rows/s" % (what, done, of,
                                                                          pct, rate))
        self.stream.flush()
        self.shown = True

    def done(self):
        if self.enabled and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


class Doctor:
    def __init__(self, qmail_dir=None, limit=20, progress=None):
        self.qmail_dir = configmod.qmail_dir(qmail_dir)
        self.report = Report(limit)
        self.progress = progress if progress is not None else Progress()
        self.config = None
        self.daemon_cred = None      # (pid, uid, gid) of the daemon, from SO_PEERCRED
        self.directory = None
        self.stream_conn = None
        self._stat = {}
        self._search = {}
        self._blocked = {}
        self._home_ok = set()
        self._alias_levels = {}  # lower-cased username -> alias values with rows
        self._entry_users = {}   # users/cdb entries' users (lower) -> mailbox row or None
        self._entry_rows = {}    # ... -> how many alias rows
        self.add = self.report.add

    # ------------------------------------------------------------------ entry point

    def run(self):
        started = time.monotonic()
        try:
            for check in (self.check_sqlserver, self.check_daemon,
                          self.check_sqlserver_for_daemon, self.check_helpers):
                self.guarded(check)
            if self.config is not None and self.guarded(self.check_servers):
                self.guarded(self.check_database)
        finally:
            self.progress.done()
            self.close()
            self.report.elapsed = time.monotonic() - started
        return self.report

    def guarded(self, check):
        """CHECK(); a file-system error that it did not expect is a finding, not a crash."""
        try:
            return check()
        except OSError as e:
            self.no_access(e.filename or "a file", e, check.__name__.replace("_", " "))
            return None

    def no_access(self, path, err, skipped):
        """The doctor (this uid) may not examine PATH: say so, and what went unchecked."""
        uid = os.getuid()
        self.add("doctor-no-access", "warning" if uid else "error",
                 "doctor (uid %d, %s) cannot examine %s: %s; not checked: %s"
                 % (uid, _user(uid), path, getattr(err, "strerror", None) or err, skipped),
                 "run qmailsql doctor as root" if uid else "check the file system holding %s"
                 % path)

    def close(self):
        for conn in (self.stream_conn,):
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
        self.stream_conn = None
        if self.directory is not None:
            self.directory.close()
            self.directory = None

    @property
    def sqlserver_path(self):
        return os.path.join(self.qmail_dir, "control", "sqlserver")

    # ------------------------------------------------------------------ control/sqlserver

    def check_sqlserver(self):
        path = self.sqlserver_path
        fixperm = configmod.FIX_PERMS.format(path=q(path))
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            self.add("sqlserver-missing", "error", "%s does not exist: qmailsqld cannot start, "
                     "every delivery is deferred (the FAQ's \"alert: out of memory\")" % path,
                     "create it with `server`, `login`, `password` and `db` lines (see the "
                     "README), then: %s" % fixperm)
            return
        except PermissionError:
            self.add("sqlserver-unreadable", "error", "%s is not readable by uid %d (%s)"
                     % (path, os.getuid(), _user(os.getuid())),
                     "%s; add the daemon's user to group qmailsql, or run doctor as root"
                     % fixperm)
            return
        except OSError as e:
            self.add("sqlserver-unreadable", "error", "%s cannot be read: %s"
                     % (path, e.strerror), "check the file system holding %s" % path)
            return
        self.sqlserver_stat = st
        try:
            values = parse_sqlserver(data, path)
        except ConfigError as e:
            self.add("sqlserver-invalid", "error", str(e),
                     "edit %s (keys: see `qmailsql --help` and the README)" % path)
            return
        if "password" in values and st.st_mode & stat.S_IROTH:
            self.add("sqlserver-world-readable", "error",
                     "%s holds the DB password and is readable by every local user (%s %s:%s)"
                     % (path, _mode(st), _user(st.st_uid), _group(st.st_gid)), fixperm)
        if "password_file" in values and "password" in values:
            self.add("sqlserver-invalid", "error", "%s gives both `password` and "
                     "`password_file`: qmailsqld refuses to start" % path,
                     "keep one of the two lines in %s" % path)
            return
        if "password_file" in values:
            pw_path = values["password_file"]
            try:
                with open(pw_path, "rb") as f:
                    pst = os.fstat(f.fileno())
                    values["password"] = f.read().split(b"\n")[0].decode("utf-8", "replace")
                if pst.st_mode & stat.S_IROTH:
                    self.add("sqlserver-world-readable", "error",
                             "password_file %s is readable by every local user (%s)"
                             % (pw_path, _mode(pst)),
                             configmod.FIX_PERMS.format(path=q(pw_path)))
            except OSError as e:
                self.add("sqlserver-unreadable", "error", "password_file %s (named in %s) "
                         "cannot be read by uid %d: %s" % (pw_path, path, os.getuid(),
                                                           e.strerror),
                         configmod.FIX_PERMS.format(path=q(pw_path)))
                return
        try:
            self.config = configmod.from_mapping(values, self.qmail_dir, path)
        except ConfigError as e:
            self.add("sqlserver-invalid", "error", str(e), "edit %s" % path)

    def check_sqlserver_for_daemon(self):
        """The running daemon's user must be able to read control/sqlserver (on SIGHUP)."""
        st = getattr(self, "sqlserver_stat", None)
        if st is None or self.daemon_cred is None:
            return
        pid, uid, gid = self.daemon_cred
        if uid == 0 or uid == os.getuid():
            return
        gids = _proc_groups(pid) | {gid}
        path = self.sqlserver_path
        for d in _parents(path):
            try:
                dst = os.stat(d)
            except OSError as e:
                self.no_access(d, e, "whether qmailsqld's user can reach %s" % path)
                return
            if not can(dst, uid, gids, 1):
                self.add("sqlserver-unreadable", "error",
                         "qmailsqld runs as uid %d (%s) but cannot reach %s: %s (%s %s:%s) is "
                         "not searchable for it" % (uid, _user(uid), path, d, _mode(dst),
                                                    _user(dst.st_uid), _group(dst.st_gid)),
                         grant_fix(d, dst, uid, gids, "x"))
                return
        if not can(st, uid, gids, 4):
            self.add("sqlserver-unreadable", "error",
                     "qmailsqld runs as uid %d (%s) but %s (%s %s:%s) is not readable for it: "
                     "its next reload (SIGHUP) or restart fails" % (
                         uid, _user(uid), path, _mode(st), _user(st.st_uid),
                         _group(st.st_gid)),
                     "chgrp %s %s; chmod 640 %s" % (q(_group(gid)), q(path), q(path)))

    # ------------------------------------------------------------------ daemon

    def check_daemon(self):
        path = configmod.socket_path(self.qmail_dir)
        start = "start it: `qmailsql daemon` (supervised: svc -u /service/qmailsqld)"
        logged = ("; qmail-send logs each one as `deferral: qmail-getpw: cannot reach "
                  "qmailsqld at %s: ...`" % path)
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.add("daemon-not-running", "error", "qmailsqld is not running: no socket %s; "
                     "every delivery and POP3 login is deferred%s" % (path, logged), start)
            return
        except OSError as e:
            self.no_access(path, e, "the daemon")
            return
        try:
            self.daemon_cred = _peer_cred(path, PING_TIMEOUT)
        except PermissionError as e:
            self.no_access(path, e, "the daemon")
            return
        except OSError as e:
            self.add("daemon-not-running", "error", "qmailsqld is not running: connect to "
                     "%s: %s%s" % (path, e.strerror or e, logged), start + " (a stale socket "
                     "is replaced)")
            return
        try:
            status, body = client.call(path, [b"ping"], timeout=PING_TIMEOUT)
            got = None if status == 0 else "got status %d %r" % (status, body[:60])
        except (OSError, ValueError) as e:
            got = str(e) or type(e).__name__
        if got is not None:
            pid = " (pid %d)" % self.daemon_cred[0] if self.daemon_cred else ""
            self.add("daemon-not-answering", "error",
                     "qmailsqld%s on %s did not answer `ping` within %.0fs (%s)"
                     % (pid, path, PING_TIMEOUT, got),
                     "see its log; restart it: svc -t /service/qmailsqld (or kill%s and "
                     "`qmailsql daemon`)" % (" %d" % self.daemon_cred[0]
                                             if self.daemon_cred else ""))

    # ------------------------------------------------------------------ helpers

    def check_helpers(self):
        bindir = os.path.join(self.qmail_dir, "bin")
        install = "qmailsql install --qmail-dir %s" % q(self.qmail_dir)
        state = {}
        for name in ("qmail-getpw", "qmail-local"):
            try:
                built = helper_path(name).read_bytes()
            except HelperMissing as e:
                self.add("helper-missing", "error", str(e),
                         "pip install . (from the qmailsql source tree), then " + install)
                continue
            except OSError as e:
                self.no_access(e.filename, e, "whether bin/%s is this build's" % name)
                continue
            path = os.path.join(bindir, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                    st = os.fstat(f.fileno())
            except FileNotFoundError:
                data = st = None
            except PermissionError as e:
                self.no_access(path, e, "the installed %s" % name)
                continue
            except OSError as e:
                self.add("helper-missing", "error", "%s cannot be read: %s" % (path, e.strerror),
                         install)
                continue
            state[name] = (path, built, data, st)
        # `qmailsql install` refuses while a stock program sits beside an old .orig: every
        # such program must be moved over its .orig first (a newer stock replaces the older)
        moves = ["mv %s %s" % (q(path), q(path + ".orig"))
                 for path, built, data, st in state.values()
                 if data is not None and data != built and DAEMON_MARKER not in data
                 and os.path.lexists(path + ".orig")]
        full_install = " && ".join(moves + [install])
        for name, (path, built, data, st) in state.items():
            orig = path + ".orig"
            if data is None:
                self.add("helper-missing", "error", "%s is missing: qmail-lspawn cannot run it "
                         "(\"Temporary failure in qmail-lspawn\")" % path, full_install)
            elif data != built:
                if DAEMON_MARKER in data:
                    self.add("helper-outdated", "error", "%s is an older qmailsql helper, not "
                             "this build's" % path, full_install)
                else:
                    self.add("helper-overwritten", "error", "%s is not qmailsql's helper (a qmail "
                             "reinstall or upgrade put the stock program back): users come "
                             "from %s" % (path, "/etc/passwd only" if name == "qmail-getpw"
                                          else "dot-qmail files only, alias rows are ignored, "
                                          "and qmail-getpw's deferrals are logged as `Unable "
                                          "to switch to /dev/null/qmailsql-deferral/REASON`"),
                             full_install)
            elif not st.st_mode & 0o111:
                self.add("helper-missing", "error", "%s is not executable (%s)"
                         % (path, _mode(st)), "chmod 755 %s" % q(path))
            if name == "qmail-local":
                try:
                    with open(orig, "rb") as f:
                        odata = f.read(1 << 20)
                        ost = os.fstat(f.fileno())
                except FileNotFoundError:
                    fix = ("copy the stock qmail-local from your qmail build: cp qmail-local %s"
                           % q(orig))
                    if data is not None and data != built and DAEMON_MARKER not in data:
                        fix = full_install + "  (keeps the stock program as %s)" % orig
                    self.add("qmail-local-orig", "error", "%s is missing: the qmail-local "
                             "wrapper has no stock qmail-local to run, every delivery is "
                             "deferred" % orig, fix)
                    continue
                except PermissionError as e:
                    self.no_access(orig, e, "the stock qmail-local")
                    continue
                except OSError as e:
                    self.add("qmail-local-orig", "error", "%s cannot be read: %s"
                             % (orig, e.strerror), "chmod 755 %s" % q(orig))
                    continue
                if DAEMON_MARKER in odata:
                    self.add("qmail-local-orig", "error", "%s is qmailsql's wrapper, not the "
                             "stock qmail-local: the wrapper would run itself" % orig,
                             "cp qmail-local %s   (the stock program, from your qmail build)"
                             % q(orig))
                elif not ost.st_mode & 0o111:
                    self.add("qmail-local-orig", "error", "%s is not executable (%s)"
                             % (orig, _mode(ost)), "chmod 755 %s" % q(orig))
        self.check_compiled_dir(state)
        # checkpassword is optional; if an installed copy is ours it must be this build
        try:
            built = helper_path("checkpassword").read_bytes()
        except HelperMissing:
            return
        except OSError as e:
            self.no_access(e.filename, e, "whether the installed checkpassword is this build's")
            return
        for target in ("qmailsql-checkpassword", "checkpassword"):
            path = os.path.join(bindir, target)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                self.no_access(path, e, "the installed checkpassword")
                continue
            if data != built and DAEMON_MARKER in data:
                self.add("helper-outdated", "warning", "%s is an older qmailsql checkpassword, "
                         "not this build's" % path,
                         install if target == "qmailsql-checkpassword" else
                         "cp \"$(qmailsql helper checkpassword)\" %s" % q(path))

    def check_compiled_dir(self, state):
        """The helpers find the daemon through conf-qmail, compiled in (FAQ: \"make sure
        that conf-qmail points to the correct qmail install directory\")."""
        if os.environ.get("QMAILSQL_SOCKET"):
            return  # qmail's environment may set it as well; nothing to compare
        compiled = configmod.compiled_qmail_dir()
        if os.path.realpath(compiled) == os.path.realpath(self.qmail_dir):
            return
        if not any(data is not None and DAEMON_MARKER in data
                   for _, _, data, _ in state.values()):
            return
        self.add("helper-qmail-dir", "error",
                 "the helpers were built with conf-qmail %s but are installed in %s: they look "
                 "for qmailsqld at %s/qmailsql/qmailsqld.sock and defer every delivery"
                 % (compiled, self.qmail_dir, compiled),
                 "echo %s > conf-qmail in the qmailsql source tree, pip install . and "
                 "qmailsql install --qmail-dir %s (or set QMAILSQL_SOCKET in qmail's "
                 "environment)" % (q(self.qmail_dir), q(self.qmail_dir)))

    # ------------------------------------------------------------------ DB servers

    def check_servers(self):
        """Connect to every server separately; True if one of the read servers answers."""
        import MySQLdb
        from qmailsql.core import db
        cfg = self.config
        servers = list(cfg.servers)
        if cfg.write_server is not None and cfg.write_server not in servers:
            servers.append(cfg.write_server)
        any_ok = False
        for server in servers:
            role = "write_server" if server not in cfg.servers else "server"
            try:
                conn = db.connect(cfg, server)
            except MySQLdb.Error as e:
                self._server_finding(server, role, e)
                continue
            conn.close()
            if server in cfg.servers:
                any_ok = True
        return any_ok

    def _server_finding(self, server, role, err):
        cfg = self.config
        args = getattr(err, "args", ())
        code = args[0] if args and isinstance(args[0], int) else 0
        text = args[1] if len(args) > 1 else str(err)
        where = "%s %s" % (role, server)
        # `qmailsql grant` makes the login as control/sqlserver says, on the write_server
        grant = "qmailsql --qmail-dir %s grant" % q(self.qmail_dir)
        if not server.socket:
            grant += "  (with --host THIS-MAIL-HOST as %s sees it)" % server
        if code == ER_ACCESS_DENIED:
            self.add("db-login-refused", "error", "%s refuses login %r: %s" % (where, cfg.login,
                                                                               text),
                     "%s  (as the DB administrator: creates the login with %s's password "
                     "and exactly SELECT on %s.* plus UPDATE (password, password_type) on "
                     "%s.mailbox)" % (grant, self.sqlserver_path, cfg.db, cfg.db))
        elif code == ER_DBACCESS_DENIED:
            self.add("db-login-refused", "error", "%s: login %r may not use database %r: %s"
                     % (where, cfg.login, cfg.db, text),
                     "%s  (grants SELECT ON `%s`.* and UPDATE (password, password_type) on "
                     "`%s`.mailbox)" % (grant, cfg.db, cfg.db))
        elif code == ER_BAD_DB:
            self.add("db-unreachable", "error", "%s has no database %r: %s" % (where, cfg.db, text),
                     "qmailsql --qmail-dir %s initdb && %s  (as the DB administrator)"
                     % (q(self.qmail_dir), grant))
        else:
            how = ("mysql -S %s -u %s -p %s" % (q(server.socket), q(cfg.login), q(cfg.db))
                   if server.socket else "mysql -h %s -P %d -u %s -p %s"
                   % (q(server.host), server.port, q(cfg.login), q(cfg.db)))
            self.add("db-unreachable", "error", "%s is unreachable: %s (code %s); mail waits "
                     "(exit 111) while no server answers, and qmail-send logs `deferral: "
                     "qmail-getpw: DB lookup ... failed: no DB server answered (...)`"
                     % (where, text, code or "?"),
                     "start MariaDB there or correct the `%s` line in %s; test with: %s"
                     % (role, self.sqlserver_path, how))

    # ------------------------------------------------------------------ the tables

    def check_database(self):
        import MySQLdb
        from qmailsql.core import db
        cfg = self.config
        self.directory = db.Directory(cfg)
        try:
            columns, collations, widths, estimates = self._schema()
        except Exception as e:  # DirectoryUnavailable or a server error
            self.add("db-unreachable", "error", "cannot read the schema: %s" % e,
                     "check the DB server and the grants of %r" % cfg.login)
            return
        self.check_schema(columns, widths)
        try:
            self.stream_conn = self._stream_connection(db, MySQLdb)
        except MySQLdb.Error as e:
            self.add("db-unreachable", "error", "no server answered for the table scan: %s" % e,
                     "check the DB servers (see the db-* findings)")
            return
        try:
            self.scan_tables(columns, collations, estimates)
        except (MySQLdb.Error, db.DirectoryUnavailable) as e:
            self.add("db-unreachable", "error", "the DB failed during the table scan: %s (the "
                     "checks after it did not run)" % (e,),
                     "check the DB server's log, then run qmailsql doctor again")

    def scan_tables(self, columns, collations, estimates):
        users_table = self.users_table()
        if users_table is not None:
            self._entry_users = {e.user.lower(): None for e in users_table.entries()}
        virtual_targets = {}
        if "virtual" in columns:
            virtual_targets = self.scan_virtual(columns["virtual"], estimates.get("virtual"))
        if "alias" in columns:
            self.scan_alias(columns["alias"], estimates.get("alias"))
        alias_found = False
        if "mailbox" in columns:
            case_sensitive = not (collations.get("username") or "_ci").endswith("_ci")
            alias_found = self.scan_mailbox(columns["mailbox"], estimates.get("mailbox"),
                                            users_table, virtual_targets, case_sensitive)
            self.check_alias_user(alias_found)
            if users_table is not None:
                self.check_bypass(users_table)
            self.check_quotas()
        self.check_virtual_targets(virtual_targets)
        if "virtual" in columns and "rcpthosts" in columns:
            self.check_control_files()
        if "virtual" in columns:
            self.check_locals()

    def _schema(self):
        rows = self.directory.query(
            "SELECT table_name, column_name, character_maximum_length, collation_name "
            "FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name IN ('mailbox', 'alias', 'virtual', 'rcpthosts')")
        columns, widths, collations = {}, {}, {}
        for t, c, w, coll in rows:
            columns.setdefault(t, set()).add(c)
            widths[(t, c)] = w
            if (t, c) == ("mailbox", "username"):
                collations["username"] = coll
        est = {}
        for t, n in self.directory.query(
                "SELECT table_name, table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() "
                "AND table_name IN ('mailbox', 'alias', 'virtual', 'rcpthosts')"):
            est[t] = int(n or 0)
        return columns, collations, widths, est

    def _stream_connection(self, db, MySQLdb):
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
        return conn

    def check_schema(self, columns, widths):
        userlen = self.config.userlen
        for table, cols in TABLE_COLUMNS.items():
            if table not in columns:
                self.add("schema-missing-table", "error", "table %s does not exist in database %r"
                         % (table, self.config.db), "qmailsql initdb --userlen %d" % userlen)
                continue
            added = {c for t, c, _ in schema.ADDED_COLUMNS if t == table}
            for col in cols:
                if col in added and col not in columns[table]:
                    self.add("schema-missing-column", "error",
                             "table %s has no column %s (tables older than this qmailsql): "
                             "logins fail with a temporary error" % (table, col),
                             "qmailsql migrate")
                elif col not in columns[table]:
                    self.add("schema-missing-column", "error",
                             "table %s has no column %s (an old qmail-mysql layout?): queries "
                             "on it fail and mail is deferred" % (table, col),
                             _add_column_sql(schema, table, col, userlen))
        for table, cols in schema.USERNAME_COLUMNS.items():
            for col in cols:
                w = widths.get((table, col))
                if w is not None and w < userlen:
                    self.add("schema-userlen", "error", "%s.%s is VARCHAR(%d), narrower than "
                             "userlen %d: longer names are cut off or refused"
                             % (table, col, w, userlen),
                             "qmailsql migrate --userlen %d" % userlen)
        for table, name, cols in schema.missing_indexes(self.directory):
            self.add("schema-index-missing", "error",
                     "table %s has no index starting with (%s): every lookup there reads "
                     "the table (or the whole domain) row by row, which slows every "
                     "delivery down as it grows" % (table, ", ".join(cols)),
                     "qmailsql migrate --userlen %d  (adds it, and widens nothing narrower)"
                     % userlen)

    def _stream(self, sql, table, estimate):
        import MySQLdb.cursors
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
                self.progress.update(table, n, estimate, started)
        finally:
            cur.close()
            self.report.rows[table] = n
            self.progress.update(table, n, estimate, started, force=True)

    @staticmethod
    def _select(table, wanted, present):
        cols = [c if c in present else "NULL" for c in wanted]
        return "SELECT %s FROM `%s`" % (", ".join(cols), table)

    # ---- virtual

    def scan_virtual(self, present, estimate):
        cfg = self.config
        rows = []
        blank_catchall = []
        targets = {}
        sql = self._select("virtual", ["id", "username", "ext", "virtual_username",
                                       "virtual_host"], present)
        for batch in self._stream(sql, "virtual", estimate):
            for rid, username, ext, vuser, vhost in batch:
                row = virtual.Row(username, ext, vuser, vhost)
                rows.append(row)
                addr = "%s@%s" % (vuser or "", vhost or "")
                if _blank(username):
                    self.add("virtual-blank-username", "error",
                             "virtual row %s (id %s) has a blank username: mail to it is "
                             "deferred (\"MySQL misconfiguration\")" % (addr, rid),
                             "UPDATE virtual SET username=%s WHERE id=%s;"
                             % (sql_str("<local user>"), rid))
                    continue
                if _blank(vuser) and cfg.funky_queries:
                    blank_catchall.append(vhost)
                if not cfg.funky_queries and vuser and virtual.is_pattern(vuser):
                    self.add("virtual-pattern", "warning",
                             "virtual row %s looks like a LIKE pattern but funky_queries is off: "
                             "it only matches that literal name" % addr,
                             "add `funky_queries yes` to %s, or UPDATE virtual SET "
                             "virtual_username='' WHERE id=%s;  (a blank name is the catch-all)"
                             % (self.sqlserver_path, rid))
                uname = username.strip().lower()
                if uname == FORWARD_USER and cfg.magic_forwarding:
                    continue
                targets.setdefault(uname, addr)
        if blank_catchall:
            hosts = sorted({h for h in blank_catchall if h})
            self.add("virtual-funky-catchall", "warning",
                     "funky_queries is on and %d virtual catch-all row%s ha%s a blank "
                     "virtual_username (%s): the original patch's FUNKY QUERIES ignore them, so "
                     "every other host sharing this DB bounces those domains' mail"
                     % (len(blank_catchall), "" if len(blank_catchall) == 1 else "s",
                        "s" if len(blank_catchall) == 1 else "ve",
                        ", ".join(hosts[:5]) + (" ..." if len(hosts) > 5 else "")),
                     "update virtual set virtual_username='%' where virtual_username='';")
        if cfg.magic_forwarding:
            self.check_forward_loops(rows)
        self._virtual_hosts = {r.virtual_host.lower() for r in rows if r.virtual_host}
        return targets

    def check_forward_loops(self, rows):
        # the rows already read: no 2nd pass
        for loop in virtual.find_forward_loops(rows, self.config.funky_queries):
            first = loop[0]
            user, _, host = first.rpartition("@")
            self.add("virtual-forward-loop", "error",
                     "magic-forward loop: %s -> %s: mail to these addresses circulates until "
                     "qmail bounces it (\"too many hops\")" % (" -> ".join(loop), first),
                     "point one of them elsewhere, e.g. UPDATE virtual SET ext=%s WHERE "
                     "virtual_username=%s AND virtual_host=%s;"
                     % (sql_str("someone@elsewhere.example"), sql_str(user), sql_str(host)))

    def check_virtual_targets(self, targets):
        """Virtual rows whose local user exists nowhere (after the mailbox scan)."""
        for name, addr in sorted(targets.items()):
            if addr is None:
                continue
            if self.config.system_users and _passwd_exists(name):
                continue
            self.add("virtual-target-missing", "warning",
                     "virtual address %s points at local user %r, which has no mailbox row%s: "
                     "its mail goes to the alias user (and bounces)"
                     % (addr, name, " and no /etc/passwd account" if self.config.system_users
                        else ""),
                     "qmailsql mailbox add %s ...  (or correct the virtual row's username)"
                     % q(name))

    # ---- alias

    def scan_alias(self, present, estimate):
        sql = self._select("alias", ["id", "username", "alias", "alias_username", "alias_host"],
                           present)
        levels = self._alias_levels
        for batch in self._stream(sql, "alias", estimate):
            for row in batch:
                rid, username, alias, au, ah = row
                if username:
                    lname = username.lower()
                    if len(levels) < STAT_CACHE_MAX:
                        levels.setdefault(lname, set()).add(alias or "")
                    if lname in self._entry_users:
                        self._entry_rows[lname] = self._entry_rows.get(lname, 0) + 1
                if _blank(au) and _blank(ah):
                    where = "WHERE id=%s" % rid if rid is not None else (
                        "WHERE username=%s AND alias=%s AND alias_username='' AND "
                        "alias_host=''" % (sql_str(username), sql_str(alias or "")))
                    self.add("alias-blank", "error",
                             "alias row %s(username %r, alias %r) has both alias_username and "
                             "alias_host blank: an empty dot-qmail line (the original patch ate "
                             "such mail; qmailsql defers it)"
                             % ("id %s " % rid if rid is not None else "", username, alias or ""),
                             "DELETE FROM alias %s;  or deliver it: UPDATE alias SET "
                             "alias_username='.', alias_host='/Maildir/' %s;" % (where, where))
                    continue
                key = (au or "").strip()
                if len(key) > 1 and key[0] in ".|/" and "@" not in key:
                    line = key + (ah or "").strip()
                    self.add("alias-misconfigured", "error",
                             "alias row %s(username %r, alias %r) has the whole delivery "
                             "instruction %r in alias_username: it becomes a forward to that "
                             "\"address\"; the first character (., / or |) must stand alone "
                             "(FAQ)" % ("id %s " % rid if rid is not None else "", username,
                                        alias or "", key),
                             "UPDATE alias SET alias_username=%s, alias_host=%s WHERE id=%s;"
                             % (sql_str(line[0]), sql_str(line[1:]), rid))
                    continue
                if rid is not None:
                    try:
                        aliases.line_for(row, b"", None)
                    except Refusal as r:
                        self.add("alias-misconfigured", "error", r.message.split("; fix:")[0],
                                 r.message.split("; fix: ", 1)[1] if "; fix: " in r.message
                                 else "correct alias row id %s" % rid)

    # ---- mailbox

    def scan_mailbox(self, present, estimate, users_table, virtual_targets, case_sensitive):
        cfg = self.config
        userlen = cfg.userlen
        add = self.add
        check_home = self.check_home
        seen_case = {} if case_sensitive else None
        alias_found = False
        forward_user = None
        check_stored = passwords.check_stored
        shadows = {}
        home_ok = self._home_ok
        fast_pw = _FAST_PASSWORD
        sql = self._select("mailbox", ["username", "uid", "gid", "home", "password",
                                       "password_type"], present)
        for batch in self._stream(sql, "mailbox", estimate):
            for name, uid, gid, home, pw, ptype in batch:
                if not name or not name.strip():
                    add("mailbox-misconfigured", "error",
                        "a mailbox row has a blank username (uid=%r home=%r): nobody can get "
                        "its mail (\"MySQL misconfiguration\")" % (uid, home),
                        "DELETE FROM mailbox WHERE username=%s;" % sql_str(name or ""))
                    continue
                lname = name.lower()
                if lname == ALIAS_USER:
                    alias_found = True
                elif lname == FORWARD_USER:
                    forward_user = name
                if lname in virtual_targets:
                    virtual_targets[lname] = None
                if seen_case is not None:
                    other = seen_case.get(lname)
                    if other is not None:
                        a, b = sorted((other, name), key=lambda n: (n != lname, n))
                        taken = ("takes %r; %r never gets mail" % (a, b) if a == lname else
                                 "may take either, so one of them never gets mail")
                        add("username-case", "error",
                            "mailbox rows %r and %r differ only in case: qmail-getpw "
                            "lower-cases the address and %s" % (a, b, taken),
                            "DELETE FROM mailbox WHERE username=%s COLLATE utf8mb4_bin;  "
                            "(after merging the two) and use a case-insensitive collation: "
                            "ALTER TABLE mailbox MODIFY username VARCHAR(%d) NOT NULL COLLATE "
                            "utf8mb4_general_ci;" % (sql_str(b), userlen))
                    else:
                        seen_case[lname] = name
                n = len(name) if name.isascii() else len(name.encode("utf-8"))
                if n >= userlen:
                    add("username-too-long", "error",
                        "mailbox %r is %d bytes long, not shorter than userlen %d: qmail-getpw "
                        "never tries it" % (name, n, userlen),
                        "set `userlen %d` in %s and run qmailsql migrate --userlen %d"
                        % (n + 1, self.sqlserver_path, n + 1))
                if users_table is not None:
                    hit = users_table.shadowing(lname)
                    if hit is not None:
                        shadows.setdefault(hit, []).append(name)
                if pw and not (fast_pw.get(ptype) or _plausible_password)(pw, ptype):
                    problem = check_stored(ptype, pw)  # slow (runs crypt): suspects only
                    if problem is not None:
                        add("password-type", "warning", "mailbox %r: %s: checkpassword always "
                            "refuses it" % (name, problem),
                            "qmailsql passwd %s  (or fix password_type: Password, "
                            "Crypt-Password or MySQL-Password)" % q(name))
                if type(uid) is int and type(gid) is int:
                    uid_i, gid_i = uid, gid
                else:
                    try:
                        uid_i, gid_i = int(uid), int(gid)
                    except (TypeError, ValueError):
                        uid_i = gid_i = None
                if uid_i is None or not home or not home.startswith("/"):
                    add("mailbox-misconfigured", "error",
                        "mailbox %r has uid=%r gid=%r home=%r: qmail needs numbers and an "
                        "absolute home; its mail is deferred" % (name, uid, gid, home),
                        "UPDATE mailbox SET uid=..., gid=..., home='/...' WHERE username=%s;"
                        % sql_str(name))
                    continue
                if uid_i == 0:
                    add("uid-zero", "error", "mailbox %r has uid 0: qmail never delivers to "
                        "root (its mail goes to the alias user) and it can never log in" % name,
                        "UPDATE mailbox SET uid=<a real uid> WHERE username=%s;  (and chown "
                        "its home)" % sql_str(name))
                    continue
                if lname in self._alias_levels:
                    self.check_row_files(name, home, self._alias_levels.pop(lname))
                if lname in self._entry_users:
                    self._entry_users[lname] = (name, uid_i, home)
                key = (home, uid_i, gid_i)
                if key in home_ok:
                    continue  # the same home for the same uid/gid: checked, nothing wrong
                if check_home(name, uid_i, gid_i, home):
                    if len(home_ok) >= STAT_CACHE_MAX:
                        home_ok.clear()
                    home_ok.add(key)
        if forward_user is not None and cfg.magic_forwarding:
            self.add("virtual-forward-user", "error",
                     "magic_forwarding is on and there is a mailbox named %r: the FAQ says DO "
                     "NOT create a user named forward" % forward_user,
                     "DELETE FROM mailbox WHERE username=%s;  (or turn magic_forwarding off)"
                     % sql_str(forward_user))
        self.report_shadows(shadows)
        self.flush_search_findings()
        if cfg.system_users:  # rows of /etc/passwd users are delivered the same way
            for lname, levels in sorted(self._alias_levels.items()):
                pw = _passwd_entry(lname)
                if pw is not None:
                    self.check_row_files(pw.pw_name, pw.pw_dir, levels)
        self._alias_levels.clear()
        return alias_found

    def check_row_files(self, name, home, levels):
        """Rows of NAME at LEVELS whose delivery the qmail-local wrapper defers because a
        dot-qmail file in HOME would be read instead (aliases.shadowing_file)."""
        for level in sorted(levels):
            dash = b"-" if level else b""
            try:
                hit = aliases.shadowing_file(home, dash, level.encode("utf-8"))
            except OSError:
                continue  # an unreadable home: the home checks say so
            if hit is None:
                continue
            path, owner = (os.fsdecode(p) if p else None for p in hit)
            address = name + ("-" + level if level else "")
            self.add("alias-shadowed", "error",
                     "alias rows for %s (user %r, alias %r) are never delivered: %s exists "
                     "and stock qmail-local would read it instead%s, so the qmail-local "
                     "wrapper defers that mail (111)" % (
                         address, name, level, path,
                         " (%s makes the wrapper hand it the address's own extension, to "
                         "keep stock's envelope sender)" % owner if owner else ""),
                     "move each line of %s into the alias table (qmailsql alias add %s "
                     "'LINE' --ext %s) and remove the file, or delete the rows: DELETE FROM "
                     "alias WHERE username=%s AND alias=%s;" % (
                         path, q(name), q(level) if level else "''", sql_str(name),
                         sql_str(level)))

    def check_quotas(self):
        """Mailboxes over quota, maildirsize files that cannot be read (quota.py)."""
        from qmailsql.core import quota
        for check, severity, what, fix in quota.doctor_findings(self.directory,
                                                                self.config.quota_overflow):
            self.add(check, severity, what, fix)

    # ---- homes

    def _st(self, path):
        """stat(PATH) once (a bounded cache); an OSError instance when it fails."""
        try:
            return self._stat[path]
        except KeyError:
            pass
        try:
            st = os.stat(path)
        except OSError as e:
            st = e
        if len(self._stat) >= STAT_CACHE_MAX:
            self._stat.clear()
        self._stat[path] = st
        return st

    def check_home(self, name, uid, gid, home):
        """Check one row's home; True when nothing was wrong."""
        before = self.report.total
        st = self._st(home)
        owner = "%d:%d" % (uid, gid)
        if isinstance(st, OSError):
            if st.errno in (errno.ENOENT, errno.ENOTDIR):
                self.add("home-missing", "error",
                         "mailbox %r: home %s does not exist: qmail-getpw skips the user and "
                         "the mail goes to the alias user" % (name, home),
                         "mkdir -p %s && maildirmake %s/Maildir && chown -R %s %s"
                         % (q(home), q(home), owner, q(home)))
            else:
                self.add("home-missing", "error", "mailbox %r: cannot stat home %s: %s"
                         % (name, home, st.strerror), "check the file system holding %s" % home)
            return False
        if not stat.S_ISDIR(st.st_mode):
            self.add("home-missing", "error", "mailbox %r: home %s is not a directory"
                     % (name, home), "mv %s %s.old && mkdir %s && chown %s %s"
                     % (q(home), q(home), q(home), owner, q(home)))
            return False
        if st.st_uid != uid:
            self.add("home-owner", "error",
                     "mailbox %r: home %s is owned by uid %d, not the row's uid %d: "
                     "qmail-getpw skips the user and prints the alias user (FAQ)"
                     % (name, home, st.st_uid, uid),
                     "chown -R %s %s   (or UPDATE mailbox SET uid=%d, gid=%d WHERE username=%s;)"
                     % (owner, q(home), st.st_uid, st.st_gid, sql_str(name)))
        elif st.st_gid != gid:
            self.add("home-group", "warning",
                     "mailbox %r: home %s has group %d, not the row's gid %d" % (
                         name, home, st.st_gid, gid),
                     "chgrp -R %d %s   (or UPDATE mailbox SET gid=%d WHERE username=%s;)"
                     % (gid, q(home), st.st_gid, sql_str(name)))
        if st.st_mode & stat.S_IWOTH:
            self.add("home-writable", "error",
                     "mailbox %r: home %s is world-writable (%s): qmail-local defers every "
                     "delivery (\"Uh-oh: home directory is writable\")" % (name, home, _mode(st)),
                     "chmod o-w %s" % q(home))
        if st.st_mode & stat.S_ISVTX:
            self.add("home-sticky", "warning",
                     "mailbox %r: home %s has the sticky bit: qmail-local defers deliveries "
                     "(\"user is editing his .qmail file\")" % (name, home),
                     "chmod -t %s" % q(home))
        gids = (gid,)
        # every directory above home, computed once per (parent, uid, gid)
        parent = home.rstrip("/").rpartition("/")[0] or "/"
        key = (parent, uid, gid)
        blocked = self._search.get(key, False)
        if blocked is False:
            blocked = None
            for d in _parents(home.rstrip("/") or "/"):
                dst = self._st(d)
                if isinstance(dst, OSError):
                    break
                if not can(dst, uid, gids, 1):
                    blocked = d
                    break
            if len(self._search) >= STAT_CACHE_MAX:
                self._search.clear()
            self._search[key] = blocked
        if blocked is None and not can(st, uid, gids, 1):
            blocked = home
        maildir = home.rstrip("/") + "/Maildir"
        mst = self._st(maildir)
        if blocked is None:
            if isinstance(mst, OSError):
                if mst.errno == errno.ENOENT:
                    self.add("maildir-missing", "warning",
                             "mailbox %r: %s does not exist: POP3 says \"this user has no "
                             "$HOME/Maildir\" (fine only if the user's .qmail or alias rows "
                             "deliver elsewhere)" % (name, maildir),
                             "maildirmake %s && chown -R %s %s" % (q(maildir), owner,
                                                                  q(maildir)))
                return False
            if not stat.S_ISDIR(mst.st_mode):
                return self.report.total == before  # an mbox called Maildir
            if mst.st_uid != uid:
                self.add("maildir-owner", "error",
                         "mailbox %r: %s is owned by uid %d, not %d: deliveries and POP3 fail"
                         % (name, maildir, mst.st_uid, uid),
                         "chown -R %s %s" % (owner, q(maildir)))
                return False
            if not can(mst, uid, gids, 1):
                blocked = maildir
        if blocked is not None:
            agg = self._blocked.setdefault(blocked, [0, name, uid, gid])
            agg[0] += 1
            return False
        return self.report.total == before

    def flush_search_findings(self):
        for path, (n, name, uid, gid) in sorted(self._blocked.items()):
            st = self._st(path)
            if isinstance(st, OSError):
                continue
            more = (" and %d more mailbox%s" % (n - 1, "es" if n > 2 else "")) if n > 1 else ""
            self.add("path-not-searchable", "error",
                     "%s (%s %s:%s) is not searchable by uid %d gid %d (mailbox %r%s): POP3 "
                     "says \"this user has no $HOME/Maildir\" and deliveries fail"
                     % (path, _mode(st), _user(st.st_uid), _group(st.st_gid), uid, gid, name,
                        more),
                     grant_fix(path, st, uid, (gid,), "x"))
        self._blocked = {}

    # ---- the alias user

    def check_alias_user(self, alias_found):
        if alias_found:
            return
        if self.config.system_users and _passwd_exists(ALIAS_USER):
            return
        home = os.path.join(self.qmail_dir, "alias")
        self.add("alias-user-missing", "error",
                 "no alias user: neither a mailbox row %r nor%s an /etc/passwd account: mail "
                 "for unknown addresses gets exit 116 and postmaster/MAILER-DAEMON have nowhere "
                 "to go" % (ALIAS_USER, "" if self.config.system_users else " (system_users "
                            "is off)"),
                 "useradd -d %s -s /bin/false alias  (qmail's INSTALL.ids), or: INSERT INTO "
                 "mailbox (username, uid, gid, home, password, suspended) VALUES ('alias', "
                 "<uid>, <gid>, %s, '', 'N');  and mkdir %s owned by that uid"
                 % (q(home), sql_str(home), q(home)))

    # ---- users/cdb

    def users_table(self):
        from qmailsql.admin.importers import UsersTable, parse_assign
        tables = []
        cdb_path = os.path.join(self.qmail_dir, "users", "cdb")
        assign_path = os.path.join(self.qmail_dir, "users", "assign")
        try:
            tables.append(UsersTable.from_cdb(cdb.Reader.open(cdb_path).items(), "users/cdb"))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except PermissionError as e:
            self.no_access(cdb_path, e, "users/cdb entries that shadow DB mailboxes")
        except Exception as e:  # a corrupt cdb: qmail-lspawn defers everything
            self.add("users-cdb-shadow", "error", "%s cannot be read (%s): qmail-lspawn defers "
                     "every delivery (\"Trouble reading users/cdb\")" % (cdb_path, e),
                     "rebuild it: qmail-newu, or remove it: rm %s" % q(cdb_path))
        try:
            with open(assign_path, "rb") as f:
                entries, _ = parse_assign(f.read())
            tables.append(UsersTable(entries, "users/assign"))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            self.no_access(assign_path, e, "users/assign entries that shadow DB mailboxes")
        if not tables:
            return None
        return _Shadows(tables)

    def check_bypass(self, users_table):
        """users/cdb (users/assign) entries whose account is not the DB's (uid and home of
        the mailbox row, or of the passwd entry), although the DB has something for that
        name: qmail-local then delivers as stock qmail would, skipping the DB's rows."""
        from qmailsql.admin.importers import _ulong
        assign_path = os.path.join(self.qmail_dir, "users", "assign")
        done = set()
        for source, e in users_table.sourced_entries():
            spec = e.spec()
            lname = e.user.lower()
            rows = self._entry_rows.get(lname, 0)
            mailbox = self._entry_users.get(lname)
            if spec in done or (not rows and mailbox is None):
                continue
            done.add(spec)
            uid = _ulong(e.uid)
            if mailbox is not None:
                name, acct_uid, acct_home = mailbox
                whose = "not the DB's account %r (mailbox uid %s, home %s)" % (
                    name, acct_uid, acct_home)
            else:
                pw = _passwd_entry(e.user) if self.config.system_users else None
                acct_uid, acct_home = (pw.pw_uid, pw.pw_dir) if pw else (None, None)
                whose = ("not a DB account (no mailbox row%s)" % (
                    ", and the passwd entry has uid %s, home %s" % (acct_uid, acct_home)
                    if pw else ""))
            if (acct_uid, acct_home) == (uid, e.home):
                continue  # the DB's own account: its rows are delivered
            when = "" if source == "users/cdb" else " (once qmail-newu has run)"
            skipped = ("; the %d alias row%s of %r are not used" % (
                rows, "" if rows == 1 else "s", e.user)) if rows else ""
            self.add("users-cdb-bypass", "error" if rows else "warning",
                     "%s entry %s delivers as user %r uid %d home %s, which is %s: "
                     "qmail-local delivers it as stock qmail would%s%s"
                     % (source, spec, e.user, uid, e.home, whose, skipped, when),
                     "to deliver it from the DB instead: qmailsql import assign %s --apply, "
                     "delete the line from %s and run qmail-newu%s" % (
                         q(assign_path), q(assign_path),
                         "; to keep the entry: DELETE FROM alias WHERE username=%s;"
                         % sql_str(e.user) if rows else
                         "; or give the entry the mailbox's uid and home"))

    def report_shadows(self, shadows):
        cdb_path = os.path.join(self.qmail_dir, "users", "cdb")
        assign_path = os.path.join(self.qmail_dir, "users", "assign")
        for (source, key, answer), names in sorted(shadows.items()):
            more = (" and %d more" % (len(names) - 1)) if len(names) > 1 else ""
            when = ("" if source == "users/cdb" else
                    " (once qmail-newu turns users/assign into users/cdb)")
            self.add("users-cdb-shadow", "error",
                     "%s entry %s (user %s) takes mail for DB mailbox %r%s before qmail-getpw "
                     "is asked%s: the DB row is ignored"
                     % (source, key, answer, names[0], more, when),
                     "move it into the DB (qmailsql import assign %s --apply), delete the line "
                     "from %s and run qmail-newu (no lines left: rm %s %s)"
                     % (q(assign_path), q(assign_path), q(assign_path), q(cdb_path)))

    # ---- control files

    def check_control_files(self):
        try:
            plan = sync.plan(self.qmail_dir, self.directory)
        except OSError as e:
            self.no_access(e.filename or os.path.join(self.qmail_dir, "control"), e,
                           "whether the control files follow the DB")
            return
        except Exception as e:
            self.add("control-stale", "error", "cannot compute what `qmailsql sync` would "
                     "write: %s" % e, "fix the rows named, then qmailsql sync")
            return
        for name, path, new, old in plan.files:
            if name.endswith(".cdb"):
                want = {k for k, _ in cdb.Reader(new).items()} if new else set()
                try:
                    have = {k for k, _ in cdb.Reader(old).items()} if old else set()
                except Exception:
                    have = {None}
                want = {k.decode("utf-8", "replace") for k in want}
                have = {k.decode("utf-8", "replace") if k is not None else "<corrupt>"
                        for k in have}
            else:
                want, have = _effective(new), _effective(old)
            if want == have:
                continue
            missing, extra = sorted(want - have), sorted(have - want)
            parts = []
            if missing:
                parts.append("lacks %s" % _few(missing))
            if extra:
                parts.append("still has %s" % _few(extra))
            self.add("control-stale", "error",
                     "control/%s is out of step with the DB: it %s%s"
                     % (name, " and ".join(parts),
                        ": mail for those domains is refused or not treated as virtual"
                        if name == "virtualdomains" else ": qmail-smtpd accepts the wrong "
                        "domains"),
                     "qmailsql --qmail-dir %s sync" % q(self.qmail_dir))

    def check_locals(self):
        """A virtual host also in control/locals is delivered as local: qmail-send reads
        locals before virtualdomains, so u@host goes to the local user u."""
        path = os.path.join(self.qmail_dir, "control", "locals")
        try:
            with open(path, "rb") as f:
                local = _effective(f.read())
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            self.no_access(path, e, "virtual domains that control/locals makes local")
            return
        for host in sorted(local & getattr(self, "_virtual_hosts", set())):
            self.add("control-locals", "error",
                     "%s is a virtual domain in the DB but also in control/locals: qmail-send "
                     "treats it as local, so u@%s goes to the local user u, not the virtual "
                     "table" % (host, host),
                     "remove the line %s from %s (then svc -h /service/qmail-send)"
                     % (host, path))


class _Shadows:
    """users/cdb and users/assign, asked as qmail-lspawn asks: (source, key, answer) or None."""

    def __init__(self, tables):
        self.tables = tables

    def sourced_entries(self):
        for table in self.tables:
            for e in list(table.simple.values()) + list(table.wild.values()):
                yield table.source, e

    def entries(self):
        return (e for _, e in self.sourced_entries())

    def shadowing(self, lname):
        for table in self.tables:
            hit = table.lookup_entry(lname)
            if hit is not None:
                entry, fields = hit
                return (table.source, entry.spec(), "%s uid %s home %s" % (
                    fields[0], fields[1], fields[3]))
        return None


# ---------------------------------------------------------------------- small helpers

_B64 = r"[./0-9A-Za-z]"
_GOOD_CRYPT = re.compile(
    r"(?:%(b)s{13}"                                            # DES
    r"|\$1\$%(b)s{1,8}\$%(b)s{22}"                                # md5-crypt
    r"|\$5\$(?:rounds=\d+\$)?%(b)s{1,16}\$%(b)s{43}"              # sha256-crypt
    r"|\$6\$(?:rounds=\d+\$)?%(b)s{1,16}\$%(b)s{86}"              # sha512-crypt
    r"|\$2[abxy]\$\d\d\$%(b)s{53}"                                 # bcrypt
    r"|\$y\$%(b)s+\$%(b)s+\$%(b)s{43})\Z" % {"b": _B64})            # yescrypt
_GOOD_MYSQL = re.compile(r"(?:\*[0-9A-Fa-f]{40}|[0-9A-Fa-f]{16})\Z")


def _plausible_password(pw, ptype):
    """A cheap test that a row's password columns are fine (most rows): the full
    passwords.check_stored() runs crypt(3), far too slow for a million rows."""
    kind = (ptype or "").strip().lower() if isinstance(ptype, str) else ""
    if not isinstance(pw, str):
        return False
    if kind == "password":
        return "\0" not in pw
    if kind == "crypt-password":
        return _GOOD_CRYPT.match(pw) is not None
    if kind == "mysql-password":
        return _GOOD_MYSQL.match(pw) is not None
    return False


_FAST_PASSWORD = {
    "Crypt-Password": lambda pw, _t, m=_GOOD_CRYPT.match: type(pw) is str and m(pw) is not None,
    "MySQL-Password": lambda pw, _t, m=_GOOD_MYSQL.match: type(pw) is str and m(pw) is not None,
    "Password": lambda pw, _t: type(pw) is str and "\0" not in pw,
}


def _blank(value):
    return value is None or str(value).strip() == ""


def _effective(data):
    """The lines qmail reads from a control file: not blank, not comments; lower-cased."""
    if not data:
        return set()
    if isinstance(data, bytes):
        data = data.decode("utf-8", "surrogateescape")
    return {l.strip().lower() for l in data.split("\n") if l.strip() and not
            l.lstrip().startswith("#")}


def _few(items, n=5):
    return ", ".join(items[:n]) + (" (and %d more)" % (len(items) - n) if len(items) > n
                                   else "")


def _passwd_entry(name):
    try:
        return pwd.getpwnam(name)
    except (KeyError, OSError):
        return None


def _passwd_exists(name):
    return _passwd_entry(name) is not None


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return str(uid)


def _group(gid):
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OSError):
        return str(gid)


def _peer_cred(path, timeout):
    """(pid, uid, gid) of the process listening on the unix socket PATH (SO_PEERCRED), or
    None where the system cannot tell; OSError when the connection is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            return UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
        except (OSError, AttributeError):
            return None


def _proc_groups(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _add_column_sql(schema, table, col, userlen):
    if col == "id":
        return ("ALTER TABLE `%s` ADD id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY "
                "FIRST;" % table)
    ddl = schema.TABLES.get(table, "").format(n=userlen)
    for line in ddl.split("\n"):
        line = line.strip().rstrip(",")
        if line.split(" ")[0] == col:
            return "ALTER TABLE `%s` ADD %s;" % (table, line)
    return "ALTER TABLE `%s` ADD %s ...;  (see qmailsql/core/schema.py)" % (table, col)


# ---------------------------------------------------------------------- the command

def run(qmail_dir=None, limit=20, progress=None):
    """Run every check; a Report (findings, counts, rows scanned, elapsed)."""
    return Doctor(qmail_dir, limit=limit, progress=progress).run()
