"""Maildir++ quotas (SPEC sections 5 and 7): limits in the DB, usage in `maildirsize`.

Limits. A mailbox row has `quota_size` (bytes) and `quota_count` (messages); NULL means
"no limit of its own", 0 means "no limit, whatever the domain says". A virtual domain may
have a default in `domain_quota` (host, quota_size, quota_count). A mailbox belongs to
the domains whose `virtual` rows name it; when it is in several that have a default,
the first of them in alphabetical order gives it. Each of the two limits is taken
separately: the mailbox's own value, else the domain's, else none. The daemon answers
the limits to the qmail-local wrapper (the `localq` request, csrc/PROTOCOL.md), which
enforces them with csrc/maildirsize.c; Dovecot gets the same numbers as `quota_rule`
(dovecot_userdb_fields below), so both keep one `maildirsize` in step.

maildirsize (Courier's README.maildirquota, the Maildir++ specification; Dovecot's
quota-maildir.c reads and writes it the same way). In HOME/Maildir. The first line
is the quota, written as Dovecot writes it: `<bytes>S` (when there is a size limit
or no count limit) and `<messages>C`, comma-separated, e.g. `1000000S,1000C`. Every
other line is `<bytes> <messages>`, a change (negative for removals); the usage is
their sum. Writers append one line with one write(2) on an O_APPEND descriptor.
The file is recalculated (every message in new/ and cur/ of the Maildir and of each
Maildir++ folder `.Name/`, except `.Trash`; the size from `,S=<n>` in the file name,
else stat()) and replaced through tmp/ and rename when it is missing, 5120 bytes or
longer, unparsable (a NUL, a line that is not two numbers, no newline at the end, a
negative sum), when its
quota line differs from the limits, and when it says a delivery would go over quota
but it is not a single, less than 15 minutes old, recalculated line. The same rules
are in csrc/maildirsize.c (deliveries) and here (reports: `qmailsql quota`, doctor),
which never writes into a Maildir (the admin runs as root) but counts the messages
itself where the wrapper would recalculate.

Warnings: when a delivery leaves the mailbox at or above `quota_warn_percent` (of
either limit) and HOME/Maildir/quotawarn does not exist, the wrapper delivers a warning
message into the Maildir and creates quotawarn; a delivery below the threshold
removes quotawarn again, so the next crossing warns again.
"""
import os
import re
import time
from dataclasses import dataclass

from qmailsql.core.db import DirectoryUnavailable, Part, part_sql, select

MAILDIRSIZE = "maildirsize"
QUOTAWARN = "quotawarn"
RECALC_BYTES = 5120           # a maildirsize this long or longer is recalculated
STALE_SECONDS = 15 * 60       # an over-quota verdict older than this is recounted
TRASH = ".Trash"              # not counted (Maildir++; Dovecot: quota_rule2 = Trash:ignore)
DOVECOT_TRASH_RULE = "Trash:ignore"

UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
ER_BAD_FIELD, ER_NO_SUCH_TABLE = 1054, 1146


class QuotaError(ValueError):
    """A limit or a target the command refuses; the message says why."""


# ----------------------------------------------------------------- limits

@dataclass(frozen=True)
class Limits:
    """size in bytes and count in messages; 0 = no limit. source: where they come from
    ('mailbox', '@host', 'mailbox+@host' or '' when there is no limit)."""
    size: int = 0
    count: int = 0
    source: str = ""

    def __bool__(self):
        return bool(self.size or self.count)


def combine(own_size, own_count, domain=None):
    """Limits from a mailbox's own columns and its domain's default row (host, size,
    count) or None; each limit on its own: the mailbox's value when not NULL."""
    size, count, parts = 0, 0, []
    for own, index in ((own_size, 1), (own_count, 2)):
        value = own
        where = "mailbox"
        if value is None and domain is not None:
            value, where = domain[index], "@" + domain[0]
        if value:
            if where not in parts:
                parts.append(where)
            if index == 1:
                size = int(value)
            else:
                count = int(value)
    return Limits(size, count, "+".join(parts))


def parse_size(text):
    """`500M`, `2G`, `1048576`, `1.5G` -> bytes (K, M, G, T are powers of 1024, an
    optional trailing B or iB is ignored); `none` -> None (no limit of its own);
    `0` or `unlimited` -> 0 (no limit at all)."""
    t = str(text).strip()
    low = t.lower()
    if low == "none":
        return None
    if low in ("unlimited", "0"):
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?", t)
    if not m:
        raise QuotaError("size %r: give bytes or a number with K, M, G or T (500M, 2G), "
                         "`none` to remove the limit or `unlimited`" % text)
    value = float(m.group(1)) * UNITS[m.group(2).upper()]
    if value != int(value) or (m.group(2) == "" and "." in m.group(1)):
        raise QuotaError("size %r is not a whole number of bytes" % text)
    if value >= 2 ** 63:
        raise QuotaError("size %r is too large" % text)
    return int(value)


def parse_count(text):
    """A message count: digits, `none` -> None, `unlimited` -> 0."""
    t = str(text).strip().lower()
    if t == "none":
        return None
    if t == "unlimited":
        return 0
    if not t.isdigit() or int(t) >= 2 ** 63:
        raise QuotaError("count %r: give a number of messages, `none` to remove the "
                         "limit or `unlimited`" % text)
    return int(t)


def format_size(n):
    """Bytes for people: 500M, 1.5G, 912K, 300 (exact below 1K)."""
    if n is None:
        return "-"
    n = int(n)
    for unit in ("T", "G", "M", "K"):
        u = UNITS[unit]
        if abs(n) >= u:
            if n % u == 0:
                return "%d%s" % (n // u, unit)
            return "%.1f%s" % (n / u, unit)
    return str(n)


# ----------------------------------------------------------------- Dovecot

def dovecot_quota_rule(limits):
    """`*:storage=NK:messages=N` for Dovecot's userdb (quota_rule), None without a
    limit. The size stays exact (storage=NB when it is not a whole number of KiB), so
    the quota line Dovecot writes into maildirsize is the one the wrapper expects."""
    if not limits:
        return None
    parts = ["*"]
    if limits.size:
        parts.append("storage=%dK" % (limits.size // 1024) if limits.size % 1024 == 0
                     else "storage=%dB" % limits.size)
    if limits.count:
        parts.append("messages=%d" % limits.count)
    return ":".join(parts)


def dovecot_userdb_fields(limits):
    """userdb fields for a mailbox with LIMITS: quota_rule, and quota_rule2 keeping
    Trash out of the count as the Maildir++ specification (and the wrapper) do."""
    rule = dovecot_quota_rule(limits)
    if rule is None:
        return {}
    return {"quota_rule": rule, "quota_rule2": DOVECOT_TRASH_RULE}


# ----------------------------------------------------------------- DB

def _missing_schema(exc):
    """The DB error behind a DirectoryUnavailable (raised inside db.py's except block,
    so it is the __context__) is a missing quota column or table: an unmigrated schema."""
    cause = exc.__context__
    code = getattr(cause, "args", (None,))[0] if cause is not None else None
    return code in (ER_BAD_FIELD, ER_NO_SUCH_TABLE)


# USER's domain with a default, the first alphabetically; the index on virtual(username)
# (core/schema.py) keeps it to USER's own rows
DOMAIN_DEFAULT = Part("1, d.quota_size, d.quota_count, d.host", 4, "domain_quota d",
                      "d.host IN (SELECT v.virtual_host FROM virtual v WHERE v.username=%s)",
                      (), "ORDER BY d.host LIMIT 1")
DOMAIN_DEFAULT_SQL = part_sql(DOMAIN_DEFAULT)  # alone, as EXPLAIN takes it


def mailbox_limits(directory, user):
    """Limits of USER (str, or bytes as a helper sent it) for a delivery or a Dovecot
    login. No mailbox row: no limits. Raises db.DirectoryUnavailable; a schema without
    the quota columns is no limits."""
    if isinstance(user, bytes):
        try:
            user = user.decode("utf-8")
        except UnicodeDecodeError:
            return Limits()  # no mailbox row can have that name
    own, domain = None, None
    try:
        for row in select(directory, limits_read(user)):
            if row[0] == 0:
                own = row
            else:
                domain = (row[3], row[1], row[2])
    except DirectoryUnavailable as e:
        if _missing_schema(e):
            return Limits()
        raise
    if own is None:
        return Limits()
    return combine(own[1], own[2], domain)


def limits_read(user):
    """mailbox_limits()'s read: (0, quota_size, quota_count, NULL) of USER's mailbox row
    and (1, quota_size, quota_count, host) of the first of its domains with a default
    (which combine() uses only for a NULL limit)."""
    return (Part("0, quota_size, quota_count, NULL", 4, "mailbox", "username=%s", (user,)),
            DOMAIN_DEFAULT._replace(params=(user,)))


def answer_line(config, limits):
    """The first line of the daemon's `localq` answer: `SIZE COUNT WARN OVERFLOW\n`
    (csrc/PROTOCOL.md)."""
    return b"%d %d %d %s\n" % (limits.size, limits.count, config.quota_warn_percent,
                               config.quota_overflow.encode("ascii"))


def explain(directory, config, user):
    """One sentence for `qmailsql getpw --explain`: USER's (bytes) limits."""
    limits = mailbox_limits(directory, user)
    if not limits:
        return "no quota"
    return "quota %s, %s messages (from %s); over it, mail is %s" % (
        format_size(limits.size) if limits.size else "no size limit",
        limits.count or "no limit on", limits.source,
        "bounced (#5.2.2)" if config.quota_overflow == "bounce" else "deferred (#4.2.2)")


def all_limits(directory, users=None):
    """[(username, uid, gid, home, Limits)] for USERS (every mailbox with a limit when
    None)."""
    columns = "SELECT username, uid, gid, home, quota_size, quota_count FROM mailbox "
    if users:
        marks = ",".join(["%s"] * len(users))
        rows = directory.query(columns + "WHERE username IN (" + marks + ")", list(users))
    else:
        rows = directory.query(
            columns +
            "WHERE quota_size IS NOT NULL OR quota_count IS NOT NULL "
            "OR username IN (SELECT v.username FROM virtual v "
            "JOIN domain_quota d ON d.host = v.virtual_host)")
    domains = {}
    for username, host, dsize, dcount in directory.query(
            "SELECT v.username, d.host, d.quota_size, d.quota_count FROM virtual v "
            "JOIN domain_quota d ON d.host = v.virtual_host ORDER BY d.host"):
        domains.setdefault(username.lower(), (host, dsize, dcount))
    return [(name, uid, gid, home, combine(s, c, domains.get(name.lower())))
            for name, uid, gid, home, s, c in rows]


def domain_members(directory):
    """{host: set(lower-cased usernames)} over every virtual row."""
    out = {}
    for host, username in directory.query("SELECT virtual_host, username FROM virtual"):
        out.setdefault(host.lower(), set()).add(username.lower())
    return out


# ----------------------------------------------------------------- maildirsize

def header(size, count):
    """The first line of maildirsize, as Dovecot writes it."""
    parts = []
    if size or not count:
        parts.append("%dS" % size)
    if count:
        parts.append("%dC" % count)
    return ",".join(parts)


def parse_header(line):
    """(size, count) of a quota line; unknown parts are ignored, as Courier does."""
    size = count = 0
    for part in line.split(","):
        m = re.match(r"[ \t]*(\d{1,18})([SC])", part)
        if m:
            if m.group(2) == "S":
                size = int(m.group(1))
            else:
                count = int(m.group(1))
    return size, count


@dataclass
class Usage:
    bytes: int = 0
    count: int = 0
    source: str = ""      # maildirsize, recount (why), none (no Maildir)
    error: str = ""       # the maildirsize that could not be read, and why


_DELTA = re.compile(rb"[ \t]*(-?\d{1,18})[ \t]+(-?\d{1,18})[ \t]*")


def read_maildirsize(path):
    """(quota line, bytes, count, data lines, mtime) of the file at PATH, or a string
    saying why it must be recalculated. Raises OSError (ENOENT: it does not exist)."""
    with open(path, "rb") as f:
        data = f.read(RECALC_BYTES)
        st = os.fstat(f.fileno())
    if len(data) >= RECALC_BYTES:
        return "%d bytes or longer" % RECALC_BYTES
    if b"\0" in data:
        return "holds a NUL byte"
    if not data.endswith(b"\n"):  # appending to it would run two lines together
        return "does not end in a newline"
    lines = data[:-1].split(b"\n")
    total_b = total_c = 0
    for line in lines[1:]:
        m = _DELTA.fullmatch(line)
        if not m:
            return "line %r is not two numbers" % line[:40]
        total_b += int(m.group(1))
        total_c += int(m.group(2))
    if total_b < 0 or total_c < 0:
        return "negative totals"
    return (lines[0].decode("ascii", "replace"), total_b, total_c, len(lines) - 1,
            st.st_mtime)


def _size_from_name(name):
    i = name.find(",S=")
    if i < 0:
        return None
    m = re.match(r"\d+", name[i + 3:])
    if not m:
        return None
    rest = name[i + 3 + m.end():]
    if rest and rest[0] not in ":,":
        return None
    return int(m.group(0))


def recount(maildir):
    """(bytes, messages) of MAILDIR counted as a recalculation counts them."""
    total_b = total_c = 0
    dirs = [maildir]
    try:
        with os.scandir(maildir) as it:
            for e in it:
                if (e.name.startswith(".") and e.name not in (".", "..", TRASH)
                        and not e.is_symlink() and e.is_dir()):
                    dirs.append(os.path.join(maildir, e.name))
    except FileNotFoundError:
        return 0, 0
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                it = os.scandir(os.path.join(d, sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    n = _size_from_name(e.name)
                    if n is None:
                        try:
                            n = e.stat().st_size
                        except OSError:  # gone meanwhile
                            continue
                    total_b += n
                    total_c += 1
    return total_b, total_c


def over(limits, nbytes, count):
    return bool((limits.size and nbytes > limits.size)
                or (limits.count and count > limits.count))


def usage(home, limits, now=None):
    """Usage of HOME/Maildir against LIMITS as a delivery would see it: the sums in
    maildirsize when the rules above trust them, else a recount (read-only)."""
    maildir = os.path.join(home, "Maildir")
    if not os.path.isdir(maildir):
        return Usage(source="none (no Maildir)")
    path = os.path.join(maildir, MAILDIRSIZE)
    error = ""
    try:
        got = read_maildirsize(path)
    except FileNotFoundError:
        got = "missing"
    except OSError as e:
        got, error = "unreadable", "%s: %s" % (path, e.strerror)
    if isinstance(got, tuple):
        line, nbytes, count, nlines, mtime = got
        now = time.time() if now is None else now
        if parse_header(line) != (limits.size, limits.count):
            got = "quota line %r, not %r" % (line, header(limits.size, limits.count))
        elif not over(limits, nbytes, count) or (nlines == 1 and now < mtime + STALE_SECONDS):
            return Usage(nbytes, count, "maildirsize")
        else:
            got = "over quota, to be confirmed"
    nbytes, count = recount(maildir)
    return Usage(nbytes, count, "recount (maildirsize %s)" % got, error)


def percent(limits, nbytes, count):
    """Use of the fuller of the two limits, in percent (0 without limits)."""
    p = 0.0
    if limits.size:
        p = max(p, 100.0 * nbytes / limits.size)
    if limits.count:
        p = max(p, 100.0 * count / limits.count)
    return p


# ----------------------------------------------------------------- doctor

def doctor_findings(directory, overflow="bounce"):
    """(check, severity, what, fix) for `qmailsql doctor`: mailboxes over quota, and
    maildirsize files that cannot be read."""
    try:
        limits = all_limits(directory)
    except DirectoryUnavailable as e:
        if _missing_schema(e):
            yield ("schema-quota", "warning", "the schema has no quota columns "
                   "(mailbox.quota_size, quota_count) or no domain_quota table: quotas "
                   "are off", "qmailsql migrate")
            return
        raise
    what = "bounced (#5.2.2)" if overflow == "bounce" else "deferred (#4.2.2)"
    for name, uid, gid, home, lim in limits:
        u = usage(home, lim)
        path = os.path.join(home, "Maildir", MAILDIRSIZE)
        try:
            owner = os.lstat(path).st_uid
        except OSError:
            owner = uid
        if u.error or owner != uid:
            why = u.error or "%s belongs to uid %d, not the mailbox's uid %d" % (path, owner,
                                                                                  uid)
            yield ("quota-maildirsize-unreadable", "error",
                   "mailbox %r: cannot read %s: the wrapper (running as uid %d) defers its "
                   "mail until it can" % (name, why, uid),
                   "rm -r %s  (the next delivery recalculates it), or chown %d:%d %s"
                   % (path, uid, gid, path))
        if over(lim, u.bytes, u.count):
            yield ("quota-over", "warning",
                   "mailbox %r is over quota: %s of %s, %d of %s messages; new mail is %s"
                   % (name, format_size(u.bytes), format_size(lim.size) if lim.size else "-",
                      u.count, lim.count or "-", what),
                   "qmailsql quota set %s --size <larger> (or the user deletes mail)" % name)
