"""`qmailsqld` (and `qmailsql daemon`) as a process: load the configuration, set the
signal handlers, start the Daemon (server.py), run it until SIGTERM, stop it."""
import signal

from qmailsql.core import config as configmod
from qmailsql.core.hotpath import ConfigError
from qmailsql.daemon.listen import StartError
from qmailsql.daemon.logs import log
from qmailsql.daemon.server import Daemon


def main(args):
    """`qmailsql daemon` / `qmailsqld`: run in the foreground until SIGTERM."""
    qmail_dir = getattr(args, "qmail_dir", None)
    debug = bool(getattr(args, "debug", False))
    pidfile = getattr(args, "pidfile", None)
    try:
        config = configmod.load(qmail_dir)
        daemon = Daemon(config, qmail_dir, debug, pidfile)
    except ConfigError as e:
        log("fatal: %s" % e)
        return 111
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, daemon.on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        daemon.start()
    except StartError as e:
        log("fatal: %s" % e)
        return 111
    try:
        daemon.run()
    finally:
        daemon.shutdown()
        log("stop")
    return 0

