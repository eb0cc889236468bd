"""qmailsqld: its socket exists, a process listens (whose uid the sqlserver check uses)
and it answers `ping`."""
import os
import socket
import struct

from qmailsql.core import client
from qmailsql.core import config as configmod

from .common import mode, user_name

PING_TIMEOUT = 3.0
UCRED = struct.Struct("3i")  # SO_PEERCRED's struct ucred: pid, uid, gid


def check_daemon(ctx):
    """qmailsqld listens and answers `ping`; (pid, uid, gid) of it, or None."""
    path = configmod.socket_path(ctx.qmail_dir)
    start = "start it: `qmailsql daemon` (supervised: svc -u /service/qmailsqld)"
    logged = ("; qmail-send logs each one as `deferral: qmail-getpw: cannot reach "
              "qmailsqld at %s: ...`" % path)
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        ctx.add("daemon-not-running", "error", "qmailsqld is not running: no socket %s; "
                 "every delivery and POP3 login is deferred%s" % (path, logged), start)
        return
    except OSError as e:
        ctx.no_access(path, e, "the daemon")
        return
    try:
        cred = peer_cred(path, PING_TIMEOUT)
    except PermissionError as e:
        ctx.no_access(path, e, "the daemon")
        return
    except OSError as e:
        ctx.add("daemon-not-running", "error", "qmailsqld is not running: connect to "
                 "%s: %s%s" % (path, e.strerror or e, logged), start + " (a stale socket "
                 "is replaced)")
        return
    try:
        status, body = client.call(path, [b"ping"], timeout=PING_TIMEOUT)
        got = None if status == 0 else "got status %d %r" % (status, body[:60])
    except (OSError, ValueError) as e:
        got = str(e) or type(e).__name__
    if got is not None:
        pid = " (pid %d)" % cred[0] if cred else ""
        ctx.add("daemon-not-answering", "error",
                 "qmailsqld%s on %s did not answer `ping` within %.0fs (%s)"
                 % (pid, path, PING_TIMEOUT, got),
                 "see its log; restart it: svc -t /service/qmailsqld (or kill%s and "
                 "`qmailsql daemon`)" % (" %d" % cred[0]
                                         if cred else ""))
    return cred


def peer_cred(path, timeout):
    """(pid, uid, gid) of the process listening on the unix socket PATH (SO_PEERCRED), or
    None where the system cannot tell; OSError when the connection is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            return UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
        except (OSError, AttributeError):
            return None


def proc_groups(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()
