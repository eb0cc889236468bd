"""The Plan every import builds (mailbox, alias and virtual rows, plus what could
not be expressed), its comparison with the DB (new, unchanged, conflicting rows), its
application in one transaction and its report."""
import os
import time
from collections import OrderedDict, namedtuple

from qmailsql.core import db, resolve
from qmailsql.core.resolve import Refusal

BATCH = 500


class ImportError_(Exception):
    """The input cannot be read at all (usage-level trouble)."""


def read_file(path):
    """PATH's bytes, or ImportError_ saying why not."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImportError_("cannot read %s: %s" % (path, e.strerror))


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


def int_field(value):
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def ok_text(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in s and "\n" not in s


# ---------------------------------------------------------------- simulate qmail-getpw

def simulator(config, rows):
    """A resolve.Resolver over ROWS ({lower name: (name, uid, gid, home)}), /etc/passwd per
    system_users; mailbox homes are taken as usable (they may not exist yet)."""

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


def answer(sim, local):
    try:
        d = sim.getpw(os.fsencode(local))
    except Refusal as r:
        return ("refusal", r.code)
    return (os.fsdecode(d.user), str(d.uid), str(d.gid), os.fsdecode(d.home),
            os.fsdecode(d.dash), os.fsdecode(d.ext))


def alias_pair(line, qmail_dir):
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
