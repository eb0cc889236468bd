"""control/sqlserver: present, readable (by the doctor and by the daemon's user), not
world-readable, valid (FAQ: "alert: out of memory", "insecure"). Read through
core.config's own functions, so the doctor sees the file exactly as qmailsqld does."""
import os
from dataclasses import dataclass

from qmailsql.core import config as configmod
from qmailsql.core.hotpath import ConfigError, parse_sqlserver

from .common import can, grant_fix, group_name, mode, parents, q, user_name
from .daemon import proc_groups


@dataclass
class Sqlserver:
    """What check_sqlserver learnt: the file's stat (None: unread) and the Config (None:
    unusable)."""
    stat: os.stat_result = None
    config: configmod.Config = None


def check_sqlserver(ctx):
    path = ctx.sqlserver_path
    fixperm = configmod.FIX_PERMS.format(path=q(path))
    found = Sqlserver()
    try:
        st, data = configmod.read_file(path)
    except FileNotFoundError:
        ctx.add("sqlserver-missing", "error", "%s does not exist: qmailsqld cannot start, "
                "every delivery is deferred (the FAQ's \"alert: out of memory\")" % path,
                "create it with `server`, `login`, `password` and `db` lines (see the "
                "README), then: %s" % fixperm)
        return found
    except PermissionError:
        ctx.add("sqlserver-unreadable", "error", "%s is not readable by uid %d (%s)"
                % (path, os.getuid(), user_name(os.getuid())),
                "%s; add the daemon's user to group qmailsql, or run doctor as root"
                % fixperm)
        return found
    except OSError as e:
        ctx.add("sqlserver-unreadable", "error", "%s cannot be read: %s"
                % (path, e.strerror), "check the file system holding %s" % path)
        return found
    found.stat = st
    try:
        values = parse_sqlserver(data, path)
    except ConfigError as e:
        ctx.add("sqlserver-invalid", "error", str(e),
                "edit %s (keys: see `qmailsql --help` and the README)" % path)
        return found
    if "password" in values and configmod.world_readable(st):
        ctx.add("sqlserver-world-readable", "error",
                "%s holds the DB password and is readable by every local user (%s %s:%s)"
                % (path, mode(st), user_name(st.st_uid), group_name(st.st_gid)), fixperm)
    if "password_file" in values and "password" in values:
        ctx.add("sqlserver-invalid", "error", "%s gives both `password` and "
                "`password_file`: qmailsqld refuses to start" % path,
                "keep one of the two lines in %s" % path)
        return found
    if "password_file" in values:
        pw_path = values["password_file"]
        try:
            values["password"], pst = configmod.read_password_file(pw_path)
        except OSError as e:
            ctx.add("sqlserver-unreadable", "error", "password_file %s (named in %s) "
                    "cannot be read by uid %d: %s" % (pw_path, path, os.getuid(), e.strerror),
                    configmod.FIX_PERMS.format(path=q(pw_path)))
            return found
        except ValueError:
            ctx.add("sqlserver-invalid", "error", "password_file %r (named in %s) must be a "
                    "readable path holding a UTF-8 password on its first line: qmailsqld "
                    "refuses to start" % (pw_path, path),
                    "correct the `password_file` line in %s or the file it names" % path)
            return found
        if configmod.world_readable(pst):
            ctx.add("sqlserver-world-readable", "error",
                    "password_file %s is readable by every local user (%s)"
                    % (pw_path, mode(pst)), configmod.FIX_PERMS.format(path=q(pw_path)))
    try:
        found.config = configmod.from_mapping(values, ctx.qmail_dir, path)
    except ConfigError as e:
        ctx.add("sqlserver-invalid", "error", str(e), "edit %s" % path)
    return found


def check_readable_by_daemon(ctx, st, daemon_cred):
    """The running daemon's user must be able to read control/sqlserver (on SIGHUP).
    ST: the file's stat (None: unread); DAEMON_CRED: (pid, uid, gid) or None."""
    if st is None or daemon_cred is None:
        return
    pid, uid, gid = daemon_cred
    if uid == 0 or uid == os.getuid():
        return
    gids = proc_groups(pid) | {gid}
    path = ctx.sqlserver_path
    for d in parents(path):
        try:
            dst = os.stat(d)
        except OSError as e:
            ctx.no_access(d, e, "whether qmailsqld's user can reach %s" % path)
            return
        if not can(dst, uid, gids, 1):
            ctx.add("sqlserver-unreadable", "error",
                    "qmailsqld runs as uid %d (%s) but cannot reach %s: %s (%s %s:%s) is "
                    "not searchable for it" % (uid, user_name(uid), path, d, mode(dst),
                                               user_name(dst.st_uid), group_name(dst.st_gid)),
                    grant_fix(d, dst, uid, gids, "x"))
            return
    if not can(st, uid, gids, 4):
        ctx.add("sqlserver-unreadable", "error",
                "qmailsqld runs as uid %d (%s) but %s (%s %s:%s) is not readable for it: "
                "its next reload (SIGHUP) or restart fails" % (
                    uid, user_name(uid), path, mode(st), user_name(st.st_uid),
                    group_name(st.st_gid)),
                "chgrp %s %s; chmod 640 %s" % (q(group_name(gid)), q(path), q(path)))
