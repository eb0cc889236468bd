"""The `qmailsql` command for administrators (and `qmailsqld`)."""
import argparse
import dataclasses
import getpass
import json
import os
import pwd
import sys
import textwrap

from qmailsql import __version__, api
from qmailsql.api import DEFAULTS_FILE_ENV
from qmailsql.daemon import run as daemon_process
from qmailsql.sandbox import demo, host as sandbox

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
    return api.connect(getattr(args, "qmail_dir", None), admin=admin,
                       defaults_file=getattr(args, "defaults_file", None))


def print_rows(header, rows):
    """ROWS (tuples of values) as tab-separated columns under HEADER."""
    print("\t".join(header))
    for r in rows:
        print("\t".join("" if v is None else str(v) for v in r))


# ------------------------------------------------------------------- delivery

def cmd_getpw(args):
    local = os.fsencode(args.local)
    explain = [] if args.explain else None
    with session(args, admin=False) as q:
        try:
            delivery = q.getpw(local, explain)
        except api.Refusal as r:
            for line in explain or ():
                print(line)
            return die(r.code, "getpw %s: %s" % (args.local, r.message))
        if explain is None:
            sys.stdout.buffer.write(delivery.fields())
            sys.stdout.buffer.flush()
            return 0
        for line in explain:
            print(line)
        print("answer: user=%s uid=%d gid=%d home=%s dash=%r ext=%r" % (
            os.fsdecode(delivery.user), delivery.uid, delivery.gid, os.fsdecode(delivery.home),
            os.fsdecode(delivery.dash), os.fsdecode(delivery.ext)))
        # what the qmail-local wrapper would be told for this delivery (SPEC section 5)
        try:
            lines = q.alias_lines(delivery, local)
            print("qmail-local: %s" % q.quota_explain(delivery.user))
        except api.Refusal as r:
            return die(r.code, "qmail-local would defer (exit %d): %s" % (r.code, r.message))
    if not lines:
        print("qmail-local: no alias-table rows; the stock qmail-local reads the dot-qmail "
              "files in %s" % os.fsdecode(delivery.home))
        return 0
    print("qmail-local: alias-table rows give these dot-qmail lines:")
    for line in lines.decode("utf-8", "replace").splitlines():
        print("  " + line)
    return 0


# ------------------------------------------------------------------- schema

def cmd_initdb(args):
    api.check_userlen(args.userlen)  # a usage error, before any connection
    with session(args) as q:
        created, made = q.initdb(args.userlen)
        if created:
            print("created database %s" % q.config.db)
    print("created: %s" % (", ".join(made) if made else "nothing (all tables exist)"))
    return 0


def cmd_grant(args):
    """control/sqlserver's login, with exactly the daemon's grants (SPEC 2)."""
    daemon = api.daemon_config(getattr(args, "qmail_dir", None))
    if not daemon.password:
        return die(100, "grant: %s gives login %r no password (or password_file); add one "
                   "there first: the login gets exactly that password, so the daemon's "
                   "copy and the server's cannot differ" % (daemon.path, daemon.login))
    with session(args) as q:
        shown = q.grant(daemon, args.host or ["localhost"])
    for host, lines in shown.items():
        print("%s@%s (password from %s) now has exactly:" % (daemon.login, host, daemon.path))
        for line in lines:
            print("  " + line)
    return 0


def cmd_migrate(args):
    with session(args) as q:
        userlen = args.userlen or q.config.userlen
        changes = q.migrate(userlen)
    for line in changes:
        print(line)
    if not changes:
        print("nothing to do: every table, column and lookup index is there and every "
              "username column is at least %d wide" % userlen)
    return 0


# ------------------------------------------------------------------- sandbox, helpers

def cmd_sandbox(args):
    if args.action == "up":
        env = sandbox.up(args.dir, port=args.port, daemon=not args.no_daemon)
        print("export " + " ".join("%s=%s" % kv for kv in sorted(env.items())))
    else:
        sandbox.down(args.dir)
        print("# sandbox %s stopped and removed" % args.dir)
    return 0


def cmd_demo(args):
    return demo.run()


def cmd_helper(args):
    try:
        print(api.helper_path(args.name))
    except api.HelperMissing as e:
        return die(111, str(e))
    return 0


def cmd_install(args):
    try:
        api.install(getattr(args, "qmail_dir", None), undo=args.undo)
    except api.InstallError as e:
        return die(111, "install: %s" % e)
    return 0


def cmd_dovecot_config(args):
    try:
        text = api.dovecot_config(args.qmail_dir, args.dovecot, args.auth_cache, args.socket,
                                  args.script)
    except ValueError as e:
        return die(100, "dovecot-config: %s" % e)
    print(text, end="")
    return 0


# ------------------------------------------------------------------- daemon

def cmd_daemon(args):
    return daemon_process.main(args)


def cmd_flush(args):
    try:
        done = api.flush(args.qmail_dir)
    except (OSError, ValueError) as e:
        return die(111, "flush: cannot reach qmailsqld at %s: %s; start it with `qmailsql "
                   "daemon` (run it under daemontools or systemd), then see `qmailsql doctor`"
                   % (api.socket_path(args.qmail_dir), getattr(e, "strerror", None) or e))
    except api.Refusal as r:
        return die(r.code, "flush: %s" % r.message)
    print("ok: qmailsqld at %s dropped its cache" % done.socket)
    return 0


# ------------------------------------------------------------------- passwords

def read_new_password(user):
    """Twice at a terminal prompt (None when they differ), else one line of stdin."""
    if sys.stdin is not None and sys.stdin.isatty():
        first = getpass.getpass("New password for %s: " % user)
        if getpass.getpass("Retype it: ") != first:
            return None
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
    password = line[:-1] if line.endswith(b"\n") else line
    return password[:-1] if password.endswith(b"\r") else password


def cmd_passwd(args):
    """Set a mailbox password: twice at a terminal prompt, else one line of stdin."""
    password = read_new_password(args.user)
    if password is None:
        return die(1, "passwd: the two passwords differ; nothing changed")
    with session(args) as q:
        try:
            done = q.passwd(args.user, password, args.scheme)
        except api.NoSuchMailbox as e:
            return die(1, "passwd: %s; nothing changed" % e)
    print("password of %s set (%s, %s)" % (done.username, done.password_type, done.scheme))
    return 0


# ------------------------------------------------------------------- table rows

def changed(what, hosts_changed=False):
    print(what)
    if hosts_changed:
        print("hosts changed: run `qmailsql sync` so qmail's control files follow")
    return 0


def table_command(args, changes, listing, hosts_changed=False, errors=api.AdminError):
    """The shape of the table commands (mailbox, alias, virtual, rcpthost): CHANGES maps
    an action (add, del, ...) to a function of the Session that makes the change and
    returns the line that says so; ERRORS from it exit 100. Any other action lists:
    LISTING(session) returns (header, rows), printed once the session is closed."""
    with session(args) as q:
        change = changes.get(args.action)
        if change is not None:
            try:
                return changed(change(q), hosts_changed)
            except errors as e:
                return die(100, str(e))
        header, rows = listing(q)
    print_rows(header, rows)
    return 0


def cmd_mailbox(args):
    def add(q):
        password = None
        if args.password_stdin or args.password_type:
            password = sys.stdin.buffer.readline().rstrip(b"\r\n")
        q.add_mailbox(args.name, args.uid, args.gid, args.home, password,
                      args.password_type, args.suspended, args.replace)
        return "mailbox %s added" % args.name

    def delete(q):
        q.delete_mailbox(args.name)
        return "mailbox %s deleted" % args.name

    def set_(q):
        deny = api.parse_services(args.deny) if args.deny else set()
        allow = api.parse_services(args.allow) if args.allow else set()
        if deny & allow:
            raise ValueError("--deny and --allow both name %s" % ",".join(sorted(deny & allow)))
        if not (deny or allow or args.suspended is not None):
            raise ValueError("nothing to change: give --deny, --allow, --suspend or "
                             "--unsuspend")
        done = q.set_mailbox(args.name, deny, allow, args.suspended)
        return "mailbox %s: barred from %s; suspended %s" % (
            args.name, done.deny_services or "nothing", done.suspended)

    return table_command(
        args, {"add": add, "del": delete, "set": set_},
        lambda q: (("username", "uid", "gid", "home", "password_type", "suspended",
                    "deny_services"),
                   [(m.username, m.uid, m.gid, m.home, m.password_type,
                     "Y" if m.suspended else "N", m.deny_services) for m in q.mailboxes()]),
        errors=(api.AdminError, ValueError))


def cmd_alias(args):
    def add(q):
        q.add_alias(args.user, args.line, args.ext)
        return "alias %s ext %r: %s" % (args.user, args.ext, args.line)

    return table_command(
        args, {"add": add, "del": lambda q: "%d alias row(s) deleted" % q.delete_alias(
            args.user, args.ext, args.line)},
        lambda q: (("username", "alias", "alias_username", "alias_host"),
                   [(a.username, a.ext, a.alias_username, a.alias_host)
                    for a in q.aliases(args.user)]))


def cmd_virtual(args):
    def add(q):
        q.add_virtual(args.address, args.user, args.ext, args.forward)
        return "virtual %s added" % args.address

    def delete(q):
        q.delete_virtual(args.address)
        return "virtual %s deleted" % args.address

    return table_command(
        args, {"add": add, "del": delete},
        lambda q: (("virtual_username", "virtual_host", "username", "ext"),
                   [(v.virtual_username, v.virtual_host, v.username, v.ext)
                    for v in q.virtuals(args.host)]),
        hosts_changed=True)


def cmd_rcpthost(args):
    def delete(q):
        q.delete_rcpthost(args.host)
        return "rcpthost %s deleted" % args.host

    return table_command(
        args, {"add": lambda q: "rcpthost %s added" % q.add_rcpthost(args.host), "del": delete},
        lambda q: (("host",), [(h,) for h in q.rcpthosts()]), hosts_changed=True)


def cmd_sync(args):
    try:
        with session(args) as q:
            q.sync(reload=not args.no_reload, out=print)
    except api.SyncError as e:
        sys.stderr.write("qmailsql sync: %s\n" % e)
        return 1
    return 0


# ------------------------------------------------------------------- quotas

def cmd_quota(args):
    names = list(args.names)
    with session(args) as q:  # the administrator's login, as every admin command
        try:
            if names[:1] == ["set"]:
                if len(names) != 2:
                    raise api.QuotaError("quota set takes one USER or @DOMAIN, then --size "
                                         "and/or --count")
                size = False if args.size is None else api.parse_size(args.size)
                count = False if args.count is None else api.parse_count(args.count)
                print(q.quota_set(names[1], size, count))
                return 0
            if args.size is not None or args.count is not None:
                raise api.QuotaError("--size and --count go with `qmailsql quota set`")
            report = q.quota_report(names)
        except api.QuotaError as e:
            return die(100, "quota: %s" % e)
    if args.json:
        json.dump({"mailboxes": [dataclasses.asdict(r) for r in report.mailboxes],
                   "domains": report.domains}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(api.format_quota_report(report.mailboxes, report.domains))
    return 0


# ------------------------------------------------------------------- doctor

def cmd_doctor(args):
    report = api.doctor(getattr(args, "qmail_dir", None),
                        limit=None if getattr(args, "all", False) else 20)
    findings = report.capped()
    if args.json:
        json.dump([dataclasses.asdict(f) for f in findings], sys.stdout, indent=1)
        sys.stdout.write("\n")
        sys.stderr.write(report.summary() + "\n")
    else:
        for f in findings:
            print("%s [%s] %s" % (f.severity.upper(), f.check, f.what))
            print("    fix: %s" % f.fix)
        print(report.summary())
    return 0 if report.healthy else 1


# ------------------------------------------------------------------- import

def finish_import(args, q, plan):
    replace = getattr(args, "replace", False)
    show = args.show or None
    try:
        result = q.import_plan(plan, apply=args.apply, replace=replace)
    except api.ImportFailed as e:
        api.importers.report(plan, e.outcome, False, show=show, replace=replace)
        sys.stderr.write("qmailsql import: writing failed, nothing was changed (one "
                         "transaction, rolled back): %s\n" % (e.error,))
        return 111
    api.importers.report(plan, result.outcome, result.applied, show=show, replace=replace)
    return 1 if plan.problems else 0


def cmd_import_assign(args):
    if not args.file and not args.passwd:
        sys.stderr.write("qmailsql import assign: give users/assign FILE and/or --passwd FILE\n")
        return 100
    read = api.importers.read_file
    try:
        assign = read(args.file) if args.file else None
        passwd = read(args.passwd) if args.passwd else None
        shadow = read(args.shadow) if args.shadow else None
    except api.ImportError_ as e:
        sys.stderr.write("qmailsql import: %s\n" % e)
        return 111
    with session(args) as q:
        plan = q.plan_import_assign(assign, passwd, shadow, args.min_uid, args.max_uid)
        return finish_import(args, q, plan)


def vpopmail_account():
    """The system's `vpopmail` user, or None."""
    try:
        return pwd.getpwnam("vpopmail")
    except KeyError:
        return None


def cmd_import_vpopmail(args):
    if bool(args.dump) == bool(args.from_db):
        sys.stderr.write("qmailsql import vpopmail: give DUMP.sql or --from-db (one of them)\n")
        return 100
    vpopmail = vpopmail_account()
    uid, gid = args.uid, args.gid
    if uid is None or gid is None:
        if vpopmail is None:
            sys.stderr.write("qmailsql import vpopmail: no `vpopmail` user here; give --uid and "
                             "--gid (the owner of the vpopmail domain directories)\n")
            return 100
        uid = vpopmail.pw_uid if uid is None else uid
        gid = vpopmail.pw_gid if gid is None else gid
    domains_dir = args.domains_dir
    if domains_dir is None and vpopmail is not None:
        domains_dir = os.path.join(vpopmail.pw_dir, "domains")
    try:
        if args.dump:
            tables = api.importers.read_dump(api.importers.read_file(args.dump))
        else:
            tables = api.importers.read_db(*api.importers.db_connection(
                args.db_host, args.db_port, args.db_socket, args.db_user,
                args.db_password_file, args.db_name, args.vpopmail_mysql))
    except (api.ImportError_, api.DumpError) as e:
        sys.stderr.write("qmailsql import vpopmail: %s\n" % e)
        return 111
    except Exception as e:  # MySQLdb errors from --from-db
        sys.stderr.write("qmailsql import vpopmail: reading the vpopmail database: %s\n" % e)
        return 111
    with session(args) as q:
        plan = q.plan_import_vpopmail(tables, uid, gid, domains_dir)
        return finish_import(args, q, plan)


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
    """Every subcommand, wired one way: a parser whose func is a cmd_* above."""
    p = Parser(prog="qmailsql", description=DESCRIPTION,
                                epilog=EPILOG % api.compiled_qmail_dir(),
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
    s.add_argument("name", choices=api.HELPERS)
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

    add_table_commands(sub)

    s = sub.add_parser("quota", help="set and show Maildir++ quotas",
                       description=api.QUOTA_HELP + "\n" + textwrap.fill(ADMIN_LOGIN, 86),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("names", nargs="*", metavar="USER",
                   help="mailboxes to show; or `set USER|@DOMAIN`")
    s.add_argument("--size", metavar="SIZE", help="with set: 500M, 2G, bytes, none, unlimited")
    s.add_argument("--count", metavar="N", help="with set: messages, none, unlimited")
    s.add_argument("--json", action="store_true", help="print JSON")
    admin_options(s)
    s.set_defaults(func=cmd_quota)

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

    add_import_commands(sub)

    s = sub.add_parser(
        "dovecot-config", help="print Dovecot's passdb/userdb configuration for this host",
        description="Print the dovecot.conf fragment that makes Dovecot (IMAP, POP3, LMTP, "
        "doveadm) ask qmailsqld: passdb and userdb blocks (driver lua), the Lua script's "
        "path, qmailsqld's socket, and the auth-worker running as Dovecot's unprivileged "
        "user. Save it (e.g. /etc/dovecot/conf.d/qmailsql.conf) and !include it from a "
        "dovecot.conf that sets protocols, listeners and base_dir.")
    s.add_argument("--dovecot", metavar="VERSION", choices=["2.3", "2.4"],
                   help="the Dovecot syntax to write (default: the installed dovecot's, "
                        "else 2.3)")
    s.add_argument("--auth-cache", metavar="SIZE",
                   help="turn Dovecot's auth cache on with this size (e.g. 10M); default "
                        "off, so every change takes effect at once everywhere")
    s.add_argument("--socket", metavar="PATH",
                   help="qmailsqld's socket (default: $QMAILSQL_SOCKET or "
                        "QMAIL/qmailsql/qmailsqld.sock)")
    s.add_argument("--script", metavar="PATH",
                   help="the Lua script's path (default: QMAIL/bin/%s if installed, else "
                        "the package's; Dovecot's user must be able to read it)"
                        % api.dovecot_admin.INSTALLED_SCRIPT)
    s.add_argument("--qmail-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="the qmail home (default: $QMAILSQL_QMAIL_DIR or conf-qmail)")
    s.set_defaults(func=cmd_dovecot_config)
    return p


def add_table_commands(sub):
    """mailbox, alias, virtual, rcpthost and sync."""
    s = sub.add_parser("mailbox", help="add, delete or list mailbox rows")
    a = s.add_subparsers(dest="action", metavar="ACTION")
    a.required = True
    p = a.add_parser("add", help="add a mailbox (password from stdin)")
    p.add_argument("name")
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--home", required=True, help="absolute path owned by --uid")
    p.add_argument("--password-type", metavar="SCHEME",
                   help="hash scheme for the password read from stdin (plain, mysql41, "
                        "sha512-crypt, ...; default: control/sqlserver's default_scheme)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password (first line) from stdin")
    p.add_argument("--suspended", action="store_true")
    p.add_argument("--replace", action="store_true", help="overwrite an existing mailbox "
                   "(its quota and service bars stay)")
    admin_options(p)
    p = a.add_parser("del", help="delete a mailbox")
    p.add_argument("name")
    admin_options(p)
    p = a.add_parser("set", help="bar or allow services (pop3, imap, smtp), suspend",
                     description="Change a mailbox's access: --deny bars the listed "
                     "services (pop3, imap, smtp = SMTP AUTH, or all), --allow lifts bars; "
                     "a login for a service nobody named is refused while any bar is set. "
                     "Takes effect at once: qmailsqld's and Dovecot's caches are flushed.")
    p.add_argument("name")
    p.add_argument("--deny", metavar="LIST", help="e.g. pop3,imap")
    p.add_argument("--allow", metavar="LIST", help="e.g. imap, or all")
    p.add_argument("--suspend", dest="suspended", action="store_const", const=True,
                   default=None, help="refuse every login (mail is still delivered)")
    p.add_argument("--unsuspend", dest="suspended", action="store_const", const=False)
    admin_options(p)
    admin_options(a.add_parser("list", help="list mailboxes"))
    s.set_defaults(func=cmd_mailbox)

    s = sub.add_parser("alias", help="add, delete or list alias rows (dot-qmail lines)")
    a = s.add_subparsers(dest="action", metavar="ACTION")
    a.required = True
    p = a.add_parser("add", help="add a delivery line for USER (and --ext)")
    p.add_argument("user")
    p.add_argument("line", help="./Maildir/, /home/u/Mailbox, '|program', &addr or addr@host")
    p.add_argument("--ext", "--alias", default="",
                   help="extension: '' is the plain .qmail, default, foo-default, @ ...")
    admin_options(p)
    p = a.add_parser("del", help="delete USER's rows for --ext (only LINE if given)")
    p.add_argument("user")
    p.add_argument("line", nargs="?")
    p.add_argument("--ext", "--alias", default="")
    admin_options(p)
    p = a.add_parser("list", help="list alias rows")
    p.add_argument("user", nargs="?")
    admin_options(p)
    s.set_defaults(func=cmd_alias)

    s = sub.add_parser("virtual", help="add, delete or list virtual address rows")
    a = s.add_subparsers(dest="action", metavar="ACTION")
    a.required = True
    p = a.add_parser("add", help="map u@host (or @host, the catch-all) to a user")
    p.add_argument("address")
    p.add_argument("--user", help="the mailbox/user that gets the mail")
    p.add_argument("--ext", default="", help="extension appended to --user (e.g. @)")
    p.add_argument("--forward", metavar="ADDR", help="magic forward to ADDR")
    admin_options(p)
    p = a.add_parser("del", help="delete the row for u@host (@host: the catch-all)")
    p.add_argument("address")
    admin_options(p)
    p = a.add_parser("list", help="list virtual rows")
    p.add_argument("host", nargs="?")
    admin_options(p)
    s.set_defaults(func=cmd_virtual)

    s = sub.add_parser("rcpthost", help="add, delete or list extra accepted domains")
    a = s.add_subparsers(dest="action", metavar="ACTION")
    a.required = True
    for name in ("add", "del"):
        p = a.add_parser(name)
        p.add_argument("host")
        admin_options(p)
    admin_options(a.add_parser("list"))
    s.set_defaults(func=cmd_rcpthost)

    s = sub.add_parser("sync", help="write control/virtualdomains and rcpthosts from the DB",
                       description="Write control/virtualdomains (host:host per virtual "
                       "host), control/rcpthosts (rcpthosts table + virtual hosts; beyond "
                       "50 hosts also morercpthosts and morercpthosts.cdb) atomically, only "
                       "when changed; lines outside the qmailsql block are kept. Then HUP "
                       "qmail-send ($QMAILSQL_QMAIL_SEND_PID, else svc -h "
                       "/service/qmail-send).")
    s.add_argument("--no-reload", action="store_true", help="do not signal qmail-send")
    admin_options(s)
    s.set_defaults(func=cmd_sync)


def add_import_commands(sub):
    """import assign|vpopmail."""
    s = sub.add_parser("import", help="move users from users/assign, passwd or vpopmail into "
                       "the DB (dry run unless --apply)",
                       description="Build mailbox, alias and virtual rows from another user "
                       "database. Prints what would change (new, unchanged, conflicting rows) "
                       "and what cannot be expressed; --apply writes it in one transaction. "
                       "Exit 0, or 1 when something could not be imported.")
    a = s.add_subparsers(dest="source", metavar="SOURCE")
    a.required = True

    def common(p):
        p.add_argument("--apply", action="store_true", help="write (default: dry run)")
        p.add_argument("--replace", action="store_true",
                       help="overwrite DB rows that differ (default: keep them)")
        p.add_argument("--show", type=int, default=100, metavar="N",
                       help="list at most N changes (0: all)")
        admin_options(p)

    p = a.add_parser("assign", help="qmail's users/assign (and /etc/passwd accounts)",
                     description="Import qmail's users/assign (=local and +prefix lines) "
                     "and/or /etc/passwd accounts (--passwd, --shadow) as mailbox rows.")
    p.add_argument("file", nargs="?", metavar="FILE", help="a users/assign file")
    p.add_argument("--passwd", metavar="FILE", help="/etc/passwd-style accounts to import")
    p.add_argument("--shadow", metavar="FILE", help="/etc/shadow-style hashes for --passwd")
    p.add_argument("--min-uid", type=int, default=api.importers.MIN_UID, help="lowest uid taken from "
                   "--passwd (default %d)" % api.importers.MIN_UID)
    p.add_argument("--max-uid", type=int, default=api.importers.MAX_UID, help="highest uid taken from "
                   "--passwd (default %d)" % api.importers.MAX_UID)
    common(p)
    p.set_defaults(func=cmd_import_assign)

    p = a.add_parser("vpopmail", help="vpopmail's MySQL tables (a dump or the live DB)",
                     description="Import vpopmail users (user@domain -> mailbox "
                     "domain-user + virtual row), valias lines (alias rows) and alias "
                     "domains, from a mysqldump file or the vpopmail database.")
    p.add_argument("dump", nargs="?", metavar="DUMP.sql", help="mysqldump of the vpopmail DB")
    p.add_argument("--from-db", action="store_true", help="read the vpopmail DB directly")
    p.add_argument("--vpopmail-mysql", metavar="FILE", help="vpopmail's connection file "
                   "(default ~vpopmail/etc/vpopmail.mysql)")
    p.add_argument("--db-host")
    p.add_argument("--db-port", type=int)
    p.add_argument("--db-socket")
    p.add_argument("--db-user")
    p.add_argument("--db-password-file", metavar="FILE")
    p.add_argument("--db-name", default="vpopmail")
    p.add_argument("--uid", type=int, help="uid of the mailboxes (default: the vpopmail user)")
    p.add_argument("--gid", type=int, help="gid of the mailboxes (default: vpopmail's group)")
    p.add_argument("--domains-dir", metavar="DIR",
                   help="where domain directories are (default ~vpopmail/domains)")
    common(p)
    p.set_defaults(func=cmd_import_vpopmail)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except api.ConfigError as e:
        return die(111, "%s" % e)
    except api.DirectoryUnavailable as e:
        return die(111, "%s (is the DB running? try `qmailsql doctor`)" % e)
    except sandbox.SandboxError as e:
        return die(111, "sandbox: %s" % e)
    except ValueError as e:
        return die(100, str(e))
    except KeyboardInterrupt:
        return die(111, "interrupted")


def daemon_main():
    return main(["daemon"] + sys.argv[1:])
