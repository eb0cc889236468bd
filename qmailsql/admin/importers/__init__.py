"""`qmailsql import`: move users from qmail's users/assign, /etc/passwd or vpopmail into
the tables (SPEC sections 3 to 5).

Every import first builds a Plan (mailbox, alias and virtual rows, plus what could not
be expressed), then compares it with the DB: new rows, rows already there
(unchanged), rows that differ from what is there (conflicts: the DB row is kept unless
--replace). A dry run (the default) prints that and writes nothing; --apply writes it
in one transaction through the write_server, with parameters only.

users/assign (qmail-users(5); parsed as qmail-newu(8) does)
------------------------------------------------------------
`=local:user:uid:gid:home:dash:ext:` and `+loc:user:uid:gid:home:dash:pre:` lines,
ending with a line `.`. qmail-lspawn asks users/cdb before qmail-getpw (exact `=`
match, then the longest `+` prefix), so the question for each line is: which rows make
qmail-getpw give the same answer? The mapping:

  =L:U:uid:gid:home:::            mailbox row L (uid, gid, home). When L is not U, the
                                  answer is the same but for the user field (qmail-local
                                  then sets USER=L instead of U): reported as a note.
  =P-X:U:uid:gid:home:-:X:        mailbox row P: qmail-getpw answers P-X with dash '-'
                                  and ext X by itself (same for any auto_break split).
  +P-:U:uid:gid:home:-::          mailbox row P (this is what qmail-pw2u writes beside
                                  each `=P` line).
  +:alias:uid:gid:home:-::        the catch-all: mailbox row `alias` (qmail-getpw's alias
                                  user gets every address nobody else takes, ext = L).
  =L:alias:...:-:L:               the same alias user, already covered by the catch-all.

Every line is then checked by simulating qmail-getpw over the planned rows plus the
rows already in the DB (and /etc/passwd when system_users is on). A `=L:U:...:-:X:` line
whose answer differs (its dot-qmail file name is not L's, as in `=sales:joe:...:-:work:`)
becomes alias rows: the lines of home/.qmail-X, when that file can be read, are copied
into alias rows of a mailbox row L with U's uid, gid and home (the same deliveries, as U,
in U's home; later edits of the file are not seen), else L is forwarded to U-X from the
alias user (alias row (alias, L) -> &U-X; one more hop). Anything else that differs is
reported as not expressible, with the reason, and left out (for instance `+P:U:...:-:Q:`
prefix rewrites where Q is not P).

--passwd FILE [--shadow FILE]: /etc/passwd-style accounts with uid in [--min-uid,
--max-uid] (default 1000..60000) become mailbox rows with their crypt(3) hashes as
`Crypt-Password` (locked `!hash` entries: suspended 'Y'; `*`, `!` or empty: no
password, nobody can log in). With an assign file too, accounts named by assign rows
give those rows their password.

vpopmail (its MySQL tables)
---------------------------
Read from a mysqldump file (parsed here by a small SQL literal parser: CREATE TABLE for
column order, INSERT/REPLACE ... VALUES tuples with '...' and "..." strings and all
MySQL backslash escapes, numbers, NULL, 0x/X''/b'' literals, _charset introducers;
comments, /*!...*/ blocks and DELIMITER blocks skipped; UTF-8, else Latin-1) or
directly from the vpopmail database (--from-db: ~vpopmail/etc/vpopmail.mysql or the
--db-* options). Tables used: `vpopmail` (or the per-domain tables of
--disable-many-domains, domain = table name with '_' read as '.'), `valias`,
`aliasdomains`. The mapping, for user@domain:

  mailbox  `domain-user` (lower-cased; the local part qmail-getpw sees for user@domain
           once `qmailsql sync` maps the domain in control/virtualdomains), uid/gid of the
           vpopmail account (--uid/--gid, default the `vpopmail` user), home pw_dir,
           password pw_passwd as Crypt-Password (pw_clear_passwd, when pw_passwd is
           empty, is hashed with default_scheme); pw_gid's NO_POP flag -> suspended 'Y';
           BOUNCE_MAIL -> one alias line `|bouncesaying ...`. Quotas (pw_shell) are not
           kept (qmailsql has none).
  virtual  (username `domain-user`, ext '', virtual_username user, virtual_host domain)
  valias   for an address that is also a mailbox: its lines become that mailbox's plain
           .qmail rows (alias ''), as vdelivermail reads valias first; for an address
           with no mailbox: the domain gets a mailbox row named `domain` (home: the
           domain directory, derived from the users' pw_dir or --domains-dir/domain), a
           virtual row (`domain`, ext alias, alias, domain) and alias rows (`domain`,
           alias, ...). Lines: `&addr` or `addr` -> forward (alias_username, alias_host
           split at the last @), `|prog` -> ('|', prog), `/path` -> ('/', path),
           `./Maildir/` -> ('.', '/Maildir/').
  aliasdomains  every virtual row of the real domain is repeated for the alias domain.

Left out, and said so: a domain's .qmail-default (catch-all or bounce-no-mailbox) lives
in a file, not in the tables; quotas; vpopmail's limits and lastauth tables.
"""
import os
import pwd
import re
import sys
import time
from collections import OrderedDict, namedtuple

ASCII_LOWER = {c: c + 32 for c in range(65, 91)}
MIN_UID, MAX_UID = 1000, 60000
BATCH = 500
NO_POP, NO_IMAP, BOUNCE_MAIL = 0x02, 0x08, 0x10


class ImportError_(Exception):
    """The input cannot be read at all (usage-level trouble)."""


def lower_ascii(s):
    """qmail's case_lowerb: ASCII letters only."""
    return s.translate(ASCII_LOWER)


# ======================================================================= users/assign

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


def _decode(data):
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "surrogateescape")


def parse_assign(data):
    """(entries, problems) of users/assign DATA, read as qmail-newu reads it.

    problems: (lineno, message) for lines qmail-newu would refuse ("bad format") —
    they are skipped here, where qmail-newu refuses the whole file."""
    text = _decode(data)
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
                table.wildchars = set(_decode(data))
                continue
            if not key.startswith(b"!"):
                continue
            f = data.split(b"\0")
            while len(f) < 6:
                f.append(b"")
            user, uid, gid, home, dash, ext = [_decode(x) for x in f[:6]]
            if key.endswith(b"\0"):
                e = AssignEntry(False, _decode(key[1:-1]), user, uid, gid, home, dash, ext)
                table.simple.setdefault(e.local, e)
            else:
                e = AssignEntry(True, _decode(key[1:]), user, uid, gid, home, dash, ext)
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


def _ulong(text):
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
        from qmailsql.core import cdb
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
        hit = table.lookup(_decode(local)) if table is not None else None
        if hit is None:
            return False
        got_user, got_uid, _, got_home, got_dash, got_ext = hit
        return (_ulong(got_uid) == uid and (got_user, got_home, got_dash, got_ext) ==
                tuple(_decode(v) for v in (user, homedir, dash, ext)))


# ======================================================================= the plan

MailboxRow = namedtuple("MailboxRow", "username uid gid home password password_type suspended")
AliasRow = namedtuple("AliasRow", "username alias alias_username alias_host")
VirtualRow = namedtuple("VirtualRow", "username ext virtual_username virtual_host")


class Plan:
    def __init__(self, what):
        self.what = what
        self.mailbox = OrderedDict()   # lower name -> MailboxRow
        self.origin = {}               # lower name -> where it came from
        self.alias = []
        self._alias_seen = set()
        self.virtual = OrderedDict()   # (host, vuser) lower -> VirtualRow
        self.notes = []
        self.problems = []

    def note(self, text):
        self.notes.append(text)

    def problem(self, text):
        self.problems.append(text)

    def add_mailbox(self, row, origin):
        key = row.username
        old = self.mailbox.get(key)
        if old is None:
            self.mailbox[key] = row
            self.origin[key] = origin
            return True
        if (old.uid, old.gid, old.home) != (row.uid, row.gid, row.home):
            self.problem("%s: mailbox %r (uid %s gid %s home %s) conflicts with %s (uid %s gid "
                         "%s home %s), which comes first and is kept"
                         % (origin, key, row.uid, row.gid, row.home, self.origin[key], old.uid,
                            old.gid, old.home))
            return False
        if row.password and not old.password:
            self.mailbox[key] = old._replace(password=row.password,
                                             password_type=row.password_type,
                                             suspended=row.suspended)
        return True

    def add_alias(self, row):
        if row not in self._alias_seen:
            self._alias_seen.add(row)
            self.alias.append(row)

    def add_virtual(self, row, origin):
        key = (row.virtual_host.lower(), row.virtual_username.lower())
        old = self.virtual.get(key)
        if old is None:
            self.virtual[key] = row
        elif (old.username, old.ext) != (row.username, row.ext):
            self.problem("%s: virtual %s@%s -> %s conflicts with -> %s, which is kept"
                         % (origin, row.virtual_username, row.virtual_host, row.username,
                            old.username))


def _int(value):
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def _ok_text(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in s and "\n" not in s


# ---------------------------------------------------------------- simulate qmail-getpw

def _simulator(config, rows):
    """A resolve.Resolver over ROWS ({lower name: (name, uid, gid, home)}), /etc/passwd per
    system_users; mailbox homes are taken as usable (they may not exist yet)."""
    from qmailsql.core import resolve

    class Sim(resolve.Resolver):
        def usable_home(self, acct, say):
            if acct.source == "mailbox":
                return True
            return resolve.Resolver.usable_home(self, acct, say)

    def mailbox_rows(names):
        out = []
        for n in names:
            r = rows.get(n.lower())
            if r is not None:
                out.append(r)
        return out
    return Sim(config, mailbox_rows, virtual_rows=None)


def _answer(sim, local):
    from qmailsql.core.resolve import Refusal
    try:
        d = sim.getpw(os.fsencode(local))
    except Refusal as r:
        return ("refusal", r.code)
    return (os.fsdecode(d.user), str(d.uid), str(d.gid), os.fsdecode(d.home),
            os.fsdecode(d.dash), os.fsdecode(d.ext))


def existing_mailboxes(directory, names):
    """{lower name: (username, uid, gid, home)} of the DB rows among NAMES (batched)."""
    out = {}
    names = list(dict.fromkeys(n.lower() for n in names))
    for i in range(0, len(names), BATCH):
        chunk = names[i:i + BATCH]
        for row in directory.query("SELECT username, uid, gid, home FROM mailbox WHERE "
                                   "username IN (" + ",".join(["%s"] * len(chunk)) + ")", chunk):
            if row[0].lower() in chunk:
                out.setdefault(row[0].lower(), tuple(row[:4]))
    return out


def plan_assign(entries, config, directory=None, passwd=None, shadow=None, min_uid=MIN_UID,
                max_uid=MAX_UID):
    """The Plan for users/assign ENTRIES (and/or PASSWD/SHADOW text)."""
    from qmailsql.core.hotpath import candidates
    plan = Plan("users/assign")
    userlen = config.userlen
    simple_keys = {lower_ascii(e.local) for e in entries if not e.wild}
    first = {}
    for e in entries:
        key = ("+" if e.wild else "=") + lower_ascii(e.local)
        if key in first:
            plan.note("%s: %s repeats the address of %s, which qmail-lspawn uses instead; "
                      "skipped" % (e.where(), e.spec(), first[key].where()))
            continue
        first[key] = e
    entries = list(first.values())
    ok_entries = []
    for e in entries:
        uid, gid = _int(e.uid), _int(e.gid)
        if uid is None or gid is None or not e.home.startswith("/"):
            plan.problem("%s: %s: uid and gid must be numbers and home absolute; skipped"
                         % (e.where(), e.spec()))
            continue
        if uid == 0:
            plan.problem("%s: %s: uid 0 never gets mail through qmail-getpw (qmail-lspawn "
                         "let users/cdb deliver as root); skipped" % (e.where(), e.spec()))
            continue
        if not all(_ok_text(x) for x in (e.local, e.user, e.home, e.ext)):
            plan.problem("%s: not valid UTF-8 text; skipped" % e.where())
            continue
        ok_entries.append(e)
        name = None
        low = lower_ascii(e.local)
        if not e.wild and e.dash == "" and e.ext == "":
            name = low
        elif not e.wild and e.dash == "-" and e.ext:
            brk = config.auto_break.decode()
            if low.endswith(brk + lower_ascii(e.ext)) and len(low) > len(e.ext) + 1:
                name = low[:len(low) - len(e.ext) - 1]
            elif lower_ascii(e.ext) == low and lower_ascii(e.user) == "alias":
                name = "alias"
        elif e.wild and e.dash == "-" and e.ext == "":
            if low == "":
                name = "alias"
            elif low.endswith(config.auto_break.decode()) and len(low) > 1:
                name = low[:-1]
        if name is None:
            continue  # left to the simulation below: maybe covered by other rows
        if len(name.encode("utf-8")) >= userlen:
            plan.problem("%s: %s: mailbox name %r is not shorter than userlen %d (set a larger "
                         "`userlen` and run qmailsql migrate --userlen N); skipped"
                         % (e.where(), e.spec(), name, userlen))
            continue
        plan.add_mailbox(MailboxRow(name, uid, gid, e.home, "", "Crypt-Password", "N"),
                         "%s (%s)" % (e.where(), e.spec()))
    if passwd is not None:
        _plan_passwd(plan, passwd, shadow, min_uid, max_uid, userlen, have_assign=bool(entries))
    # verify every assign line against a simulated qmail-getpw
    if ok_entries:
        table = UsersTable(ok_entries)
        probes = []
        for e in ok_entries:
            if e.wild:
                for rest in ("zq", ""):
                    local = e.local + rest
                    if local and lower_ascii(local) not in simple_keys:
                        probes.append((e, local))
            else:
                probes.append((e, e.local))
        rows = {}
        if directory is not None:
            names = set()
            for _, local in probes:
                for cand, _, _ in candidates(os.fsencode(local), config.auto_break, userlen):
                    names.add(os.fsdecode(cand))
            names.add("alias")
            rows.update(existing_mailboxes(directory, names))
        for key, r in plan.mailbox.items():
            rows[key] = (r.username, r.uid, r.gid, r.home)
        sim = _simulator(config, rows)
        bad = set()
        for e, local in probes:
            hit = table.lookup_entry(local)
            if hit is None or hit[0] is not e or e in bad:
                continue
            want = tuple(str(x) for x in hit[1])
            got = _answer(sim, local)
            if got[1:] == want[1:]:
                if got[0] != want[0] and lower_ascii(got[0]) != lower_ascii(want[0]):
                    plan.note("%s: %s: qmail-getpw now answers user %r instead of %r for %r "
                              "(same uid, gid and home; only $USER in qmail-local differs)"
                              % (e.where(), e.spec(), got[0], want[0], local))
                continue
            bad.add(e)
            if not e.wild and e.dash == "-" and e.ext and got[0] != "refusal" \
                    and _express_with_alias_rows(plan, e, local, got, rows, userlen):
                continue
            shown = ("exit %s" % got[1]) if got[0] == "refusal" else (
                "user %s uid %s gid %s home %s dash %r ext %r" % got)
            plan.problem("%s: %s cannot be expressed in the tables: for %r assign gives user %s "
                         "uid %s gid %s home %s dash %r ext %r, the tables would give %s"
                         % ((e.where(), e.spec(), local) + want + (shown,)))
    return plan


def dot_qmail_lines(home, dash, ext):
    """(alias rows' (alias_username, alias_host) for the lines of HOME/.qmail{DASH}{EXT}, the
    file's path); None for the lines when it cannot be read. The file name is made as
    qmail-local makes it: ext lower-cased, '.' turned into ':'."""
    path = os.path.join(home, ".qmail" + dash + lower_ascii(ext).replace(".", ":"))
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return None, path
    lines = [_valias_line(l, None) for l in _decode(data).split("\n")]
    return [l for l in lines if l is not None], path


def _express_with_alias_rows(plan, e, local, got, rows, userlen):
    """`=L:U:uid:gid:home:-:X:` where qmail-getpw cannot answer (dash '-', ext X) for L:
    copy the lines of home/.qmail-X into alias rows of a mailbox row L with U's uid, gid
    and home (the same deliveries, run as U in U's home); without that file, forward L to
    U-X from the alias user when the alias user is what L reaches. True when done."""
    low = lower_ascii(local)
    lines, path = dot_qmail_lines(e.home, e.dash, e.ext)
    old = rows.get(low)
    fits = len(low.encode("utf-8")) < userlen
    if lines and fits and (old is None or (int(old[1]), int(old[2]), old[3]) ==
                           (int(e.uid), int(e.gid), e.home)):
        if not plan.add_mailbox(MailboxRow(low, int(e.uid), int(e.gid), e.home, "",
                                           "Crypt-Password", "N"),
                                "%s (%s)" % (e.where(), e.spec())):
            return False
        rows[low] = (low, int(e.uid), int(e.gid), e.home)
        for au, ah in lines:
            plan.add_alias(AliasRow(low, "", au, ah))
        plan.note("%s: %s: the %d lines of %s copied into alias rows of a mailbox %r with "
                  "%s's uid, gid and home (later edits of that file are not seen: edit the "
                  "rows)" % (e.where(), e.spec(), len(lines), path, low, e.user))
        return True
    if got[0] == "alias" and got[4] == "-" and got[5] == local:
        plan.add_alias(AliasRow("alias", low, "%s-%s" % (e.user, e.ext), ""))
        plan.note("%s: %s: %s cannot be read here, so %r is forwarded to %s-%s from the alias "
                  "user (a forward: one more hop, a new Delivered-To)"
                  % (e.where(), e.spec(), path, local, e.user, e.ext))
        return True
    return False


def parse_passwd(text):
    """[(name, password field, uid, gid, home)] of /etc/passwd-style TEXT."""
    out = []
    for lineno, line in enumerate(_decode(text).split("\n"), 1):
        if not line.strip() or line.startswith("#") or line[0] in "+-":
            continue
        f = line.split(":")
        if len(f) < 7:
            out.append((lineno, None, line))
            continue
        out.append((lineno, f[0], (f[1], f[2], f[3], f[5])))
    return out


def parse_shadow(text):
    out = {}
    for line in _decode(text).split("\n"):
        f = line.split(":")
        if len(f) >= 2 and f[0]:
            out.setdefault(f[0], f[1])
    return out


def _plan_passwd(plan, passwd, shadow, min_uid, max_uid, userlen, have_assign):
    from qmailsql.core import passwords
    shadow_map = parse_shadow(shadow) if shadow is not None else {}
    for lineno, name, f in parse_passwd(passwd):
        where = "passwd line %d" % lineno
        if name is None:
            plan.problem("%s: not 7 colon-separated fields: %r" % (where, f[:60]))
            continue
        pw, uid, gid, home = f
        uid_i, gid_i = _int(uid), _int(gid)
        if uid_i is None or gid_i is None or not home.startswith("/"):
            plan.problem("%s: %s: uid/gid not numbers or home not absolute; skipped"
                         % (where, name))
            continue
        low = name.lower()
        if not (min_uid <= uid_i <= max_uid) or uid_i == 0:
            if low not in plan.mailbox:
                plan.note("%s: %s (uid %d) is outside --min-uid %d .. --max-uid %d; skipped"
                          % (where, name, uid_i, min_uid, max_uid))
                continue
        if low != name:
            plan.note("%s: %s is stored as %r (mailbox names are lower-case)" % (where, name,
                                                                               low))
        if len(low.encode("utf-8")) >= userlen:
            plan.problem("%s: %s is not shorter than userlen %d; skipped" % (where, name,
                                                                           userlen))
            continue
        if pw == "x" or (pw == "" and name in shadow_map):
            if name in shadow_map:
                pw = shadow_map[name]
            elif shadow is None:
                plan.note("%s: %s: the hash is in the shadow file (--shadow); imported "
                          "without a password" % (where, name))
                pw = ""
            else:
                plan.note("%s: %s is not in the shadow file; imported without a password"
                          % (where, name))
                pw = ""
        suspended = "N"
        if pw.startswith("!") and len(pw) > 2:
            pw, suspended = pw.lstrip("!"), "Y"
            plan.note("%s: %s is locked (!hash): imported suspended" % (where, name))
        if pw in ("", "*", "!", "!!", "x") or pw.startswith("*"):
            pw = ""
        elif passwords.check_stored("Crypt-Password", pw) is not None:
            plan.note("%s: %s: %s" % (where, name, passwords.check_stored("Crypt-Password", pw)))
        row = MailboxRow(low, uid_i, gid_i, home, pw, "Crypt-Password", suspended)
        old = plan.mailbox.get(low)
        if old is not None and (old.uid, old.gid, old.home) != (uid_i, gid_i, home):
            plan.note("%s: %s: users/assign says uid %s gid %s home %s (kept: qmail-lspawn "
                      "reads assign first); password taken from passwd"
                      % (where, name, old.uid, old.gid, old.home))
            plan.mailbox[low] = old._replace(password=pw, password_type="Crypt-Password",
                                             suspended=suspended)
            continue
        plan.add_mailbox(row, where)


# ======================================================================= SQL dump parser

class DumpError(Exception):
    pass


_TOKEN = re.compile(r"""
 (?P<ws>\s+)
|(?P<lc>(?:--(?=[ \t\r\n]|$)|\#)[^\n]*)
|(?P<bc>/\*.*?\*/)
|(?P<sq>'(?:[^'\\]+|\\.|'')*')
|(?P<dq>"(?:[^"\\]+|\\.|"")*")
|(?P<bq>`(?:[^`]+|``)*`)
|(?P<hex>0[xX][0-9A-Fa-f]+|[xX]'[0-9A-Fa-f]*')
|(?P<bits>0b[01]+|[bB]'[01]*')
|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
|(?P<word>[A-Za-z_$][A-Za-z0-9_$]*)
|(?P<semi>;)
|(?P<p>.)
""", re.S | re.X)

_ESC = {"0": "\0", "'": "'", '"': '"', "b": "\b", "n": "\n", "r": "\r", "t": "\t",
        "Z": "\x1a", "\\": "\\", "%": "\\%", "_": "\\_"}
_ESC_RE = re.compile(r"\\(.)|('')|(\"\")", re.S)


def _unquote(tok):
    quote = tok[0]
    body = tok[1:-1]

    def sub(m):
        if m.group(1) is not None:
            return _ESC.get(m.group(1), m.group(1))
        return quote
    return _ESC_RE.sub(sub, body)


def _hexval(tok):
    h = tok[2:] if tok[:2] in ("0x", "0X") else tok[2:-1]
    if len(h) % 2:
        h = "0" + h
    data = bytes.fromhex(h)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _tokens(text):
    """(kind, value, pos) tokens, comments and white space dropped."""
    pos, n = 0, len(text)
    match = _TOKEN.match
    while pos < n:
        m = match(text, pos)
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "p" and tok in ("'", '"', "`"):
            raise DumpError("unterminated %s at line %d" % (
                {"'": "string", '"': "string", "`": "identifier"}[tok],
                text.count("\n", 0, pos) + 1))
        if kind == "p" and tok == "/" and text.startswith("/*", pos):
            raise DumpError("unterminated comment at line %d" % (text.count("\n", 0, pos) + 1))
        if kind not in ("ws", "lc", "bc"):
            yield kind, tok, pos
        pos = m.end()


def statements(text):
    """Each SQL statement of TEXT as a list of (kind, value, pos) tokens.

    DELIMITER blocks (triggers, routines) are skipped whole."""
    stmt = []
    toks = _tokens(text)
    for kind, tok, pos in toks:
        if (not stmt and kind == "word" and tok.upper() == "DELIMITER"):
            eol = text.find("\n", pos)
            delim = text[pos + 9:eol if eol >= 0 else len(text)].strip()
            if delim == ";":
                continue
            end = re.compile(r"^DELIMITER\s*;\s*$", re.M | re.I).search(text, eol + 1)
            rest = text[end.end():] if end else ""
            # restart tokenising after the block
            for s in statements(rest):
                yield s
            return
        if kind == "semi":
            if stmt:
                yield stmt
            stmt = []
        else:
            stmt.append((kind, tok, pos))
    if stmt:
        yield stmt


def _ident(tok):
    kind, value, _ = tok
    if kind == "bq":
        return value[1:-1].replace("``", "`")
    if kind == "word":
        return value
    if kind == "dq":  # ANSI_QUOTES dumps
        return _unquote(value)
    raise DumpError("expected a name, got %r" % value)


def _table_name(toks, i):
    """(table name, next index) for `name` or `db`.`name`."""
    name = _ident(toks[i])
    i += 1
    if i < len(toks) and toks[i][1] == "." and toks[i][0] == "p":
        name = _ident(toks[i + 1])
        i += 2
    return name, i


_NOT_COLUMNS = {"PRIMARY", "KEY", "INDEX", "UNIQUE", "CONSTRAINT", "FULLTEXT", "SPATIAL",
                "FOREIGN", "CHECK", "PERIOD", "SYSTEM"}


def _create_columns(toks):
    """Column names of a CREATE TABLE statement's tokens."""
    i = 2
    while i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() in ("IF", "NOT",
                                                                              "EXISTS"):
        i += 1
    name, i = _table_name(toks, i)
    if i >= len(toks) or toks[i][1] != "(":
        return name, None  # CREATE TABLE ... LIKE / AS SELECT
    depth = 0
    cols = []
    start = True
    for kind, tok, _ in toks[i:]:
        if kind == "p" and tok == "(":
            depth += 1
            if depth == 1:
                start = True
                continue
        elif kind == "p" and tok == ")":
            depth -= 1
            if depth == 0:
                break
        elif kind == "p" and tok == "," and depth == 1:
            start = True
            continue
        if start and depth == 1:
            start = False
            if kind == "bq" or (kind == "word" and tok.upper() not in _NOT_COLUMNS):
                cols.append(_ident((kind, tok, 0)))
    return name, cols


def _value(toks, i):
    kind, tok, pos = toks[i]
    if kind in ("sq", "dq"):
        return _unquote(tok), i + 1
    if kind == "num":
        return (float(tok) if any(c in tok for c in ".eE") else int(tok)), i + 1
    if kind == "hex":
        return _hexval(tok), i + 1
    if kind == "bits":
        bits = tok[2:] if tok.startswith("0b") else tok[2:-1]
        return int(bits or "0", 2), i + 1
    if kind == "word":
        up = tok.upper()
        if up == "NULL":
            return None, i + 1
        if up in ("TRUE", "FALSE"):
            return int(up == "TRUE"), i + 1
        if tok.startswith("_") and i + 1 < len(toks) and toks[i + 1][0] in ("sq", "dq", "hex"):
            return _value(toks, i + 1)  # a charset introducer: _binary '...', _latin1'...'
    if kind == "p" and tok in "-+" and i + 1 < len(toks) and toks[i + 1][0] == "num":
        v, j = _value(toks, i + 1)
        return (-v if tok == "-" else v), j
    raise DumpError("unsupported value %r in an INSERT (only literals are read)" % tok)


def _insert(toks):
    """(table, column list or None, [row tuples]) of an INSERT/REPLACE statement."""
    i = 1
    while i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() in (
            "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"):
        i += 1
    table, i = _table_name(toks, i)
    cols = None
    if i < len(toks) and toks[i][1] == "(":
        cols = []
        i += 1
        while toks[i][1] != ")":
            if toks[i][1] != ",":
                cols.append(_ident(toks[i]))
            i += 1
        i += 1
    if i >= len(toks) or toks[i][0] != "word" or toks[i][1].upper() not in ("VALUES", "VALUE"):
        raise DumpError("INSERT INTO %s: only INSERT ... VALUES is read" % table)
    i += 1
    rows = []
    n = len(toks)
    while i < n:
        if toks[i][1] != "(":
            if toks[i][0] == "word" and toks[i][1].upper() == "ON":
                break  # ON DUPLICATE KEY UPDATE ...
            raise DumpError("INSERT INTO %s: expected '(' at line ?" % table)
        i += 1
        row = []
        while True:
            v, i = _value(toks, i)
            row.append(v)
            if toks[i][1] == ",":
                i += 1
                continue
            if toks[i][1] == ")":
                i += 1
                break
            raise DumpError("INSERT INTO %s: expected ',' or ')', got %r" % (table, toks[i][1]))
        rows.append(tuple(row))
        if i < n and toks[i][1] == ",":
            i += 1
    return table, cols, rows


def parse_dump(text, want=None):
    """{table: {"columns": [...] or None, "rows": [dict]}} from a mysqldump TEXT.

    WANT: a predicate on table names (default: every table)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = text.decode("latin-1")
    tables = {}
    for toks in statements(text):
        first = toks[0][1].upper() if toks[0][0] == "word" else ""
        try:
            if first == "CREATE" and len(toks) > 2 and toks[1][1].upper() == "TABLE":
                name, cols = _create_columns(toks)
                if want is None or want(name):
                    tables.setdefault(name, {"columns": None, "rows": []})["columns"] = cols
            elif first in ("INSERT", "REPLACE"):
                i = 1
                while toks[i][0] == "word" and toks[i][1].upper() in (
                        "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"):
                    i += 1
                name, _ = _table_name(toks, i)
                if want is not None and not want(name):
                    continue
                name, cols, rows = _insert(toks)
                t = tables.setdefault(name, {"columns": None, "rows": []})
                cols = cols or t["columns"] or DEFAULT_COLUMNS.get(name)
                if cols is None:
                    raise DumpError("INSERT INTO %s has no column list and no CREATE TABLE "
                                    "came before it" % name)
                for r in rows:
                    if len(r) != len(cols):
                        raise DumpError("INSERT INTO %s: a row has %d values for %d columns"
                                        % (name, len(r), len(cols)))
                    t["rows"].append(dict(zip(cols, r)))
        except IndexError:
            raise DumpError("statement at line %d ends too early"
                            % (text.count("\n", 0, toks[0][2]) + 1))
        except DumpError as e:
            raise DumpError("%s (statement at line %d)" % (e, text.count("\n", 0, toks[0][2])
                                                            + 1))
    return tables


# ======================================================================= vpopmail

DEFAULT_COLUMNS = {
    "vpopmail": ["pw_name", "pw_domain", "pw_passwd", "pw_uid", "pw_gid", "pw_gecos", "pw_dir",
                 "pw_shell", "pw_clear_passwd"],
    "valias": ["alias", "domain", "valias_line"],
    "aliasdomains": ["alias", "domain"],
}
VPOP_TABLES = ("vpopmail", "valias", "aliasdomains")


def _is_user_table(name, columns):
    return columns is not None and "pw_name" in columns and "pw_dir" in columns


def vpopmail_wanted(name):
    return True


def vpopmail_tables(tables):
    """(users [dict with pw_domain], valias rows, aliasdomains rows, notes) from parsed
    tables (parse_dump's or read_db's result)."""
    users, notes = [], []
    for name, t in tables.items():
        rows = t["rows"]
        cols = t["columns"] or (list(rows[0]) if rows else None)
        if name == "vpopmail" or (_is_user_table(name, cols) and name not in VPOP_TABLES):
            if cols and "pw_domain" in cols:
                users.extend(rows)
            elif cols and "pw_name" in cols:
                domain = name.replace("_", ".")
                notes.append("table %s has no pw_domain (--disable-many-domains): its users "
                             "are taken to be at %s" % (name, domain))
                for r in rows:
                    r = dict(r)
                    r["pw_domain"] = domain
                    users.append(r)
    valias = tables.get("valias", {}).get("rows", [])
    aliasdomains = tables.get("aliasdomains", {}).get("rows", [])
    return users, valias, aliasdomains, notes


def read_db(conn_args, database):
    """The vpopmail tables of a live database, in parse_dump's shape."""
    import MySQLdb
    conn = MySQLdb.connect(charset="utf8mb4", use_unicode=True, **conn_args)
    try:
        cur = conn.cursor()
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                    (database,))
        names = [r[0] for r in cur.fetchall()]
        tables = {}
        for name in names:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE "
                        "table_schema=%s AND table_name=%s ORDER BY ordinal_position",
                        (database, name))
            cols = [r[0] for r in cur.fetchall()]
            if name not in VPOP_TABLES and not _is_user_table(name, cols):
                continue
            # a table name cannot be a parameter: it comes from information_schema and is
            # quoted as an identifier
            cur.execute("SELECT * FROM `%s`.`%s`" % (database.replace("`", "``"),
                                                     name.replace("`", "``")))
            tables[name] = {"columns": cols, "rows": [dict(zip(cols, r))
                                                      for r in cur.fetchall()]}
        return tables
    finally:
        conn.close()


def read_vpopmail_mysql(path):
    """Connection arguments from vpopmail's etc/vpopmail.mysql (first line:
    host|port|user|password|database; a host starting with '/' is a unix socket)."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            f = line.split("|")
            if len(f) < 5:
                raise ImportError_("%s: expected host|port|user|password|database, got %d "
                                   "fields" % (path, len(f)))
            host, port, user, password, database = f[:5]
            args = {"user": user, "passwd": password, "db": database}
            if host.startswith("/"):
                args["unix_socket"] = host
            else:
                args["host"] = host or "localhost"
                if port and port != "0":
                    args["port"] = int(port)
            return args, database
    raise ImportError_("%s: no connection line" % path)


def _valias_line(line, qmail_dir):
    """(alias_username, alias_host) for one valias/dot-qmail line, or None to skip."""
    line = (line or "").strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("|"):
        return ("|", line[1:].strip())
    if line.startswith("/"):
        return ("/", line[1:])
    if line.startswith("."):
        return (".", line[1:])
    if line.startswith("&"):
        line = line[1:].strip()
    at = line.rfind("@")
    if at < 0:
        return (line, "")
    return (line[:at], line[at + 1:])


def _domain_home(users_dirs, domain, domains_dir):
    for d in users_dirs:
        k = d.find("/" + domain + "/")
        if k >= 0:
            return d[:k + len(domain) + 1]
    if domains_dir:
        return os.path.join(domains_dir, domain)
    return None


def plan_vpopmail(tables, config, uid, gid, domains_dir=None, qmail_dir="/var/qmail"):
    from qmailsql.core import passwords
    plan = Plan("vpopmail")
    users, valias, aliasdomains, notes = vpopmail_tables(tables)
    for n in notes:
        plan.note(n)
    userlen = config.userlen
    too_long = 0
    need = userlen
    quota = suspended = bounced = 0
    dirs = {}
    by_addr = {}
    for r in users:
        name = lower_ascii(str(r.get("pw_name") or "").strip())
        domain = lower_ascii(str(r.get("pw_domain") or "").strip())
        home = str(r.get("pw_dir") or "").rstrip("/")
        where = "vpopmail user %s@%s" % (name, domain)
        if not name or not domain:
            plan.problem("%s: blank pw_name or pw_domain; skipped" % where)
            continue
        if not home.startswith("/") or not all(_ok_text(x) for x in (name, domain, home)):
            plan.problem("%s: pw_dir %r is not an absolute path; skipped" % (where, home))
            continue
        mbox = "%s-%s" % (domain, name)
        if len(mbox.encode("utf-8")) >= userlen:
            too_long += 1
            need = max(need, len(mbox.encode("utf-8")) + 1)
            plan.problem("%s: mailbox name %r is not shorter than userlen %d; skipped"
                         % (where, mbox, userlen))
            continue
        dirs.setdefault(domain, []).append(home)
        stored = str(r.get("pw_passwd") or "")
        ptype = "Crypt-Password"
        clear = r.get("pw_clear_passwd")
        if not stored and clear:
            ptype, stored = passwords.hash_password(config.default_scheme, str(clear))
            plan.note("%s: no pw_passwd; pw_clear_passwd hashed as %s" % (where,
                                                                         config.default_scheme))
        elif stored and passwords.check_stored(ptype, stored) is not None:
            plan.note("%s: %s" % (where, passwords.check_stored(ptype, stored)))
        flags = _int(r.get("pw_gid")) or 0
        susp = "N"
        if flags & NO_POP:
            susp = "Y"
            suspended += 1
        shell = str(r.get("pw_shell") or "").strip()
        if shell and shell.upper() != "NOQUOTA":
            quota += 1
        if plan.add_mailbox(MailboxRow(mbox, uid, gid, home, stored, ptype, susp), where):
            plan.add_virtual(VirtualRow(mbox, "", name, domain), where)
            by_addr[(domain, name)] = mbox
        if flags & BOUNCE_MAIL:
            bounced += 1
            plan.add_alias(AliasRow(mbox, "", "|", "%s/bin/bouncesaying 'This address no "
                                    "longer accepts mail. (#5.1.1)'" % qmail_dir))
    if too_long:
        plan.problem("%d users need longer mailbox names: set `userlen %d` in control/sqlserver "
                     "and run qmailsql migrate --userlen %d, then import again"
                     % (too_long, need, need))
    if suspended:
        plan.note("%d users have vpopmail's NO_POP flag: imported suspended (no POP3/IMAP "
                  "login)" % suspended)
    if bounced:
        plan.note("%d users have BOUNCE_MAIL: their mail bounces through an alias row "
                  "(|bouncesaying)" % bounced)
    if quota:
        plan.note("%d users had a quota (pw_shell); qmailsql keeps no quotas" % quota)
    # valias: group the lines of each address, in order
    groups = OrderedDict()
    for r in valias:
        alias = lower_ascii(str(r.get("alias") or "").strip())
        domain = lower_ascii(str(r.get("domain") or "").strip())
        g = groups.setdefault((domain, alias), {"lines": [], "copy": False})
        g["lines"].append(str(r.get("valias_line") or ""))
        if _int(r.get("copy")):
            g["copy"] = True
    vdeliver = 0
    for (domain, alias), g in groups.items():
        where = "valias %s@%s" % (alias, domain)
        if not alias or not domain or not all(_ok_text(x) for x in [alias, domain] + g["lines"]):
            plan.problem("%s: blank alias or domain, or not text; skipped" % where)
            continue
        lines = [_valias_line(l, qmail_dir) for l in g["lines"]]
        lines = [l for l in lines if l is not None]
        if not lines:
            plan.problem("%s: no delivery lines; skipped" % where)
            continue
        if any("vdelivermail" in l[1] for l in lines):
            vdeliver += 1
        mbox = by_addr.get((domain, alias))
        if mbox is not None:
            owner, ext = mbox, ""
            if g["copy"]:
                lines.append((".", "/Maildir/"))
        else:
            home = _domain_home(dirs.get(domain, []), domain, domains_dir)
            if home is None:
                plan.problem("%s: no user at %s shows where its domain directory is; give "
                             "--domains-dir; skipped" % (where, domain))
                continue
            if len(domain.encode("utf-8")) >= userlen:
                plan.problem("%s: domain mailbox name %r is not shorter than userlen %d; "
                             "skipped" % (where, domain, userlen))
                continue
            if not plan.add_mailbox(MailboxRow(domain, uid, gid, home, "", "Crypt-Password",
                                               "N"), "domain %s" % domain):
                continue
            owner, ext = domain, alias
            plan.add_virtual(VirtualRow(domain, alias, alias, domain), where)
        for au, ah in lines:
            if au == "" and ah == "":
                continue
            plan.add_alias(AliasRow(owner, ext, au, ah))
    if vdeliver:
        plan.note("%d valias addresses run vdelivermail, which needs vpopmail: replace those "
                  "lines (qmailsql alias add ...)" % vdeliver)
    # alias domains: the real domain's addresses again
    for r in aliasdomains:
        alias_dom = lower_ascii(str(r.get("alias") or "").strip())
        real = lower_ascii(str(r.get("domain") or "").strip())
        if not alias_dom or not real:
            continue
        rows = [v for (h, _), v in list(plan.virtual.items()) if h == real]
        for v in rows:
            plan.add_virtual(v._replace(virtual_host=alias_dom), "aliasdomain %s" % alias_dom)
    if users or groups:
        plan.note("domain .qmail-default files (catch-alls, bounce-no-mailbox) are not in the "
                  "vpopmail tables: look at each ~vpopmail/domains/DOMAIN/.qmail-default and "
                  "add a catch-all (qmailsql virtual add @DOMAIN --user ...) where needed")
    return plan


# ======================================================================= compare and apply

class Outcome:
    def __init__(self):
        self.new = {"mailbox": [], "alias": [], "virtual": []}
        self.same = {"mailbox": 0, "alias": 0, "virtual": 0}
        self.conflict = {"mailbox": [], "alias": [], "virtual": []}


def compare(plan, directory):
    """Outcome: which planned rows are new, already there, or conflict with the DB."""
    out = Outcome()
    names = list(plan.mailbox)
    have = {}
    for i in range(0, len(names), BATCH):
        chunk = names[i:i + BATCH]
        for row in directory.query(
                "SELECT username, uid, gid, home, password, password_type, suspended FROM "
                "mailbox WHERE username IN (" + ",".join(["%s"] * len(chunk)) + ")", chunk):
            have.setdefault(row[0].lower(), row)
    for key, r in plan.mailbox.items():
        old = have.get(key)
        if old is None:
            out.new["mailbox"].append(r)
        elif (old[0], int(old[1]), int(old[2]), old[3]) == (r.username, r.uid, r.gid, r.home) \
                and (not r.password or (old[4], old[5]) == (r.password, r.password_type)) \
                and (old[6] or "N") == r.suspended:
            out.same["mailbox"] += 1
        else:
            out.conflict["mailbox"].append((r, old))
    users = list(dict.fromkeys(a.username for a in plan.alias))
    existing = set()
    for i in range(0, len(users), BATCH):
        chunk = users[i:i + BATCH]
        for row in directory.query(
                "SELECT username, alias, alias_username, alias_host FROM alias WHERE username "
                "IN (" + ",".join(["%s"] * len(chunk)) + ")", chunk):
            existing.add((row[0].lower(), row[1], row[2], row[3]))
    for a in plan.alias:
        if (a.username.lower(), a.alias, a.alias_username, a.alias_host) in existing:
            out.same["alias"] += 1
        else:
            out.new["alias"].append(a)
    hosts = list(dict.fromkeys(h for h, _ in plan.virtual))
    vhave = {}
    for i in range(0, len(hosts), BATCH):
        chunk = hosts[i:i + BATCH]
        for row in directory.query(
                "SELECT username, ext, virtual_username, virtual_host FROM virtual WHERE "
                "virtual_host IN (" + ",".join(["%s"] * len(chunk)) + ")", chunk):
            vhave.setdefault((row[3].lower(), row[2].lower()), row)
    for key, v in plan.virtual.items():
        old = vhave.get(key)
        if old is None:
            out.new["virtual"].append(v)
        elif (old[0], old[1] or "") == (v.username, v.ext):
            out.same["virtual"] += 1
        else:
            out.conflict["virtual"].append((v, old))
    return out


def _insert_rows(cur, table, columns, rows, progress, done, total, started):
    marks = "(" + ",".join(["%s"] * len(columns)) + ")"
    for i in range(0, len(rows), BATCH):
        chunk = rows[i:i + BATCH]
        params = [v for r in chunk for v in r]
        cur.execute("INSERT INTO `%s` (%s) VALUES %s" % (table, ", ".join(columns),
                                                         ",".join([marks] * len(chunk))),
                    params)
        done += len(chunk)
        if progress is not None:
            progress.update("import", done, total, started)
    return done


def apply(plan, outcome, config, replace=False, progress=None):
    """Write OUTCOME's new rows (and with REPLACE its conflicts) in one transaction."""
    from qmailsql.core import db
    conn = db.connect(config, config.write_server)
    total = (sum(len(v) for v in outcome.new.values())
             + (sum(len(v) for v in outcome.conflict.values()) if replace else 0))
    started = time.monotonic()
    try:
        conn.autocommit(False)
        cur = conn.cursor()
        done = 0
        if replace:
            for r, _ in outcome.conflict["mailbox"]:
                cur.execute("DELETE FROM mailbox WHERE username=%s", (r.username,))
            for v, _ in outcome.conflict["virtual"]:
                cur.execute("DELETE FROM virtual WHERE virtual_host=%s AND virtual_username=%s",
                            (v.virtual_host, v.virtual_username))
        mrows = list(outcome.new["mailbox"]) + ([r for r, _ in outcome.conflict["mailbox"]]
                                                if replace else [])
        done = _insert_rows(cur, "mailbox", MailboxRow._fields, mrows, progress, done, total,
                            started)
        vrows = list(outcome.new["virtual"]) + ([v for v, _ in outcome.conflict["virtual"]]
                                                if replace else [])
        done = _insert_rows(cur, "virtual", VirtualRow._fields, vrows, progress, done, total,
                            started)
        done = _insert_rows(cur, "alias", AliasRow._fields, outcome.new["alias"], progress,
                            done, total, started)
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
        except Exception:
            pass
        raise
    finally:
        if progress is not None:
            progress.done()
        conn.close()


# ======================================================================= output

def _show_mailbox(r):
    return "mailbox %s  uid %s gid %s home %s  %s%s" % (
        r.username, r.uid, r.gid, r.home,
        ("%s" % r.password_type) if r.password else "no password",
        "  suspended" if r.suspended == "Y" else "")


def _show_alias(a):
    if a.alias_username in (".", "/", "|"):
        line = a.alias_username + a.alias_host
    else:
        line = "&" + a.alias_username + ("@" + a.alias_host if a.alias_host else "")
    return "alias %s %r -> %s" % (a.username, a.alias, line)


def _show_virtual(v):
    return "virtual %s@%s -> %s%s" % (v.virtual_username or "", v.virtual_host, v.username,
                                      ("-" + v.ext) if v.ext else "")


def report(plan, outcome, applied, out=print, show=100, replace=False):
    shown = 0
    for kind, fmt in (("mailbox", _show_mailbox), ("virtual", _show_virtual),
                      ("alias", _show_alias)):
        for r in outcome.new[kind]:
            if show is None or shown < show:
                out("+ " + fmt(r))
            shown += 1
        for r, old in outcome.conflict[kind]:
            if show is None or shown < show:
                out("%s %s  (the DB has %s)" % ("~" if replace else "!", fmt(r),
                                                ", ".join(str(x) for x in old[:4])))
            shown += 1
    if show is not None and shown > show:
        out("... and %d more changes (--show 0 lists them all)" % (shown - show))
    for n in plan.notes:
        out("note: " + n)
    for p in plan.problems:
        out("not imported: " + p)
    parts = []
    for kind in ("mailbox", "virtual", "alias"):
        parts.append("%s %d new, %d unchanged, %d conflict%s" % (
            kind, len(outcome.new[kind]), outcome.same[kind], len(outcome.conflict[kind]),
            "" if len(outcome.conflict[kind]) == 1 else "s"))
    state = ("applied" if applied else "dry run: nothing written, --apply writes")
    out("import %s (%s): %s; %d not imported, %d notes" % (
        plan.what, state, "; ".join(parts), len(plan.problems), len(plan.notes)))
    if any(outcome.conflict.values()) and not replace:
        out("conflicting rows keep what the DB has; --replace overwrites them")
    if outcome.new["virtual"] and applied:
        out("next: qmailsql sync  (control/virtualdomains and rcpthosts for the new domains)")


# ======================================================================= commands

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImportError_("cannot read %s: %s" % (path, e.strerror))


def _finish(args, q, plan):
    from qmailsql.admin.doctor import Progress
    outcome = compare(plan, q.directory)
    replace = getattr(args, "replace", False)
    if args.apply:
        import MySQLdb
        try:
            apply(plan, outcome, q.config, replace=replace, progress=Progress())
        except MySQLdb.Error as e:
            report(plan, outcome, False, show=(args.show or None), replace=replace)
            sys.stderr.write("qmailsql import: writing failed, nothing was changed (one "
                             "transaction, rolled back): %s\n" % (e,))
            return 111
        try:
            from qmailsql.admin import tables as admin
            admin.flush_daemon(q.config, warn=lambda m: None)
        except Exception:
            pass
    report(plan, outcome, args.apply, show=(args.show or None), replace=replace)
    return 1 if plan.problems else 0


def cmd_import_assign(args):
    from qmailsql.cli import session
    if not args.file and not args.passwd:
        sys.stderr.write("qmailsql import assign: give users/assign FILE and/or --passwd FILE\n")
        return 100
    try:
        entries, problems = parse_assign(_read(args.file)) if args.file else ([], [])
        passwd = _read(args.passwd) if args.passwd else None
        shadow = _read(args.shadow) if args.shadow else None
    except ImportError_ as e:
        sys.stderr.write("qmailsql import: %s\n" % e)
        return 111
    with session(args) as q:
        plan = plan_assign(entries, q.config, q.directory, passwd, shadow, args.min_uid,
                           args.max_uid)
        for lineno, msg in problems:
            plan.problem("line %d: %s" % (lineno, msg))
        return _finish(args, q, plan)


def cmd_import_vpopmail(args):
    from qmailsql.core import config as configmod
    from qmailsql.cli import session
    if bool(args.dump) == bool(args.from_db):
        sys.stderr.write("qmailsql import vpopmail: give DUMP.sql or --from-db (one of them)\n")
        return 100
    uid, gid = args.uid, args.gid
    if uid is None or gid is None:
        try:
            pw = pwd.getpwnam("vpopmail")
            uid = pw.pw_uid if uid is None else uid
            gid = pw.pw_gid if gid is None else gid
        except KeyError:
            sys.stderr.write("qmailsql import vpopmail: no `vpopmail` user here; give --uid and "
                             "--gid (the owner of the vpopmail domain directories)\n")
            return 100
    domains_dir = args.domains_dir
    if domains_dir is None:
        try:
            domains_dir = os.path.join(pwd.getpwnam("vpopmail").pw_dir, "domains")
        except KeyError:
            pass
    try:
        if args.dump:
            tables = parse_dump(_read(args.dump), vpopmail_wanted)
        else:
            conn_args, database = _db_args(args)
            tables = read_db(conn_args, database)
    except (ImportError_, DumpError) as e:
        sys.stderr.write("qmailsql import vpopmail: %s\n" % e)
        return 111
    except Exception as e:  # MySQLdb errors from --from-db
        sys.stderr.write("qmailsql import vpopmail: reading the vpopmail database: %s\n" % e)
        return 111
    with session(args) as q:
        plan = plan_vpopmail(tables, q.config, uid, gid, domains_dir,
                             configmod.qmail_dir(getattr(args, "qmail_dir", None)))
        return _finish(args, q, plan)


def _db_args(args):
    if args.db_host or args.db_socket or args.db_user:
        conn = {"user": args.db_user or "vpopmail", "db": args.db_name}
        if args.db_socket:
            conn["unix_socket"] = args.db_socket
        else:
            conn["host"] = args.db_host or "localhost"
            if args.db_port:
                conn["port"] = args.db_port
        if args.db_password_file:
            conn["passwd"] = _read(args.db_password_file).split(b"\n")[0].decode()
        return conn, args.db_name
    path = args.vpopmail_mysql
    if path is None:
        try:
            path = os.path.join(pwd.getpwnam("vpopmail").pw_dir, "etc", "vpopmail.mysql")
        except KeyError:
            raise ImportError_("no vpopmail user to find etc/vpopmail.mysql: give "
                               "--vpopmail-mysql FILE or --db-host/--db-socket")
    try:
        return read_vpopmail_mysql(path)
    except OSError as e:
        raise ImportError_("cannot read %s: %s" % (path, e.strerror))


def add_commands(sub, parser_class=None):
    """`qmailsql import assign|vpopmail` on the `qmailsql` subparsers SUB."""
    s = sub.add_parser("import", help="move users from users/assign, passwd or vpopmail into "
                       "the DB (dry run unless --apply)",
                       description="Build mailbox, alias and virtual rows from another user "
                       "database. Prints what would change (new, unchanged, conflicting rows) "
                       "and what cannot be expressed; --apply writes it in one transaction. "
                       "Exit 0, or 1 when something could not be imported.")
    a = s.add_subparsers(dest="source", metavar="SOURCE")
    a.required = True

    from qmailsql.cli import admin_options

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
    p.add_argument("--min-uid", type=int, default=MIN_UID, help="lowest uid taken from "
                   "--passwd (default %d)" % MIN_UID)
    p.add_argument("--max-uid", type=int, default=MAX_UID, help="highest uid taken from "
                   "--passwd (default %d)" % MAX_UID)
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
