"""`qmailsql import assign`: users/assign (qmail-users(5), parsed as qmail-newu(8)
does; see qmailsql.core.users) -> mailbox and alias rows.

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
"""
import os

from qmailsql.core.hotpath import candidates
from qmailsql.core.users import UsersTable, decode, lower_ascii
from qmailsql.admin.importers.passwd import MAX_UID, MIN_UID, plan_passwd
from qmailsql.admin.importers.plan import (AliasRow, MailboxRow, Plan, alias_pair, answer,
                                          existing_mailboxes, int_field, ok_text, simulator)


def plan_assign(entries, config, directory=None, passwd=None, shadow=None, min_uid=MIN_UID,
                max_uid=MAX_UID):
    """The Plan for users/assign ENTRIES (and/or PASSWD/SHADOW text)."""
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
        uid, gid = int_field(e.uid), int_field(e.gid)
        if uid is None or gid is None or not e.home.startswith("/"):
            plan.problem("%s: %s: uid and gid must be numbers and home absolute; skipped"
                         % (e.where(), e.spec()))
            continue
        if uid == 0:
            plan.problem("%s: %s: uid 0 never gets mail through qmail-getpw (qmail-lspawn "
                         "let users/cdb deliver as root); skipped" % (e.where(), e.spec()))
            continue
        if not all(ok_text(x) for x in (e.local, e.user, e.home, e.ext)):
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
        plan_passwd(plan, passwd, shadow, min_uid, max_uid, userlen, have_assign=bool(entries))
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
        sim = simulator(config, rows)
        bad = set()
        for e, local in probes:
            hit = table.lookup_entry(local)
            if hit is None or hit[0] is not e or e in bad:
                continue
            want = tuple(str(x) for x in hit[1])
            got = answer(sim, local)
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
    lines = [alias_pair(l, None) for l in decode(data).split("\n")]
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
