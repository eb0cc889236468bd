"""qmail-users(5): users/assign and users/cdb, read exactly as qmail-newu and
qmail-lspawn read them. Used by the daemon (users/cdb comes before the DB), the doctor
and `qmailsql import assign`."""
import os
import re

from qmailsql.core import cdb

ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def lower_ascii(s):
    """qmail's case_lowerb: ASCII letters only."""
    return s.translate(ASCII_LOWER)


class AssignEntry:
    __slots__ = ("wild", "local", "user", "uid", "gid", "home", "dash", "ext", "lineno")

    def __init__(self, wild, local, user, uid, gid, home, dash, ext, lineno=None):
        self.wild, self.local, self.user = wild, local, user
        self.uid, self.gid, self.home, self.dash, self.ext = uid, gid, home, dash, ext
        self.lineno = lineno

    def fields(self):
        return (self.user, self.uid, self.gid, self.home, self.dash, self.ext)

    def spec(self):
        return "%s%s:%s:%s:%s:%s:%s:%s:" % ("+" if self.wild else "=", self.local, self.user,
                                           self.uid, self.gid, self.home, self.dash, self.ext)

    def where(self):
        return ("line %d" % self.lineno) if self.lineno else "entry"

    def __repr__(self):
        return "AssignEntry(%r)" % self.spec()


def decode(data):
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "surrogateescape")


def parse_assign(data):
    """(entries, problems) of users/assign DATA, read as qmail-newu reads it.

    problems: (lineno, message) for lines qmail-newu would refuse ("bad format") —
    they are skipped here, where qmail-newu refuses the whole file."""
    text = decode(data)
    entries, problems = [], []
    lines = text.split("\n")
    ended = False
    for lineno, line in enumerate(lines, 1):
        last = lineno == len(lines)
        if line.startswith("."):
            ended = True
            break
        if last:
            if line:
                problems.append((lineno, "last line has no newline (qmail-newu: bad format)"))
            break
        if "\0" in line:
            problems.append((lineno, "contains NUL (qmail-newu: bad format)"))
            continue
        i = line.find(":")
        if i <= 0:
            problems.append((lineno, "no ':' after the address (qmail-newu: bad format): %r"
                             % line[:60]))
            continue
        parts = line[i + 1:].split(":")
        if len(parts) < 7:
            problems.append((lineno, "needs 6 colon-terminated fields after the address, "
                             "has %d (qmail-newu: bad format): %r" % (len(parts) - 1, line[:60])))
            continue
        user, uid, gid, home, dash, ext = parts[:6]
        if line[0] not in "=+":
            problems.append((lineno, "starts with %r, not '=' or '+' (qmail-newu reads it "
                             "as '=')" % line[0]))
        entries.append(AssignEntry(line[0] == "+", line[1:i], user, uid, gid, home, dash, ext,
                                   lineno))
    if not ended:
        problems.append((len(lines), "no final line '.' (qmail-newu: bad format)"))
    return entries, problems


class UsersTable:
    """users/cdb as qmail-lspawn reads it (built from assign entries or a cdb)."""

    def __init__(self, entries, source="users/assign"):
        self.source = source
        self.simple = {}
        self.wild = {}
        self.wildchars = set()
        for e in entries:
            key = lower_ascii(e.local)
            if e.wild:
                self.wild.setdefault(key, e)
                if e.local:
                    self.wildchars.add(e.local[-1])
            else:
                self.simple.setdefault(key, e)

    @classmethod
    def from_cdb(cls, items, source="users/cdb"):
        """From the (key, data) pairs of a users/cdb (cdb.Reader(...).items())."""
        table = cls([], source)
        for key, data in items:
            if key == b"":
                table.wildchars = set(decode(data))
                continue
            if not key.startswith(b"!"):
                continue
            f = data.split(b"\0")
            while len(f) < 6:
                f.append(b"")
            user, uid, gid, home, dash, ext = [decode(x) for x in f[:6]]
            if key.endswith(b"\0"):
                e = AssignEntry(False, decode(key[1:-1]), user, uid, gid, home, dash, ext)
                table.simple.setdefault(e.local, e)
            else:
                e = AssignEntry(True, decode(key[1:]), user, uid, gid, home, dash, ext)
                table.wild.setdefault(e.local, e)
        return table

    def lookup_entry(self, local):
        """(entry, (user, uid, gid, home, dash, ext)) that qmail-lspawn uses for LOCAL, or
        None (then it runs qmail-getpw)."""
        low = lower_ascii(local)
        e = self.simple.get(low)
        if e is not None:
            return e, e.fields()
        n = len(low)
        for i in range(n, -1, -1):  # i = length of the prefix of LOCAL
            if i == 0 or low[i - 1] in self.wildchars:
                e = self.wild.get(low[:i])
                if e is not None:
                    return e, (e.user, e.uid, e.gid, e.home, e.dash, e.ext + local[i:])
        return None

    def lookup(self, local):
        hit = self.lookup_entry(local)
        return None if hit is None else hit[1]


def ulong(text):
    """qmail's scan_ulong: the leading decimal digits of TEXT as a number (0: none)."""
    digits = re.match(r"[0-9]*", text).group()
    return int(digits) if digits else 0


class UsersCdb:
    """QMAIL/users/cdb as qmail-lspawn reads it at this moment, for the daemon: read
    again whenever the file changes (qmail-newu replaces it by a rename)."""

    def __init__(self, path, log=lambda message: None):
        self.path = path
        self.log = log
        self._seen = (None, None)  # (file identity, UsersTable or None); swapped whole

    def table(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.log("cannot check %s: %s" % (self.path, e.strerror))
            return None
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        seen, table = self._seen
        if seen == ident:
            return table
        try:
            table = UsersTable.from_cdb(cdb.Reader.open(self.path).items(), "users/cdb")
        except (OSError, ValueError) as e:  # qmail-lspawn defers every delivery then
            self.log("cannot read %s: %s" % (self.path, e))
            table = None
        self._seen = (ident, table)
        return table

    def delivers(self, local, user, uid, homedir, dash, ext):
        """Whether qmail-lspawn, for LOCAL, takes from users/cdb exactly this account and
        runs qmail-local as UID with USER, HOMEDIR, DASH and EXT (bytes)."""
        table = self.table()
        hit = table.lookup(decode(local)) if table is not None else None
        if hit is None:
            return False
        got_user, got_uid, _, got_home, got_dash, got_ext = hit
        return (ulong(got_uid) == uid and (got_user, got_home, got_dash, got_ext) ==
                tuple(decode(v) for v in (user, homedir, dash, ext)))
