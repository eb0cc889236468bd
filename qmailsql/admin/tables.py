"""The table rows an administrator changes: mailbox, alias, virtual and rcpthost
(SPEC section 7), behind `qmailsql mailbox|alias|virtual|rcpthost` and the Session
methods of qmailsql/api.py. The commands:

    qmailsql mailbox add NAME --uid N --gid N --home DIR [--password-type SCHEME]
                                 [--password-stdin] [--suspended]
    qmailsql mailbox del NAME | list
    qmailsql mailbox set NAME [--deny LIST] [--allow LIST] [--suspend|--unsuspend]
                                 LIST: pop3,imap,smtp or all (qmailsql/core/services.py)
    qmailsql alias add USER LINE [--ext EXT]     LINE as in a dot-qmail file:
                                                 ./Maildir/  /home/u/Mailbox  '|prog'
                                                 &addr  or  addr@host (a forward)
    qmailsql alias del USER [--ext EXT] [LINE] | list [USER]
    qmailsql virtual add ADDRESS --user NAME [--ext EXT]     u@host, @host (catch-all),
    qmailsql virtual add ADDRESS --forward ADDR              or a pattern with funky_queries
    qmailsql virtual del ADDRESS | list [HOST]
    qmailsql rcpthost add HOST | del HOST | list
    qmailsql sync [--qmail-dir DIR] [--no-reload]

Every write goes to the write server, refuses rows that would misdeliver or defer mail
(blank alias rows, magic-forward loops, unusable hosts), then asks the daemon to drop
its cache (a `flush` frame; an unreachable daemon is a warning: its cache expires by
itself after cache_ttl seconds) and Dovecot to drop its auth cache, if it keeps one.
"""
import sys

from qmailsql.core import client, services, virtual
from qmailsql.core.aliases import SPECIAL, line_for
from qmailsql.core.resolve import Refusal
from qmailsql.admin import dovecot
from qmailsql.admin.sync import SyncError, check_host as sync_check_host


class AdminError(ValueError):
    """A row the command refuses to write; the message says why and what to do."""


# ------------------------------------------------------------------- daemon cache

def flush_daemon(config, warn=None):
    """Ask qmailsqld to drop its cache. True when it answered; else WARN(message)."""
    warn = warn or (lambda m: sys.stderr.write("qmailsql: warning: %s\n" % m))
    path = config.socket_path
    try:
        status, body = client.flush(path, timeout=5)
        if status:
            raise OSError("answered %d %r" % (status, body[:80]))
        return True
    except (OSError, ValueError) as e:
        warn("daemon not reachable at %s (%s): its cache keeps old answers for up to "
             "cache_ttl=%ds; run `qmailsql flush` when it is back"
             % (path, getattr(e, "strerror", None) or e, config.cache_ttl))
        return False


def flush_caches(config, warn=None):
    """After a change: qmailsqld's cache, and Dovecot's auth cache when this host's
    Dovecot keeps one (qmailsql/admin/dovecot.py), so no old answer outlives the change."""
    warn = warn or (lambda m: sys.stderr.write("qmailsql: warning: %s\n" % m))
    flush_daemon(config, warn)
    dovecot.flush_auth_cache(warn)


# ------------------------------------------------------------------- checks

def _clean(value, what, allow_blank=False):
    value = "" if value is None else str(value)
    if "\n" in value or "\0" in value or "\r" in value:
        raise AdminError("%s must not contain newline, carriage return or NUL" % what)
    if not allow_blank and not value.strip():
        raise AdminError("%s must not be blank" % what)
    return value.strip()


def check_host(host):
    try:
        return sync_check_host(host, "virtual")
    except SyncError:
        raise AdminError("host %r is not usable in qmail's control files (blank, white space "
                         "or one of : # @ / \\ , ;)" % host)


def parse_line(line):
    """A dot-qmail LINE -> (alias_username, alias_host) as the table stores it."""
    line = _clean(line, "delivery line")
    if line[0] in SPECIAL:
        if len(line) == 1:
            raise AdminError("%r alone is not a delivery: give the rest (./Maildir/, "
                             "/home/u/Mailbox, |program)" % line)
        return line[0], line[1:]
    if line[0] == "#":
        raise AdminError("a comment line delivers nothing; not stored")
    if line[0] == "&":
        line = line[1:].strip()
    if not line or line[0] == "@":
        raise AdminError("forward address %r has no mailbox part" % line)
    at = line.rfind("@")
    if at < 0:
        return line, ""
    return line[:at], line[at + 1:]


def parse_address(address):
    """u@host, @host (catch-all) -> (virtual_username, virtual_host)."""
    address = _clean(address, "address")
    at = address.rfind("@")
    if at < 0:
        raise AdminError("address %r needs @host (use @host alone for a catch-all)" % address)
    return address[:at], check_host(address[at + 1:])


# ------------------------------------------------------------------- mailbox

def add_mailbox(directory, name, uid, gid, home, password="", password_type="Crypt-Password",
                suspended=False, replace=False):
    name = _clean(name, "mailbox name")
    if name.lower() != name:
        raise AdminError("mailbox names are matched lower-cased (qmail-getpw lower-cases the "
                         "local part): use %r" % name.lower())
    if int(uid) == 0:
        raise AdminError("uid 0 never gets mail (qmail-getpw refuses it)")
    if not str(home).startswith("/"):
        raise AdminError("home must be an absolute path")
    sql = ("INSERT INTO mailbox (username, uid, gid, home, password, password_type, "
           "suspended) VALUES (%s,%s,%s,%s,%s,%s,%s)")
    if replace:  # these columns only: its quota and service bars stay (quota.py, services.py)
        sql += (" ON DUPLICATE KEY UPDATE uid=VALUES(uid), gid=VALUES(gid), home=VALUES(home), "
                "password=VALUES(password), password_type=VALUES(password_type), "
                "suspended=VALUES(suspended)")
    try:
        directory.query(sql, (name, int(uid), int(gid), _clean(home, "home"), password or "",
                              password_type, "Y" if suspended else "N"), write=True)
    except Exception as e:
        if "Duplicate" in str(e):
            raise AdminError("mailbox %r exists (use --replace to overwrite it)" % name)
        raise


def del_mailbox(directory, name):
    n = directory.query("SELECT COUNT(*) FROM mailbox WHERE username=%s", (name,), write=True)
    directory.query("DELETE FROM mailbox WHERE username=%s", (name,), write=True)
    return int(n[0][0])


def set_mailbox(directory, name, deny=(), allow=(), suspended=None):
    """Change a mailbox's service bars (DENY, ALLOW: sets of qmailsql.core.services.SERVICES)
    and, unless SUSPENDED is None, its suspension. Returns (deny_services, suspended)
    as stored; AdminError if there is no such mailbox."""
    rows = directory.query("SELECT username, deny_services, suspended FROM mailbox "
                           "WHERE username=%s", (name,), write=True)
    row = next((r for r in rows if r[0] == name), rows[0] if rows else None)
    if row is None:
        raise AdminError("no mailbox %r (see `qmailsql mailbox list`)" % name)
    denied = (services.stored(row[1]) | set(deny)) - set(allow)
    flag = row[2] if suspended is None else ("Y" if suspended else "N")
    directory.query("UPDATE mailbox SET deny_services=%s, suspended=%s WHERE username=%s",
                    (services.column_value(denied), flag, row[0]), write=True)
    return services.column_value(denied), flag


def list_mailboxes(directory):
    return directory.query("SELECT username, uid, gid, home, password_type, suspended, "
                           "deny_services FROM mailbox ORDER BY username", write=True)


# ------------------------------------------------------------------- alias

def add_alias(directory, username, alias, alias_username, alias_host):
    username = _clean(username, "user")
    alias = _clean(alias, "ext", allow_blank=True)
    au = _clean(alias_username, "alias_username", allow_blank=True)
    ah = _clean(alias_host, "alias_host", allow_blank=True)
    try:
        line_for((None, username, alias, au, ah), b"", None)
    except Refusal as r:
        raise AdminError(r.message.split("; fix:")[0].replace("alias row id=None ", "alias row "))
    directory.query("INSERT INTO alias (username, alias, alias_username, alias_host) "
                    "VALUES (%s,%s,%s,%s)", (username, alias, au, ah), write=True)


def del_alias(directory, username, alias="", alias_username=None, alias_host=None):
    sql = "DELETE FROM alias WHERE username=%s AND alias=%s"
    params = [username, alias]
    if alias_username is not None:
        sql += " AND alias_username=%s AND alias_host=%s"
        params += [alias_username, alias_host or ""]
    before = directory.query("SELECT COUNT(*) FROM alias WHERE " + sql[len(
        "DELETE FROM alias WHERE "):], params, write=True)
    directory.query(sql, params, write=True)
    return int(before[0][0])


def list_aliases(directory, username=None):
    if username is None:
        return directory.query("SELECT username, alias, alias_username, alias_host FROM alias "
                               "ORDER BY username, alias, id", write=True)
    return directory.query("SELECT username, alias, alias_username, alias_host FROM alias "
                           "WHERE username=%s ORDER BY alias, id", (username,), write=True)


# ------------------------------------------------------------------- virtual

def add_virtual(directory, virtual_username, virtual_host, username, ext=""):
    config = directory.config
    vu = _clean(virtual_username, "virtual_username", allow_blank=True)
    vh = check_host(virtual_host)
    username = _clean(username, "username")
    ext = _clean(ext, "ext", allow_blank=True)
    if username.lower() == virtual.FORWARD_USER:
        if config.magic_forwarding:
            if not ext or " " in ext or "\t" in ext:
                raise AdminError("a magic forward needs the target address in ext")
        else:
            sys.stderr.write("qmailsql: note: magic_forwarding is off, so %r is an ordinary "
                             "user; it needs a mailbox row and alias rows (the FAQ's old "
                             "method)\n" % username)
    rows = virtual.all_rows(directory)
    key = (vu.lower(), vh)
    if any((r.virtual_username.lower(), r.virtual_host.lower()) == key for r in rows):
        raise AdminError("%s@%s already has a virtual row (delete it first)" % (vu, vh))
    new = virtual.Row(username, ext, vu, vh)
    loops = virtual.find_forward_loops(rows + [new], config.funky_queries)
    if config.magic_forwarding and loops:
        raise AdminError("refusing: magic forwards would loop: " + "; ".join(
            " -> ".join(l + [l[0]]) for l in loops))
    directory.query("INSERT INTO virtual (username, ext, virtual_username, virtual_host) "
                    "VALUES (%s,%s,%s,%s)", (username, ext, vu, vh), write=True)


def del_virtual(directory, virtual_username, virtual_host):
    rows = directory.query("SELECT id, virtual_username, virtual_host FROM virtual WHERE "
                           "virtual_host=%s AND virtual_username=%s",
                           (virtual_host, virtual_username), write=True)
    ids = [r[0] for r in rows if r[1].lower() == virtual_username.lower()
           and r[2].lower() == virtual_host.lower()]
    for i in ids:
        directory.query("DELETE FROM virtual WHERE id=%s", (i,), write=True)
    return len(ids)


def list_virtual(directory, host=None):
    sql = "SELECT virtual_username, virtual_host, username, ext FROM virtual"
    if host is None:
        return directory.query(sql + " ORDER BY virtual_host, virtual_username", write=True)
    return directory.query(sql + " WHERE virtual_host=%s ORDER BY virtual_username", (host,),
                           write=True)


# ------------------------------------------------------------------- rcpthosts

def add_rcpthost(directory, host):
    h = check_host(host)
    directory.query("INSERT IGNORE INTO rcpthosts (host) VALUES (%s)", (h,), write=True)
    return h


def del_rcpthost(directory, host):
    n = directory.query("SELECT COUNT(*) FROM rcpthosts WHERE host=%s", (host,), write=True)
    directory.query("DELETE FROM rcpthosts WHERE host=%s", (host,), write=True)
    return int(n[0][0])


def list_rcpthosts(directory):
    return directory.query("SELECT host FROM rcpthosts ORDER BY host", write=True)
