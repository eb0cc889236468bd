"""The `qmailsql` command for administrators (and `qmailsqld`)."""
import argparse
import os
import sys

from qmailsql import __version__
from qmailsql.hotpath import ConfigError

DESCRIPTION = """\
Run stock qmail on a MySQL/MariaDB user database.

qmail's helpers (bin/qmail-getpw, bin/qmail-local, bin/checkpassword) are replaced by
small compiled clients that ask qmailsqld, the one process that reads
QMAIL/control/sqlserver and holds the DB connections.
"""

EPILOG = """\
examples:
  qmailsql sandbox up /tmp/qs        private MariaDB + qmail home; prints exports
  qmailsql initdb --userlen 64       create the tables (idempotent)
  qmailsql getpw --explain iain-foo  which user gets iain-foo, and why
  qmailsql demo                      the FAQ's examples, end to end

The qmail home is --qmail-dir, else $QMAILSQL_QMAIL_DIR, else conf-qmail (%s).
Exit codes follow qmail: 0 ok, 111 try again later, 100 usage error.
"""


def die(code, message):
    sys.stderr.write("qmailsql: %s\n" % message)
    return code


def session(args):
    import qmailsql
    return qmailsql.connect(args.qmail_dir)


def cmd_getpw(args):
    from qmailsql.resolve import Refusal
    local = os.fsencode(args.local)
    explain = [] if args.explain else None
    try:
        with session(args) as q:
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
        return 0
    sys.stdout.buffer.write(delivery.fields())
    sys.stdout.buffer.flush()
    return 0


def cmd_initdb(args):
    from qmailsql import schema
    with session(args) as q:
        made = schema.initdb(q.directory, args.userlen)
    print("created: %s" % (", ".join(made) if made else "nothing (all tables exist)"))
    return 0


def cmd_migrate(args):
    from qmailsql import schema
    with session(args) as q:
        changes = schema.migrate(q.directory, args.userlen)
    for line in changes:
        print("widened " + line)
    if not changes:
        print("nothing to do: every username column is at least %d wide" % args.userlen)
    return 0


def cmd_sandbox(args):
    from qmailsql import sandbox
    if args.action == "up":
        env = sandbox.up(args.dir, port=args.port, daemon=not args.no_daemon)
        print("export " + " ".join("%s=%s" % kv for kv in sorted(env.items())))
    else:
        sandbox.down(args.dir)
        print("# sandbox %s stopped and removed" % args.dir)
    return 0


def cmd_demo(args):
    from qmailsql import demo
    return demo.run()


def cmd_helper(args):
    from qmailsql.helpers import HelperMissing, helper_path
    try:
        print(helper_path(args.name))
    except HelperMissing as e:
        return die(111, str(e))
    return 0


def cmd_daemon(args):
    from qmailsql import daemon
    return daemon.main(args)


class Parser(argparse.ArgumentParser):
    """argparse, with qmail's exit code for a usage error (100, not 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(100, "%s: %s\n" % (self.prog, message))


def build_parser():
    from qmailsql.config import compiled_qmail_dir
    p = Parser(prog="qmailsql", description=DESCRIPTION,
                                epilog=EPILOG % compiled_qmail_dir(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="qmailsql " + __version__)
    p.add_argument("--qmail-dir", metavar="DIR",
                   help="qmail home holding control/sqlserver (default: $QMAILSQL_QMAIL_DIR "
                        "or conf-qmail)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    s = sub.add_parser("getpw", help="resolve a local part like qmail-getpw (direct to the DB)",
                       description="Print qmail-getpw's six NUL-terminated fields for LOCAL, "
                       "asking the DB directly (no daemon). Exit codes as qmail-getpw: 0, "
                       "111 DB trouble, 116 no alias user.")
    s.add_argument("local", metavar="LOCAL")
    s.add_argument("--explain", action="store_true",
                   help="print every candidate tried and why it was taken or rejected")
    s.set_defaults(func=cmd_getpw)

    s = sub.add_parser("initdb", help="create the tables (idempotent)")
    s.add_argument("--userlen", type=int, default=32,
                   help="width of the username columns (default 32)")
    s.set_defaults(func=cmd_initdb)

    s = sub.add_parser("migrate", help="widen username columns of existing tables")
    s.add_argument("--userlen", type=int, required=True, help="new width, e.g. 128")
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
    s.add_argument("name", choices=["qmail-getpw", "qmail-local", "checkpassword"])
    s.set_defaults(func=cmd_helper)

    s = sub.add_parser("daemon", help="run qmailsqld in the foreground (logs on stderr)",
                       description="Run qmailsqld: listen on the socket, hold the DB "
                       "connections and the cache. Logs one line per event on stderr, for "
                       "multilog.")
    s.add_argument("--pidfile", help="write the pid here")
    s.add_argument("--debug", action="store_true", help="log every query")
    s.set_defaults(func=cmd_daemon)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from qmailsql.db import DirectoryUnavailable
    from qmailsql.sandbox import SandboxError
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
