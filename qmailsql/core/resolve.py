"""Where a local part is delivered: qmail-getpw's answer, from the DB (SPEC section 4).

One resolution code path serves the `qmailsql getpw` command, the Python API and the
daemon; only the source of mailbox rows differs (a Directory, or the daemon's cache).
"""
import errno
import os
import pwd
from dataclasses import dataclass, field

from qmailsql.core import virtual
from qmailsql.core.errors import (  # noqa: F401 (callers import them from here too)
    EXIT_NFS, EXIT_NOALIAS, EXIT_OK, EXIT_TEMP, EXIT_USAGE, Refusal, shown)
from qmailsql.core.db import DirectoryUnavailable
from qmailsql.core.hotpath import candidates

ALIAS_USER = "alias"  # qmail's auto_usera

# Longest local part, ext or user name accepted, in bytes: more than stock qmail ever
# passes (qmail-smtpd refuses addresses over 900 bytes; a virtual domain's prefix adds
# at most 256), and short enough that no lookup grows with it. Longer: exit 111.
MAX_FIELD = 2048


def too_long(what, value, limit=MAX_FIELD):
    """Why VALUE (bytes) is refused for its length, or None if it is not."""
    if len(value) <= limit:
        return None
    return ("%s of %d bytes is longer than qmailsql's limit of %d (qmail-smtpd takes "
            "addresses of at most 900 bytes)" % (what, len(value), limit))


# qmail's error_temp() (error_temp.c), the errno values that mean "try again later",
# by name: the ones this system lacks (EPROCLIM on Linux) are left out, as qmail's
# #ifdefs do. The one list of temporary errors in qmailsql.
QMAIL_ERROR_TEMP = ("EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK", "EAGAIN",
                    "EDEADLK", "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC", "ENETDOWN",
                    "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS",
                    "ETOOMANYREFS", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EPROCLIM",
                    "EUSERS", "EDQUOT", "ESTALE", "ENOLCK")
TEMP_ERRNOS = frozenset(getattr(errno, n) for n in QMAIL_ERROR_TEMP if hasattr(errno, n))
# not temporary to qmail, but here the daemon (not qmailp) looks at the home: if it may
# not, that is its own trouble, and mail waits (111) instead of going to the alias user
NOT_ALLOWED_ERRNOS = frozenset((errno.EACCES, errno.EPERM))


def is_temporary(code):
    """qmail's error_temp(CODE)."""
    return code in TEMP_ERRNOS


@dataclass(frozen=True)
class Account:
    """A mailbox row or passwd entry, as qmail-getpw sees it."""
    name: str
    uid: int
    gid: int
    home: str
    source: str  # "mailbox" or "passwd"


@dataclass(frozen=True)
class Delivery:
    user: bytes
    uid: int
    gid: int
    home: bytes
    dash: bytes
    ext: bytes
    # the alias user because nothing else takes the address: stock qmail-local bounces
    # it unless the alias user has a default (the lag rule confirms such answers)
    bounce: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def of(cls, acct, dash, ext, bounce=False):
        return cls(os.fsencode(acct.name), acct.uid, acct.gid, os.fsencode(acct.home), dash,
                   ext, bounce)

    def fields(self):
        """Stock qmail-getpw output: six NUL-terminated fields."""
        return b"".join(f + b"\0" for f in (self.user, b"%d" % self.uid, b"%d" % self.gid,
                                           self.home, self.dash, self.ext))


def mailbox_row_fault(username, uid, gid, home):
    """Why qmail cannot use a mailbox row (a phrase), or None: the one rule for
    delivery (account_from_row), logins (auth) and `qmailsql doctor`."""
    if not isinstance(username, str) or not username.strip() or "\0" in username:
        return "a username without NUL is required"
    if uid is None or gid is None or not isinstance(home, str) or not home.startswith("/"):
        return "uid, gid and an absolute home are required"
    if "\0" in home:
        return "NUL in home"
    try:
        uid, gid = int(uid), int(gid)
    except (TypeError, ValueError):
        return "uid/gid not numbers"
    if uid < 0 or gid < 0:
        return "negative uid/gid"
    return None


def account_from_row(row):
    """A mailbox row -> Account; a row qmail cannot use is a misconfiguration (111)."""
    username, uid, gid, home = row[:4]
    fault = mailbox_row_fault(username, uid, gid, home)
    if fault is not None:
        raise Refusal(EXIT_TEMP, "misconfigured mailbox row for %r: %s (uid=%r gid=%r "
                      "home=%r)" % (username, fault, uid, gid, home),
                      "misconfigured mailbox row for %r (see qmailsqld's log)" % (username,),
                      cause="row")
    return Account(username, int(uid), int(gid), home, "mailbox")


def passwd_account(name):
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    except OSError as e:  # nsswitch trouble is a temporary failure, as in qmail
        raise Refusal(EXIT_TEMP, "getpwnam(%r) failed: %s" % (name, e))
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "passwd")


def pick_row(rows, name):
    """The row for NAME among case-insensitive matches (the DB's collation pads and folds)."""
    exact = [r for r in rows if r[0] == name]
    if exact:
        return exact[0]
    folded = [r for r in rows if isinstance(r[0], str) and r[0].lower() == name]
    return folded[0] if folded else None


def _text(name):
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def mailbox_names(cands):
    """The names whose mailbox rows resolve_local() reads for the candidates CANDS: one
    round trip, the alias user included."""
    return [t for t in (_text(c) for c, _, _ in cands) if t is not None] + [ALIAS_USER]


class Resolver:
    """qmail-getpw's logic over a source of mailbox rows.

    `mailbox_rows(names)` returns the mailbox rows (username, uid, gid, home) whose
    username matches any of NAMES; it raises for DB trouble, which becomes exit 111.
    """

    def __init__(self, config, mailbox_rows, virtual_rows=None, confirmer=None, ahead=None):
        """VIRTUAL_ROWS(pairs, funky) -> (known hosts, rows) feeds the virtual step
        (qmailsql.core.virtual.fetch); without it there is no virtual step. CONFIRMER() ->
        a Resolver that reads from the write_server, or None when the answer just
        worked out needs no second look (the lag rule, db.py); without it nothing is
        confirmed. AHEAD(local) is told each local part the mailbox step is about to
        look up (db.Batch plans its reads). for_directory() wires them to one
        db.Directory."""
        self.config = config
        self.mailbox_rows = mailbox_rows
        self.virtual_rows = virtual_rows
        self.confirmer = confirmer
        self.ahead = ahead

    @classmethod
    def for_directory(cls, config, directory, ahead=None):
        """The full resolver (mailbox, passwd, virtual) over one db.Directory (or its
        db.WriteServerReads, or a db.Batch)."""

        def confirmer():
            if not directory.must_confirm():
                return None
            return cls.for_directory(config, directory.on_write_server())
        return cls(config, directory.mailboxes, virtual.row_source(directory), confirmer,
                   ahead)

    def account(self, name, rows, same_cost=False):
        """The Account called NAME (mailbox first, then /etc/passwd), or None.

        SAME_COST: ask /etc/passwd even when a mailbox row answers, so that the time
        taken does not tell whether NAME has a row (answers to unprivileged peers)."""
        row = pick_row(rows, name)
        pw = None
        if self.config.system_users and (row is None or same_cost):
            pw = passwd_account(name)
        return account_from_row(row) if row is not None else pw

    def usable_home(self, acct, say):
        try:
            st = os.stat(acct.home)
        except OSError as e:
            if is_temporary(e.errno) or e.errno in NOT_ALLOWED_ERRNOS:
                # stock qmail-getpw exits QLX_NFS (115) for a temporary error
                raise Refusal(EXIT_NFS if is_temporary(e.errno) else EXIT_TEMP,
                              "cannot check home %s of %s: %s" % (acct.home, acct.name,
                                                                   e.strerror))
            say("rejected: home %s: %s" % (acct.home, e.strerror))
            return False
        if st.st_uid != acct.uid:
            say("rejected: home %s is owned by uid %d, not %d" % (acct.home, st.st_uid,
                                                                    acct.uid))
            return False
        return True

    def getpw(self, local, explain=None):
        """Delivery for LOCAL (bytes), or raise Refusal. EXPLAIN, a list, gets the story.

        An answer that would bounce (the alias user for want of anything else, or 116)
        is worked out again on the write_server when it came from a replica; hits and
        the misses on the way to them are taken as they are (the lag rule, db.py)."""
        say = explain.append if explain is not None else (lambda line: None)
        if not isinstance(local, bytes):
            local = os.fsencode(local)
        if b"\0" in local:
            raise Refusal(EXIT_USAGE, "local part contains NUL")
        problem = too_long("local part", local)
        if problem:
            raise Refusal(EXIT_TEMP, problem)
        try:
            delivery = self.resolve(local, say)
            if not delivery.bounce:
                return delivery
        except Refusal as r:
            if r.code != EXIT_NOALIAS:
                raise
            delivery = r
        confirm = self.confirmer() if self.confirmer is not None else None
        if confirm is None:
            if isinstance(delivery, Refusal):
                raise delivery
            return delivery
        say("that answer came from a replica and would bounce: asking the write_server")
        return confirm.getpw(local, explain)

    def resolve(self, local, say):
        """getpw() for LOCAL (bytes, no NUL) from this resolver's rows alone."""
        if self.virtual_rows is not None:
            hit = virtual.match(self.config, self.virtual_rows, local, say)
            if hit is not None and hit.kind == "local":
                return self.resolve_local(hit.target, say)
            if hit is not None:
                return self.alias_delivery(local, say, forward=hit.kind == "forward")
        return self.resolve_local(local, say)

    def alias_delivery(self, local, say, forward=False):
        """The alias user with dash '-' and ext LOCAL (virtual: no row, or magic forward)."""
        return self.to_alias_user(local, self.fetch([ALIAS_USER]), say,
                                  "magic forward" if forward else "no virtual row", forward)

    def fetch(self, names):
        """Mailbox rows for NAMES; any DB trouble is 111 (cause "db"): mail waits, never
        goes to the alias user. Any other exception is a bug and goes up as it is (the
        daemon logs it as an internal error and answers 111)."""
        try:
            return list(self.mailbox_rows(names))
        except DirectoryUnavailable as e:
            raise Refusal(EXIT_TEMP, "DB lookup failed: %s" % e, cause="db")

    def to_alias_user(self, local, rows, say, why, forward=False):
        """Step 3 of SPEC section 4: the alias user with dash '-' and ext LOCAL."""
        alias = self.account(ALIAS_USER, rows)
        if alias is None:
            if forward:  # a configured forward must not bounce for want of the alias user
                raise Refusal(EXIT_TEMP, "magic forward for %s needs the alias user %r "
                              "(create it: qmailsql mailbox add %s ...)"
                              % (shown(local), ALIAS_USER, ALIAS_USER))
            say("%s and no alias user: exit %d" % (why, EXIT_NOALIAS))
            raise Refusal(EXIT_NOALIAS, "no user for %s and no alias user" % shown(local))
        say("%s: alias user (%s), dash '-' ext %r" % (why, alias.source,
                                                     local.decode("latin-1")))
        return Delivery.of(alias, b"-", local, bounce=not forward)

    def resolve_local(self, local, say):
        """Steps 2 and 3 of SPEC section 4 for LOCAL (bytes, no NUL)."""
        if self.ahead is not None:
            self.ahead(local)
        cands = candidates(local, self.config.auto_break, self.config.userlen)
        rows = self.fetch(mailbox_names(cands))
        for cand, dash, ext in cands:
            name = _text(cand)
            if name is None:
                say("candidate %r: not valid UTF-8, cannot be a user" % cand)
                continue
            acct = self.account(name, rows)
            if acct is None:
                say("candidate %r: no such user in mailbox%s" % (
                    name, " or /etc/passwd" if self.config.system_users else ""))
                continue
            prefix = "candidate %r (%s uid %d):" % (name, acct.source, acct.uid)
            if acct.uid == 0:
                say(prefix + " rejected: uid 0 never gets mail")
                continue
            if not self.usable_home(acct, lambda m: say(prefix + " " + m)):
                continue
            say(prefix + " taken, home %s, dash %r ext %r" % (acct.home, dash.decode(
                "latin-1"), ext.decode("latin-1")))
            return Delivery.of(acct, dash, ext)
        return self.to_alias_user(local, rows, say, "no candidate")
