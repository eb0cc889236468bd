"""Control files and users/cdb: virtualdomains / rcpthosts / morercpthosts(.cdb) vs
what `qmailsql sync` would write, virtual hosts in control/locals, and users/cdb
(users/assign) entries that qmail-lspawn consults before qmail-getpw."""
import os

from qmailsql.admin import sync
from qmailsql.core.users import UsersTable, parse_assign, ulong
from qmailsql.core import cdb

from .common import effective, few, passwd_entry, q, sql_str


def users_table(ctx):
    """users/cdb and users/assign as qmail-lspawn reads them (Shadows), or None."""
    tables = []
    cdb_path = os.path.join(ctx.qmail_dir, "users", "cdb")
    assign_path = os.path.join(ctx.qmail_dir, "users", "assign")
    try:
        tables.append(UsersTable.from_cdb(cdb.Reader.open(cdb_path).items(), "users/cdb"))
    except (FileNotFoundError, NotADirectoryError):
        pass
    except PermissionError as e:
        ctx.no_access(cdb_path, e, "users/cdb entries that shadow DB mailboxes")
    except Exception as e:  # a corrupt cdb: qmail-lspawn defers everything
        ctx.add("users-cdb-shadow", "error", "%s cannot be read (%s): qmail-lspawn defers "
                 "every delivery (\"Trouble reading users/cdb\")" % (cdb_path, e),
                 "rebuild it: qmail-newu, or remove it: rm %s" % q(cdb_path))
    try:
        with open(assign_path, "rb") as f:
            entries, _ = parse_assign(f.read())
        tables.append(UsersTable(entries, "users/assign"))
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:
        ctx.no_access(assign_path, e, "users/assign entries that shadow DB mailboxes")
    if not tables:
        return None
    return Shadows(tables)


def check_bypass(ctx, config, users_table, entry_rows, entry_accounts):
    """users/cdb (users/assign) entries whose account is not the DB's (uid and home of
    the mailbox row, or of the passwd entry), although the DB has something for that
    name: qmail-local then delivers as stock qmail would, skipping the DB's rows."""
    assign_path = os.path.join(ctx.qmail_dir, "users", "assign")
    done = set()
    for source, e in users_table.sourced_entries():
        spec = e.spec()
        lname = e.user.lower()
        rows = entry_rows.get(lname, 0)
        mailbox = entry_accounts.get(lname)
        if spec in done or (not rows and mailbox is None):
            continue
        done.add(spec)
        uid = ulong(e.uid)
        if mailbox is not None:
            name, acct_uid, acct_home = mailbox
            whose = "not the DB's account %r (mailbox uid %s, home %s)" % (
                name, acct_uid, acct_home)
        else:
            pw = passwd_entry(e.user) if config.system_users else None
            acct_uid, acct_home = (pw.pw_uid, pw.pw_dir) if pw else (None, None)
            whose = ("not a DB account (no mailbox row%s)" % (
                ", and the passwd entry has uid %s, home %s" % (acct_uid, acct_home)
                if pw else ""))
        if (acct_uid, acct_home) == (uid, e.home):
            continue  # the DB's own account: its rows are delivered
        when = "" if source == "users/cdb" else " (once qmail-newu has run)"
        skipped = ("; the %d alias row%s of %r are not used" % (
            rows, "" if rows == 1 else "s", e.user)) if rows else ""
        ctx.add("users-cdb-bypass", "error" if rows else "warning",
                 "%s entry %s delivers as user %r uid %d home %s, which is %s: "
                 "qmail-local delivers it as stock qmail would%s%s"
                 % (source, spec, e.user, uid, e.home, whose, skipped, when),
                 "to deliver it from the DB instead: qmailsql import assign %s --apply, "
                 "delete the line from %s and run qmail-newu%s" % (
                     q(assign_path), q(assign_path),
                     "; to keep the entry: DELETE FROM alias WHERE username=%s;"
                     % sql_str(e.user) if rows else
                     "; or give the entry the mailbox's uid and home"))


def report_shadows(ctx, shadows):
    cdb_path = os.path.join(ctx.qmail_dir, "users", "cdb")
    assign_path = os.path.join(ctx.qmail_dir, "users", "assign")
    for (source, key, answer), names in sorted(shadows.items()):
        more = (" and %d more" % (len(names) - 1)) if len(names) > 1 else ""
        when = ("" if source == "users/cdb" else
                " (once qmail-newu turns users/assign into users/cdb)")
        ctx.add("users-cdb-shadow", "error",
                 "%s entry %s (user %s) takes mail for DB mailbox %r%s before qmail-getpw "
                 "is asked%s: the DB row is ignored"
                 % (source, key, answer, names[0], more, when),
                 "move it into the DB (qmailsql import assign %s --apply), delete the line "
                 "from %s and run qmail-newu (no lines left: rm %s %s)"
                 % (q(assign_path), q(assign_path), q(assign_path), q(cdb_path)))


def check_control_files(ctx, directory):
    try:
        plan = sync.plan(ctx.qmail_dir, directory)
    except OSError as e:
        ctx.no_access(e.filename or os.path.join(ctx.qmail_dir, "control"), e,
                       "whether the control files follow the DB")
        return
    except Exception as e:
        ctx.add("control-stale", "error", "cannot compute what `qmailsql sync` would "
                 "write: %s" % e, "fix the rows named, then qmailsql sync")
        return
    for name, path, new, old in plan.files:
        if name.endswith(".cdb"):
            want = {k for k, _ in cdb.Reader(new).items()} if new else set()
            try:
                have = {k for k, _ in cdb.Reader(old).items()} if old else set()
            except Exception:
                have = {None}
            want = {k.decode("utf-8", "replace") for k in want}
            have = {k.decode("utf-8", "replace") if k is not None else "<corrupt>"
                    for k in have}
        else:
            want, have = effective(new), effective(old)
        if want == have:
            continue
        missing, extra = sorted(want - have), sorted(have - want)
        parts = []
        if missing:
            parts.append("lacks %s" % few(missing))
        if extra:
            parts.append("still has %s" % few(extra))
        ctx.add("control-stale", "error",
                 "control/%s is out of step with the DB: it %s%s"
                 % (name, " and ".join(parts),
                    ": mail for those domains is refused or not treated as virtual"
                    if name == "virtualdomains" else ": qmail-smtpd accepts the wrong "
                    "domains"),
                 "qmailsql --qmail-dir %s sync" % q(ctx.qmail_dir))


def check_locals(ctx, virtual_hosts):
    """A virtual host also in control/locals is delivered as local: qmail-send reads
    locals before virtualdomains, so u@host goes to the local user u."""
    path = os.path.join(ctx.qmail_dir, "control", "locals")
    try:
        with open(path, "rb") as f:
            local = effective(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        ctx.no_access(path, e, "virtual domains that control/locals makes local")
        return
    for host in sorted(local & virtual_hosts):
        ctx.add("control-locals", "error",
                 "%s is a virtual domain in the DB but also in control/locals: qmail-send "
                 "treats it as local, so u@%s goes to the local user u, not the virtual "
                 "table" % (host, host),
                 "remove the line %s from %s (then svc -h /service/qmail-send)"
                 % (host, path))


class Shadows:
    """users/cdb and users/assign, asked as qmail-lspawn asks: (source, key, answer) or None."""

    def __init__(self, tables):
        self.tables = tables

    def sourced_entries(self):
        for table in self.tables:
            for e in list(table.simple.values()) + list(table.wild.values()):
                yield table.source, e

    def entries(self):
        return (e for _, e in self.sourced_entries())

    def shadowing(self, lname):
        for table in self.tables:
            hit = table.lookup_entry(lname)
            if hit is not None:
                entry, fields = hit
                return (table.source, entry.spec(), "%s uid %s home %s" % (
                    fields[0], fields[1], fields[3]))
        return None
