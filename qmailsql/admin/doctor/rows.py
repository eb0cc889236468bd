"""The rows: virtual, alias and mailbox, each streamed once. Row rules are core's
(virtual.Checker, aliases.check_row, resolve.mailbox_row_fault, passwords.well_formed);
what one scan learns for another is returned and passed on explicitly."""
import os
from dataclasses import dataclass, field

from qmailsql.core import aliases, passwords, virtual
from qmailsql.core.resolve import ALIAS_USER, mailbox_row_fault
from qmailsql.core.virtual import FORWARD_USER

from .control import report_shadows
from .common import STAT_CACHE_MAX, passwd_entry, passwd_exists, q, sql_str


@dataclass
class VirtualFacts:
    targets: dict = field(default_factory=dict)  # local user (lower) -> one address
    hosts: set = field(default_factory=set)      # virtual hosts (lower)


@dataclass
class AliasFacts:
    levels: dict = field(default_factory=dict)      # username (lower) -> alias values
    entry_rows: dict = field(default_factory=dict)  # users/cdb entry user -> alias rows


@dataclass
class MailboxFacts:
    alias_found: bool = False
    targets_found: set = field(default_factory=set)   # virtual targets with a mailbox row
    entry_accounts: dict = field(default_factory=dict)  # entry user -> (name, uid, home)


def scan_virtual(ctx, config, tables, present, estimate):
    facts = VirtualFacts()
    checker = virtual.Checker(config)
    sql = tables.select("virtual", ["id", "username", "ext", "virtual_username",
                                    "virtual_host"], present)
    for batch in tables.stream(sql, "virtual", estimate):
        for rid, username, ext, vuser, vhost in batch:
            row = virtual.Row(username, ext, vuser, vhost)
            problems = checker.row(rid, row)
            for p in problems:
                ctx.add(p.check, p.severity, p.what, p.fix)
            if problems and problems[0].check == "virtual-blank-username":
                continue
            uname = username.strip().lower()
            if uname == FORWARD_USER and config.magic_forwarding:
                continue
            facts.targets.setdefault(uname, "%s@%s" % (vuser or "", vhost or ""))
    for p in checker.finish():
        ctx.add(p.check, p.severity, p.what, p.fix)
    facts.hosts = {r.virtual_host.lower() for r in checker.rows if r.virtual_host}
    return facts


def scan_alias(ctx, tables, present, estimate, entry_users):
    """ENTRY_USERS: the users (lower) of users/cdb entries, whose alias rows are counted."""
    facts = AliasFacts()
    levels = facts.levels
    sql = tables.select("alias", ["id", "username", "alias", "alias_username", "alias_host"],
                        present)
    for batch in tables.stream(sql, "alias", estimate):
        for row in batch:
            username = row[1]
            if username:
                lname = username.lower()
                if len(levels) < STAT_CACHE_MAX:
                    levels.setdefault(lname, set()).add(row[2] or "")
                if lname in entry_users:
                    facts.entry_rows[lname] = facts.entry_rows.get(lname, 0) + 1
            p = aliases.check_row(row)
            if p is not None:
                ctx.add(p.check, p.severity, p.what, p.fix)
    return facts


def scan_mailbox(ctx, config, tables, present, estimate, homes, *, users_table,
                 virtual_targets, alias_levels, entry_users, case_sensitive):
    """The mailbox rows: names, passwords, uid/gid/home (homes.check), the alias rows'
    dot-qmail shadows (ALIAS_LEVELS, not changed), users/cdb shadows."""
    facts = MailboxFacts()
    userlen = config.userlen
    add = ctx.add
    seen_case = {} if case_sensitive else None
    forward_user = None
    check_stored = passwords.check_stored
    well_formed = passwords.well_formed
    shadows = {}
    levels_left = dict(alias_levels)
    sql = tables.select("mailbox", ["username", "uid", "gid", "home", "password",
                                    "password_type"], present)
    for batch in tables.stream(sql, "mailbox", estimate):
        for name, uid, gid, home, pw, ptype in batch:
            if not name or not name.strip():
                add("mailbox-misconfigured", "error",
                    "a mailbox row has a blank username (uid=%r home=%r): nobody can get "
                    "its mail (\"MySQL misconfiguration\")" % (uid, home),
                    "DELETE FROM mailbox WHERE username=%s;" % sql_str(name or ""))
                continue
            lname = name.lower()
            if lname == ALIAS_USER:
                facts.alias_found = True
            elif lname == FORWARD_USER:
                forward_user = name
            if lname in virtual_targets:
                facts.targets_found.add(lname)
            if seen_case is not None:
                other = seen_case.get(lname)
                if other is not None:
                    a, b = sorted((other, name), key=lambda n: (n != lname, n))
                    taken = ("takes %r; %r never gets mail" % (a, b) if a == lname else
                             "may take either, so one of them never gets mail")
                    add("username-case", "error",
                        "mailbox rows %r and %r differ only in case: qmail-getpw "
                        "lower-cases the address and %s" % (a, b, taken),
                        "DELETE FROM mailbox WHERE username=%s COLLATE utf8mb4_bin;  "
                        "(after merging the two) and use a case-insensitive collation: "
                        "ALTER TABLE mailbox MODIFY username VARCHAR(%d) NOT NULL COLLATE "
                        "utf8mb4_general_ci;" % (sql_str(b), userlen))
                else:
                    seen_case[lname] = name
            n = len(name) if name.isascii() else len(name.encode("utf-8"))
            if n >= userlen:
                add("username-too-long", "error",
                    "mailbox %r is %d bytes long, not shorter than userlen %d: qmail-getpw "
                    "never tries it" % (name, n, userlen),
                    "set `userlen %d` in %s and run qmailsql migrate --userlen %d"
                    % (n + 1, ctx.sqlserver_path, n + 1))
            if users_table is not None:
                hit = users_table.shadowing(lname)
                if hit is not None:
                    shadows.setdefault(hit, []).append(name)
            if pw and not well_formed(ptype, pw):
                problem = check_stored(ptype, pw)  # slow (runs crypt): suspects only
                if problem is not None:
                    add("password-type", "warning", "mailbox %r: %s: checkpassword always "
                        "refuses it" % (name, problem),
                        "qmailsql passwd %s  (or fix password_type: Password, "
                        "Crypt-Password or MySQL-Password)" % q(name))
            fault = mailbox_row_fault(name, uid, gid, home)
            if fault is not None:
                add("mailbox-misconfigured", "error",
                    "mailbox %r has uid=%r gid=%r home=%r: qmail needs numbers and an "
                    "absolute home (%s); its mail is deferred" % (name, uid, gid, home, fault),
                    "UPDATE mailbox SET uid=..., gid=..., home='/...' WHERE username=%s;"
                    % sql_str(name))
                continue
            uid_i, gid_i = int(uid), int(gid)
            if uid_i == 0:
                add("uid-zero", "error", "mailbox %r has uid 0: qmail never delivers to "
                    "root (its mail goes to the alias user) and it can never log in" % name,
                    "UPDATE mailbox SET uid=<a real uid> WHERE username=%s;  (and chown "
                    "its home)" % sql_str(name))
                continue
            if lname in levels_left:
                check_row_files(ctx, name, home, levels_left.pop(lname))
            if lname in entry_users:
                facts.entry_accounts[lname] = (name, uid_i, home)
            homes.check(name, uid_i, gid_i, home)
    if forward_user is not None and config.magic_forwarding:
        ctx.add("virtual-forward-user", "error",
                "magic_forwarding is on and there is a mailbox named %r: the FAQ says DO "
                "NOT create a user named forward" % forward_user,
                "DELETE FROM mailbox WHERE username=%s;  (or turn magic_forwarding off)"
                % sql_str(forward_user))
    report_shadows(ctx, shadows)
    homes.flush()
    if config.system_users:  # rows of /etc/passwd users are delivered the same way
        for lname, levels in sorted(levels_left.items()):
            pw = passwd_entry(lname)
            if pw is not None:
                check_row_files(ctx, pw.pw_name, pw.pw_dir, levels)
    return facts


def check_row_files(ctx, name, home, levels):
    """Rows of NAME at LEVELS whose delivery the qmail-local wrapper defers because a
    dot-qmail file in HOME would be read instead (aliases.shadowing_file)."""
    for level in sorted(levels):
        dash = b"-" if level else b""
        try:
            hit = aliases.shadowing_file(home, dash, level.encode("utf-8"))
        except OSError:
            continue  # an unreadable home: the home checks say so
        if hit is None:
            continue
        path, owner = (os.fsdecode(p) if p else None for p in hit)
        address = name + ("-" + level if level else "")
        ctx.add("alias-shadowed", "error",
                 "alias rows for %s (user %r, alias %r) are never delivered: %s exists "
                 "and stock qmail-local would read it instead%s, so the qmail-local "
                 "wrapper defers that mail (111)" % (
                     address, name, level, path,
                     " (%s makes the wrapper hand it the address's own extension, to "
                     "keep stock's envelope sender)" % owner if owner else ""),
                 "move each line of %s into the alias table (qmailsql alias add %s "
                 "'LINE' --ext %s) and remove the file, or delete the rows: DELETE FROM "
                 "alias WHERE username=%s AND alias=%s;" % (
                     path, q(name), q(level) if level else "''", sql_str(name),
                     sql_str(level)))


def check_virtual_targets(ctx, config, targets, found):
    """Virtual rows whose local user exists nowhere. TARGETS: {local user (lower):
    one address}; FOUND: the local users that have a mailbox row."""
    for name, addr in sorted(targets.items()):
        if name in found:
            continue
        if config.system_users and passwd_exists(name):
            continue
        ctx.add("virtual-target-missing", "warning",
                 "virtual address %s points at local user %r, which has no mailbox row%s: "
                 "its mail goes to the alias user (and bounces)"
                 % (addr, name, " and no /etc/passwd account" if config.system_users
                    else ""),
                 "qmailsql mailbox add %s ...  (or correct the virtual row's username)"
                 % q(name))


def check_alias_user(ctx, config, alias_found):
    if alias_found:
        return
    if config.system_users and passwd_exists(ALIAS_USER):
        return
    home = os.path.join(ctx.qmail_dir, "alias")
    ctx.add("alias-user-missing", "error",
             "no alias user: neither a mailbox row %r nor%s an /etc/passwd account: mail "
             "for unknown addresses gets exit 116 and postmaster/MAILER-DAEMON have nowhere "
             "to go" % (ALIAS_USER, "" if config.system_users else " (system_users "
                        "is off)"),
             "useradd -d %s -s /bin/false alias  (qmail's INSTALL.ids), or: INSERT INTO "
             "mailbox (username, uid, gid, home, password, suspended) VALUES ('alias', "
             "<uid>, <gid>, %s, '', 'N');  and mkdir %s owned by that uid"
             % (q(home), sql_str(home), q(home)))
