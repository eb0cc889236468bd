"""`qmailsql install`: the compiled helpers into QMAIL/bin (core/helpers.py INSTALLED).

qmail-getpw and qmail-local replace the stock programs, which are kept as NAME.orig
(an existing .orig is never overwritten); checkpassword and Dovecot's Lua script go in
under qmailsql- names. Modes 0755, owner root, group qmail. undo puts the .orig files
back and removes the others (only when they are qmailsql's).
"""
import grp
import os
import pwd
import shutil

from qmailsql.core import config as configmod
from qmailsql.core.helpers import INSTALLED, HelperMissing, helper_path
from qmailsql.admin.sync import read_if_exists

DAEMON_USER = "qmailsql"


class InstallError(Exception):
    """Nothing (more) can be installed; the message says what to do."""


def is_ours(data, new):
    """A file in QMAIL/bin is one of our helpers (any build) rather than stock qmail's."""
    return data == new or b"QMAILSQL_SOCKET" in data


def bin_dir(qmail_dir):
    qdir = configmod.qmail_dir(qmail_dir)
    bindir = os.path.join(qdir, "bin")
    if not os.path.isdir(bindir):
        raise InstallError("%s does not exist; is qmail installed in %s? (--qmail-dir)"
                           % (bindir, qdir))
    return qdir, bindir


def undo(qmail_dir=None, out=print):
    """Put the stock programs back, remove qmailsql's other helpers."""
    _, bindir = bin_dir(qmail_dir)
    for _, target, stock in INSTALLED:
        dst = os.path.join(bindir, target)
        orig = dst + ".orig"
        if stock and os.path.exists(orig):
            os.rename(orig, dst)
            out("restored %s from %s" % (dst, orig))
        elif stock:
            out("%s: no %s to restore; left as it is" % (dst, orig))
        elif os.path.exists(dst):
            if not is_ours(read_if_exists(dst) or b"", b""):
                out("%s: not qmailsql's helper; left as it is" % dst)
                continue
            os.unlink(dst)
            out("removed %s" % dst)


def _owner():
    """(uid, gid) the installed files get: root (when we are root) and group qmail;
    -1 leaves one as it is."""
    try:
        gid = grp.getgrnam("qmail").gr_gid
    except KeyError:
        gid = -1
    return (0 if os.geteuid() == 0 else -1), gid


def install_one(name, dst, stock, uid, gid, out):
    try:
        new = read_if_exists(helper_path(name))
    except HelperMissing as e:
        raise InstallError(str(e))
    orig = dst + ".orig"
    old = read_if_exists(dst)
    foreign = old is not None and stock and not is_ours(old, new)
    if foreign and os.path.lexists(orig):
        raise InstallError("%s is not qmailsql's helper and %s exists already (a qmail "
                           "upgrade?); move one of them away, then run install again"
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
    if foreign:
        try:
            os.link(dst, orig)  # keep the stock program; dst is never missing
        except OSError:
            shutil.copy2(dst, orig)
        out("kept stock %s as %s" % (dst, orig))
    os.rename(tmp, dst)
    if old == new:
        out("refreshed %s (already this build)" % dst)
    elif old is not None and is_ours(old, new):
        out("updated %s (an older qmailsql helper)" % dst)
    else:
        out("installed %s" % dst)


def install(qmail_dir=None, out=print):
    """Copy every helper into QMAIL/bin and make QMAIL/qmailsql, the socket's directory.
    InstallError when a helper is not built or a stock program cannot be kept."""
    qdir, bindir = bin_dir(qmail_dir)
    uid, gid = _owner()
    for name, target, stock in INSTALLED:
        install_one(name, os.path.join(bindir, target), stock, uid, gid, out)
    run = os.path.join(qdir, "qmailsql")
    if not os.path.isdir(run):
        os.makedirs(run, 0o755)
        out("created %s (qmailsqld's socket lives here)" % run)
    try:  # the daemon, running as user qmailsql, creates its socket here
        daemon_user = pwd.getpwnam(DAEMON_USER)
        os.chown(run, daemon_user.pw_uid, daemon_user.pw_gid)
        out("%s belongs to %s (the daemon's user)" % (run, DAEMON_USER))
    except KeyError:
        out("note: no user %s; create it (useradd -r -s /usr/sbin/nologin %s) and "
            "chown it %s, or run qmailsqld as root" % (DAEMON_USER, DAEMON_USER, run))
    out("done; start qmailsqld (`qmailsql daemon`) before qmail delivers with these helpers")
