"""/etc/passwd-style accounts (and /etc/shadow hashes) as mailbox rows, for
`qmailsql import assign --passwd FILE [--shadow FILE]`."""
from qmailsql.core import passwords
from qmailsql.core.users import decode
from qmailsql.admin.importers.plan import MailboxRow, int_field

MIN_UID, MAX_UID = 1000, 60000


def parse_passwd(text):
    """[(name, password field, uid, gid, home)] of /etc/passwd-style TEXT."""
    out = []
    for lineno, line in enumerate(decode(text).split("\n"), 1):
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
    for line in decode(text).split("\n"):
        f = line.split(":")
        if len(f) >= 2 and f[0]:
            out.setdefault(f[0], f[1])
    return out


def plan_passwd(plan, passwd, shadow, min_uid, max_uid, userlen, have_assign):
    shadow_map = parse_shadow(shadow) if shadow is not None else {}
    for lineno, name, f in parse_passwd(passwd):
        where = "passwd line %d" % lineno
        if name is None:
            plan.problem("%s: not 7 colon-separated fields: %r" % (where, f[:60]))
            continue
        pw, uid, gid, home = f
        uid_i, gid_i = int_field(uid), int_field(gid)
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
