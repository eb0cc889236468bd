"""vpopmail (its MySQL tables) -> mailbox, alias and virtual rows.

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
from collections import OrderedDict

import MySQLdb

from qmailsql.core import passwords
from qmailsql.core.users import lower_ascii
from qmailsql.admin.importers.mysqldump import parse_dump
from qmailsql.admin.importers.plan import (AliasRow, ImportError_, MailboxRow, Plan, VirtualRow,
                                          alias_pair, int_field, ok_text, read_file)

NO_POP, NO_IMAP, BOUNCE_MAIL = 0x02, 0x08, 0x10


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


def read_dump(text):
    """The vpopmail tables of a mysqldump TEXT, in read_db's shape."""
    return parse_dump(text, vpopmail_wanted, DEFAULT_COLUMNS)


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


def _domain_home(users_dirs, domain, domains_dir):
    for d in users_dirs:
        k = d.find("/" + domain + "/")
        if k >= 0:
            return d[:k + len(domain) + 1]
    if domains_dir:
        return os.path.join(domains_dir, domain)
    return None


def plan_vpopmail(tables, config, uid, gid, domains_dir=None, qmail_dir="/var/qmail"):
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
        if not home.startswith("/") or not all(ok_text(x) for x in (name, domain, home)):
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
        flags = int_field(r.get("pw_gid")) or 0
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
        if int_field(r.get("copy")):
            g["copy"] = True
    vdeliver = 0
    for (domain, alias), g in groups.items():
        where = "valias %s@%s" % (alias, domain)
        if not alias or not domain or not all(ok_text(x) for x in [alias, domain] + g["lines"]):
            plan.problem("%s: blank alias or domain, or not text; skipped" % where)
            continue
        lines = [alias_pair(l, qmail_dir) for l in g["lines"]]
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


def db_connection(host=None, port=None, socket=None, user=None, password_file=None,
                  name="vpopmail", vpopmail_mysql=None):
    """(MySQLdb.connect arguments, database) for vpopmail's live DB: the given server
    and login, else vpopmail's own etc/vpopmail.mysql (default ~vpopmail's)."""
    if host or socket or user:
        conn = {"user": user or "vpopmail", "db": name}
        if socket:
            conn["unix_socket"] = socket
        else:
            conn["host"] = host or "localhost"
            if port:
                conn["port"] = port
        if password_file:
            conn["passwd"] = read_file(password_file).split(b"\n")[0].decode()
        return conn, name
    path = vpopmail_mysql
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
