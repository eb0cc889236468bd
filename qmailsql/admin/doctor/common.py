"""What every area of the doctor shares: the Context a check reports into, and small
helpers for the texts (quoting, modes, owners) and for Unix permissions."""
import grp
import os
import pwd
import shlex
import stat

from qmailsql.core import config as configmod
from qmailsql.core.problems import blank, sql_str  # noqa: F401 (the areas import them from here)

STAT_CACHE_MAX = 200000


class Context:
    """Where the checks are run (qmail_dir) and where they report (add, no_access)."""

    def __init__(self, qmail_dir, report, progress):
        self.qmail_dir = configmod.qmail_dir(qmail_dir)
        self.report = report
        self.progress = progress
        self.add = report.add

    @property
    def sqlserver_path(self):
        return os.path.join(self.qmail_dir, "control", "sqlserver")

    def no_access(self, path, err, skipped):
        """The doctor (this uid) may not examine PATH: say so, and what went unchecked."""
        uid = os.getuid()
        self.add("doctor-no-access", "warning" if uid else "error",
                 "doctor (uid %d, %s) cannot examine %s: %s; not checked: %s"
                 % (uid, user_name(uid), path, getattr(err, "strerror", None) or err, skipped),
                 "run qmailsql doctor as root" if uid else "check the file system holding %s"
                 % path)

    def guarded(self, check, *args):
        """CHECK(*ARGS); a file-system error it did not expect is a finding, not a crash."""
        try:
            return check(self, *args)
        except OSError as e:
            self.no_access(e.filename or "a file", e, check.__name__.replace("_", " "))
            return None


def q(path):
    return shlex.quote(str(path))


def mode(st):
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


def parents(path):
    """'/', '/a', '/a/b' for '/a/b/c' (every directory above PATH)."""
    parts = [p for p in path.split("/") if p]
    out = ["/"]
    for i in range(1, len(parts)):
        out.append("/" + "/".join(parts[:i]))
    return out


def effective(data):
    """The lines qmail reads from a control file: not blank, not comments; lower-cased."""
    if not data:
        return set()
    if isinstance(data, bytes):
        data = data.decode("utf-8", "surrogateescape")
    return {l.strip().lower() for l in data.split("\n") if l.strip() and not
            l.lstrip().startswith("#")}


def few(items, n=5):
    return ", ".join(items[:n]) + (" (and %d more)" % (len(items) - n) if len(items) > n
                                   else "")


def passwd_entry(name):
    try:
        return pwd.getpwnam(name)
    except (KeyError, OSError):
        return None


def passwd_exists(name):
    return passwd_entry(name) is not None


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):
        return str(uid)


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OSError):
        return str(gid)
