"""The `qmailsql` command for administrators (and `qmailsqld`)."""
import argparse
import os
import sys

from qmailsql import __version__
from qmailsql.core.config import DEFAULTS_FILE_ENV
from qmailsql.core.hotpath import ConfigError

DESCRIPTION = """\
Run stock qmail on a MySQL/MariaDB user database.

qmail's helpers (bin/qmail-getpw, bin/qmail-local, bin/checkpassword) are replaced by
small compiled clients that ask qmailsqld, the one process that reads
QMAIL/control/sqlserver and holds the DB connections.
"""

EPILOG = """\
examples:
  qmailsql sandbox up /tmp/qs        private MariaDB + qmail home; prints exports
  qmailsql initdb --userlen 64       create the database and the tables (idempotent)
  qmailsql grant                     the daemon's DB login, with exactly its two grants
  qmailsql getpw --explain iain-foo  which user gets iain-foo, and why
  qmailsql demo                      the FAQ's examples, end to end

The qmail home is --qmail-dir, else $QMAILSQL_QMAIL_DIR, else conf-qmail (%s).
Exit codes follow qmail: 0 ok, 111 try again later, 100 usage error.
"""


def die(code, message):
    sys.stderr.write("qmailsql: %s\n" % message)
    return code


def session(args, admin=True):
    """A Session for a command: the administrator's login (--defaults-file, else
    $QMAILSQL_DEFAULTS_FILE, else ~/.my.cnf) or, ADMIN false, control/sqlserver's."""
    import qmailsql
    return qmailsql.connect(getattr(args, "qmail_dir", None), admin=admin,
                            defaults_file=getattr(args, "defaults_file", None))


def cmd_getpw(args):
    from qmailsql.core.resolve import Refusal
    local = os.fsencode(args.local)
    explain = [] if args.explain else None
    try:
        with session(args, admin=False) as q:
            delivery = q.getpw(local, explain)
    except Refusal as r:
        for line in explain or ():
            print(line)
        return die(r.code, "getpw %s: %s" % (args.local, r.message))
    if explain is not None:
        for line in explain:
            print(line)
        print("answer: user=%s uid=%d gid=%d home=%s dash=%r ext=%r" % (
            os.fsdecode(delivery.user), delivery.uid, delivery.gid, os.fsdecode(delivery.home),
            os.fsdecode(delivery.dash), os.fsdecode(delivery.ext)))
        return explain_local(args, delivery, local)
    sys.stdout.buffer.write(delivery.fields())
    sys.stdout.buffer.flush()
    return 0


def explain_local(args, delivery, local):
    """What the qmail-local wrapper would be told for this delivery (SPEC section 5)."""
    from qmailsql.core import aliases
    from qmailsql.core.resolve import Refusal
    from qmailsql.core import quota
    try:
        with session(args, admin=False) as q:
            lines = aliases.delivery_lines(q.directory, q.config, delivery.user, delivery.home,
                                           local, delivery.dash, delivery.ext, b"")
            print("qmail-local: %s" % quota.explain(q.directory, q.config, delivery.user))
    except Refusal as r:
        return die(r.code, "qmail-local would defer (exit %d): %s" % (r.code, r.message))
    if not lines:
        print("qmail-local: no alias-table rows; the stock qmail-local reads the dot-qmail "
              "files in %s" % os.fsdecode(delivery.home))
        return 0
    print("qmail-local: alias-table rows give these dot-qmail lines:")
    for line in lines.decode("utf-8", "replace").splitlines():
        print("  " + line)
    return 0


def cmd_initdb(args):
    from qmailsql.core import schema
    schema.check_userlen(args.userlen)
    with session(args) as q:
        if schema.create_database(q.config):
            print("created database %s" % q.config.db)
        made = schema.initdb(q.directory, args.userlen)
    print("created: %s" % (", ".join(made) if made else "nothing (all tables exist)"))
    return 0


def cmd_grant(args):
    """control/sqlserver's login, with exactly the daemon's grants (SPEC 2)."""
    from qmailsql.core import config as configmod, schema
    daemon = configmod.load(getattr(args, "qmail_dir", None))
    if not daemon.password:
        return die(100, "grant: %s gives login %r no password (or password_file); add one "
                   "there first: the login gets exactly that password, so the daemon's "
                   "copy and the server's cannot differ" % (daemon.path, daemon.login))
    with session(args) as q:
        shown = schema.grant_daemon(q.directory, daemon.db, daemon.login, daemon.password,
                                    args.host or ["localhost"])
    for host, lines in shown.items():
        print("%s@%s (password from %s) now has exactly:" % (daemon.login, host, daemon.path))
        for line in lines:
            print("  " + line)
    return 0


def cmd_migrate(args):
    from qmailsql.core import schema
    with session(args) as q:
        userlen = args.userlen or q.config.userlen
        changes = schema.migrate(q.directory, userlen)
    for line in changes:
        print(line)
    if not changes:
        print("nothing to do: every table, column and lookup index is there and every "
              "username column is at least %d wide" % userlen)
    return 0


def cmd_sandbox(args):
    from qmailsql.sandbox import host as sandbox
    if args.action == "up":
        env = sandbox.up(args.dir, port=args.port, daemon=not args.no_daemon)
        print("export " + " ".join("%s=%s" % kv for kv in sorted(env.items())))
    else:
        sandbox.down(args.dir)
        print("# sandbox %s stopped and removed" % args.dir)
    return 0


def cmd_demo(args):
    from qmailsql.sandbox import demo
    return demo.run()


def cmd_helper(args):
    from qmailsql.core.helpers import HelperMissing, helper_path
    try:
        print(helper_path(args.name))
    except HelperMissing as e:
        return die(111, str(e))
    return 0


def cmd_passwd(args):
    """Set a mailbox password: twice at a terminal prompt, else one line of stdin."""
    from qmailsql.core import auth
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass
        first = getpass.getpass("New password for %s: " % args.user)
        if getpass.getpass("Retype it: ") != first:
            return die(1, "passwd: the two passwords differ; nothing changed")
        password = first.encode("utf-8")
    else:
        line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
        password = line[:-1] if line.endswith(b"\n") else line
        if password.endswith(b"\r"):
            password = password[:-1]
    with session(args) as q:
        try:
            name, kind, scheme = auth.set_password(q.directory, q.config, args.user, password,
                                                   args.scheme)
        except auth.NoSuchMailbox as e:
            return die(1, "passwd: %s; nothing changed" % e)
    print("password of %s set (%s, %s)" % (name, kind, scheme))
    from qmailsql.core import dovecot  # qmailsqld caches no password; Dovecot's cache may
    dovecot.flush_auth_cache(lambda m: sys.stderr.write("qmailsql: warning: %s\n" % m))
    return 0


def cmd_daemon(args):
    from qmailsql.daemon import server as daemon
    return daemon.main(args)


def cmd_flush(args):
    from qmailsql.core import client, config as configmod
    path = configmod.socket_path(configmod.qmail_dir(args.qmail_dir))
    try:
        status, body = client.flush(path)
    except (OSError, ValueError) as e:
        return die(111, "flush: cannot reach qmailsqld at %s: %s; start it with `qmailsql "
                   "daemon` (run it under daemontools or systemd), then see `qmailsql doctor`"
                   % (path, getattr(e, "strerror", None) or e))
    if status:
        return die(status, "flush: qmailsqld answered %d: %s" % (
            status, body.decode("utf-8", "replace")))
    print("ok: qmailsqld at %s dropped its cache" % path)
    return 0


# (built helper, name in QMAIL/bin, replaces a stock qmail program)
INSTALLED = (("qmail-getpw", "qmail-getpw", True), ("qmail-local", "qmail-local", True),
             ("checkpassword", "qmailsql-checkpassword", False),
             ("dovecot-auth.lua", "qmailsql-dovecot-auth.lua", False))  # see dovecot.py


def _is_ours(data, new):
    """A file in QMAIL/bin is one of our helpers (any build) rather than stock qmail's."""
    return data == new or b"QMAILSQL_SOCKET" in data


DAEMON_USER = "qmailsql"


def cmd_install(args):
    import grp
    import shutil
    from qmailsql.core import config as configmod
    from qmailsql.core.helpers import HelperMissing, helper_path
    qdir = configmod.qmail_dir(args.qmail_dir)
    bindir = os.path.join(qdir, "bin")
    if not os.path.isdir(bindir):
        return die(111, "install: %s does not exist; is qmail installed in %s? (--qmail-dir)"
                   % (bindir, qdir))
    if args.undo:
        for name, target, stock in INSTALLED:
            dst = os.path.join(bindir, target)
            orig = dst + ".orig"
            if stock and os.path.exists(orig):
                os.rename(orig, dst)
                print("restored %s from %s" % (dst, orig))
            elif stock:
                print("%s: no %s to restore; left as it is" % (dst, orig))
            elif os.path.exists(dst):
                with open(dst, "rb") as f:
                    if not _is_ours(f.read(), b""):
                        print("%s: not qmailsql's helper; left as it is" % dst)
                        continue
                os.unlink(dst)
                print("removed %s" % dst)
        return 0
    try:
        gid = grp.getgrnam("qmail").gr_gid
    except KeyError:
        gid = -1
    uid = 0 if os.geteuid() == 0 else -1
    for name, target, stock in INSTALLED:
        try:
            src = helper_path(name)
        except HelperMissing as e:
            return die(111, "install: %s" % e)
        with open(src, "rb") as f:
            new = f.read()
        dst = os.path.join(bindir, target)
        orig = dst + ".orig"
        try:
            with open(dst, "rb") as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if old is not None and stock and not _is_ours(old, new) and os.path.lexists(orig):
            return die(111, "install: %s is not qmailsql's helper and %s exists already (a "
                       "qmail upgrade?); move one of them away, then run install again"
                       % (dst, orig))
        tmp = dst + ".qmailsql-new"
        with open(tmp, "wb") as f:
            f.write(new)
        os.chmod(tmp, 0o755)
        if uid == 0 or gid != -1:
            try:
                os.chown(tmp, uid, gid)
            except OSError:
                pass
        if old is not None and stock and not _is_ours(old, new):
            try:
                os.link(dst, orig)  # keep the stock program; dst is never missing
            except OSError:
                shutil.copy2(dst, orig)
            print("kept stock %s as %s" % (dst, orig))
        os.rename(tmp, dst)
        if old is None:
            print("installed %s" % dst)
        elif old == new:
            print("refreshed %s (already this build)" % dst)
        elif _is_ours(old, new):
            print("updated %s (an older qmailsql helper)" % dst)
        else:
            print("installed %s" % dst)
    run = os.path.join(qdir, "qmailsql")
    if not os.path.isdir(run):
        os.makedirs(run, 0o755)
        print("created %s (qmailsqld's socket lives here)" % run)
    try:  # the daemon, running as user qmailsql, creates its socket here
        import pwd
        daemon_user = pwd.getpwnam(DAEMON_USER)
        os.chown(run, daemon_user.pw_uid, daemon_user.pw_gid)
        print("%s belongs to %s (the daemon's user)" % (run, DAEMON_USER))
    except KeyError:
        print("note: no user %s; create it (useradd -r -s /usr/sbin/nologin %s) and "
              "chown it %s, or run qmailsqld as root" % (DAEMON_USER, DAEMON_USER, run))
    print("done; start qmailsqld (`qmailsql daemon`) before qmail delivers with these helpers")
    return 0


def cmd_doctor(args):
    from qmailsql.admin import doctor
    return doctor.cmd_doctor(args)


ADMIN_LOGIN = ("It logs in as the administrator, never with control/sqlserver's login: "
               "the user and password of --defaults-file FILE, else $%s, else "
               "[client] or [qmailsql] in ~/.my.cnf or /etc/mysql/my.cnf, else the OS user "
               "over the unix socket (root on Debian)." % DEFAULTS_FILE_ENV)


def admin_options(p):
    """--qmail-dir and --defaults-file after the subcommand too (SUPPRESS keeps the
    global ones when not given there)."""
    p.add_argument("--qmail-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="qmail home (default: $QMAILSQL_QMAIL_DIR or conf-qmail)")
    p.add_argument("--defaults-file", metavar="FILE", default=argparse.SUPPRESS,
                   help="MariaDB option file with the administrator's login")


class Parser(argparse.ArgumentParser):
    """argparse, with qmail's exit code for a usage error (100, not 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(100, "%s: %s\n" % (self.prog, message))


def build_parser():
    from qmailsql.core.config import compiled_qmail_dir
    p = Parser(prog="qmailsql", description=DESCRIPTION,
                                epilog=EPILOG % compiled_qmail_dir(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="qmailsql " + __version__)
    p.add_argument("--qmail-dir", metavar="DIR",
                   help="qmail home holding control/sqlserver (default: $QMAILSQL_QMAIL_DIR "
                        "or conf-qmail)")
    p.add_argument("--defaults-file", metavar="FILE",
                   help="MariaDB option file with the administrator's login, for initdb, "
                        "grant, migrate and the admin commands (default: $%s, else "
                        "~/.my.cnf and MariaDB's own files)" % DEFAULTS_FILE_ENV)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    s = sub.add_parser("getpw", help="resolve a local part like qmail-getpw (direct to the DB)",
                       description="Print qmail-getpw's six NUL-terminated fields for LOCAL, "
                       "asking the DB directly (no daemon) with control/sqlserver's login, "
                       "as the daemon does. Exit codes as qmail-getpw: 0, 111 DB trouble, "
                       "116 no alias user.")
    s.add_argument("local", metavar="LOCAL")
    s.add_argument("--explain", action="store_true",
                   help="print every candidate tried and why it was taken or rejected")
    s.set_defaults(func=cmd_getpw)

    s = sub.add_parser("initdb", help="create the database and the tables (idempotent)",
                       description="Create control/sqlserver's database (utf8mb4) if it is "
                       "missing, then every missing table. " + ADMIN_LOGIN)
    s.add_argument("--userlen", type=int, default=32,
                   help="width of the username columns (default 32)")
    admin_options(s)
    s.set_defaults(func=cmd_initdb)

    s = sub.add_parser("grant", help="create the daemon's DB login with exactly its grants",
                       description="Create (or correct) control/sqlserver's login on the "
                       "write_server, with control/sqlserver's password (or password_file) "
                       "and exactly these grants, whatever it had before: SELECT on DB.* and "
                       "UPDATE (password, password_type) on DB.mailbox. Run it after initdb. "
                       + ADMIN_LOGIN)
    s.add_argument("--host", action="append", metavar="HOST",
                   help="the host the daemon connects from, as the server sees it "
                        "(repeatable; default localhost, which is a unix socket or TCP "
                        "from this machine)")
    admin_options(s)
    s.set_defaults(func=cmd_grant)

    s = sub.add_parser("migrate", help="add new columns and lookup indexes, widen username "
                       "columns", description="Bring existing tables (say, the original "
                       "patch's, or an older qmailsql's) up to what this version needs: add "
                       "the columns they lack (mailbox.deny_services, quota_size, quota_count) "
                       "and the tables (domain_quota), widen the username "
                       "columns to --userlen (never narrower) and add the indexes the lookups "
                       "use, so that a domain with many users costs no more than a small one. "
                       "Safe to run again. " + ADMIN_LOGIN)
    s.add_argument("--userlen", type=int, help="width of the username columns (default: "
                   "userlen in control/sqlserver, 32)")
    admin_options(s)
    s.set_defaults(func=cmd_migrate)

    s = sub.add_parser("sandbox", help="throw-away qmail home + private MariaDB in DIR",
                       description="`up DIR` starts a private MariaDB (own datadir and socket "
                       "under DIR, no TCP port), writes DIR/control/sqlserver, creates the "
                       "schema, copies the helpers to DIR/bin and starts qmailsqld; it prints "
                       "the shell exports to use it. `down DIR` stops it all and removes DIR.")
    s.add_argument("action", choices=["up", "down"])
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--port", type=int, help="also listen on 127.0.0.1:PORT (default: socket only)")
    s.add_argument("--no-daemon", action="store_true", help="do not start qmailsqld")
    s.set_defaults(func=cmd_sandbox)

    s = sub.add_parser("demo", help="the FAQ's examples in a sandbox, end to end")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("helper", help="print the path of a built helper")
    s.add_argument("name", choices=["qmail-getpw", "qmail-local", "checkpassword",
                                    "dovecot-auth.lua"])
    s.set_defaults(func=cmd_helper)

    s = sub.add_parser("passwd", help="set a mailbox password",
                       description="Set USER's password in the mailbox table, through the "
                       "write server. At a terminal it asks twice; otherwise it reads one "
                       "line from stdin (for scripts). Exit 1: no such mailbox.")
    s.add_argument("user", metavar="USER")
    s.add_argument("--scheme", metavar="S",
                   help="sha512-crypt, sha256-crypt, bcrypt, yescrypt, md5-crypt, mysql41 "
                        "or plain (default: default_scheme in control/sqlserver)")
    admin_options(s)
    s.set_defaults(func=cmd_passwd)

    s = sub.add_parser("daemon", help="run qmailsqld in the foreground (logs on stderr)",
                       description="Run qmailsqld: listen on the socket, hold the DB "
                       "connections and the cache. Logs one line per event on stderr, for "
                       "multilog.")
    s.add_argument("--pidfile", help="write the pid here")
    s.add_argument("--debug", action="store_true", help="log every query")
    # `qmailsqld --qmail-dir DIR` is `qmailsql daemon --qmail-dir DIR`
    s.add_argument("--qmail-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="qmail home holding control/sqlserver")
    s.set_defaults(func=cmd_daemon)

    s = sub.add_parser("flush", help="drop qmailsqld's cache (after changing the DB by hand)",
                       description="Ask the running qmailsqld to drop its cache, so changes "
                       "made to the tables are seen at once. Exit 111 if it is not running.")
    s.set_defaults(func=cmd_flush)

    s = sub.add_parser("install", help="put the compiled helpers into QMAIL/bin",
                       description="Copy the built helpers into QMAIL/bin: qmail-getpw and "
                       "qmail-local replace the stock programs, which are kept as NAME.orig "
                       "(an existing .orig is never overwritten); checkpassword goes in as "
                       "bin/qmailsql-checkpassword, Dovecot's Lua passdb/userdb as "
                       "bin/qmailsql-dovecot-auth.lua. Modes 0755, owner root, group qmail. "
                       "--undo puts the .orig files back.")
    s.add_argument("--qmail-dir", metavar="DIR", dest="qmail_dir", default=argparse.SUPPRESS,
                   help="the qmail home (default: $QMAILSQL_QMAIL_DIR or conf-qmail)")
    s.add_argument("--undo", action="store_true", help="restore the stock programs")
    s.set_defaults(func=cmd_install)

    from qmailsql.admin import tables as admin  # mailbox, alias, virtual, rcpthost, sync
    admin.add_commands(sub)

    from qmailsql.core import quota  # quota set, quota [USER...]
    quota.add_commands(sub)

    s = sub.add_parser("doctor", help="find every FAQ pitfall and say how to fix it",
                       description="Check control/sqlserver, each DB server, the schema, "
                       "every mailbox home (owner, and searchable down to Maildir by its uid), "
                       "alias and virtual rows, control files, users/cdb, the helpers in "
                       "QMAIL/bin, the daemon and the alias user. One line what, one line "
                       "fix per finding. Exit 0 healthy, 1 findings.")
    s.add_argument("--qmail-dir", metavar="DIR", dest="qmail_dir", default=argparse.SUPPRESS,
                   help="the qmail home (default: $QMAILSQL_QMAIL_DIR or conf-qmail)")
    s.add_argument("--json", action="store_true",
                   help="print a JSON list of {check, severity, what, fix}")
    s.add_argument("--all", action="store_true",
                   help="show every finding (default: at most 20 of each kind)")
    s.set_defaults(func=cmd_doctor)

    from qmailsql.admin import importers  # import assign|vpopmail
    importers.add_commands(sub)

    from qmailsql.core import dovecot  # dovecot-config
    dovecot.add_command(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from qmailsql.core.db import DirectoryUnavailable
    from qmailsql.sandbox.host import SandboxError
    try:
        return args.func(args)
    except ConfigError as e:
        return die(111, "%s" % e)
    except DirectoryUnavailable as e:
        return die(111, "%s (is the DB running? try `qmailsql doctor`)" % e)
    except SandboxError as e:
        return die(111, "sandbox: %s" % e)
    except ValueError as e:
        return die(100, str(e))
    except KeyboardInterrupt:
        return die(111, "interrupted")


def daemon_main():
    return main(["daemon"] + sys.argv[1:])
