"""Dovecot (IMAP, POP3, LMTP, doveadm) on qmailsql's users (SPEC section 6).

Dovecot runs qmailsql's Lua script (``dovecot-auth.lua``, Dovecot's ``driver = lua``,
in 2.3 and 2.4) in its auth-worker processes, as Dovecot's own unprivileged user. The
script holds no DB login and checks no password: it asks qmailsqld over its socket
(csrc/PROTOCOL.md: ``passdb``, ``userdb``, ``iterate``), and qmailsqld admits that
user by uid for those three commands only (daemon.dovecot_uids()).

This module has

* the daemon's answers: :func:`answer` (passdb: qmailsql.core.auth's rules, limiter and
  rehash, with the service bars; userdb: uid, gid, home and mail from the account
  rules of qmail-getpw; iterate: the mailbox names, a page at a time);
and the names of the Lua script. What ``qmailsql dovecot-config`` prints and the auth
cache flush after admin changes are in qmailsql/admin/dovecot.py; a throw-away Dovecot
for the tests and benchmarks is qmailsql/sandbox/dovecot.py.

Caching. qmailsqld never caches a passdb answer. Dovecot's own auth cache is off in
the fragment unless asked for (``--auth-cache SIZE``): with it on, a repeat login is
answered by Dovecot from a hash of the last good password, so the admin commands of
this host flush it (``doveadm auth cache flush``) after every change, and other hosts
sharing the DB keep old entries for up to ``auth_cache_ttl``.
"""
import os

from qmailsql.core import auth, db, quota
from qmailsql.core.resolve import EXIT_TEMP, Refusal, shown

COMMANDS = frozenset([b"passdb", b"userdb", b"iterate"])
MAIL = "maildir:~/Maildir"       # what qmail-local delivers to (./Maildir/)
ITERATE_ROWS = 1000              # rows one `iterate` request reads
ITERATE_BYTES = 60000            # and at most this many bytes of names it answers
SCRIPT = "dovecot-auth.lua"      # `qmailsql helper dovecot-auth.lua`
INSTALLED_SCRIPT = "qmailsql-dovecot-auth.lua"  # its name in QMAIL/bin (`qmailsql install`)


# ---------------------------------------------------------------- the daemon's answers

def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


def _answer(status, fields):
    """(status, body): status 0 and key=value fields, or another status and one line of
    text."""
    if status:
        return status, auth._line(fields).encode("utf-8", "replace")
    return 0, b"".join(os.fsencode("%s=%s" % kv) + b"\0" for kv in fields)


def userdb_fields(resolver, directory, config, name):
    """Dovecot's userdb fields for NAME (`user` or `user@virtualhost`), as a list of
    (key, value), or None for no such user.

    The account is the one qmail-getpw would deliver to: a mailbox row, then (with
    system_users) /etc/passwd; uid 0 and a home that is missing or not owned by the
    uid do not count. A mailbox with a quota also gets the limits the qmail-local
    wrapper enforces, as quota_rule (quota.dovecot_userdb_fields), so both keep the
    same maildirsize. Raises Refusal(111) for trouble (the DB, a bad row, a home that
    cannot be checked)."""
    try:
        name = _text(name).lower()
    except UnicodeDecodeError:
        return None
    if not name or len(name) > auth.MAX_LOGIN:
        return None
    try:
        names = auth.login_names(directory, config, name, [])
    except db.DirectoryUnavailable as e:  # anything else is a bug: it goes up as one
        raise Refusal(EXIT_TEMP, "DB lookup for %s failed: %s" % (shown(name.encode()), e),
                      cause="db")
    rows = resolver.fetch(names)
    for candidate in names:
        acct = resolver.account(candidate, rows)
        if acct is None or acct.uid == 0 or not resolver.usable_home(acct, lambda m: None):
            continue
        try:
            limits = quota.mailbox_limits(directory, acct.name)
        except db.DirectoryUnavailable as e:  # no login without its quota
            raise Refusal(EXIT_TEMP, "DB lookup of the quota of %s failed: %s" % (
                shown(acct.name.encode("utf-8", "replace")), e), cause="db")
        return [("user", acct.name), ("uid", "%d" % acct.uid), ("gid", "%d" % acct.gid),
                ("home", acct.home), ("mail", MAIL)] + sorted(
                    quota.dovecot_userdb_fields(limits).items())
    return None


def passdb(resolver, directory, config, login, password, service, remoteip, log):
    """The `passdb` answer: qmailsql.core.auth decides; an accepted login also carries the
    mailbox's userdb fields (for Dovecot's prefetch userdb) and `user`, the mailbox
    name, so `alice@example.com` becomes Dovecot's user `alice`."""
    status, result = auth.attempt(directory, config, login, password, remoteip, log=log,
                                  service=service)
    if status:
        return _answer(status, result)
    user = result[0]
    fields = [("user", user)]
    try:
        extra = userdb_fields(resolver, directory, config, user)
    except Refusal as r:  # Dovecot's own userdb lookup then meets the trouble itself
        log("passdb %s: no userdb fields to prefetch: %s" % (shown(login), r.message))
        extra = None
    fields += [("userdb_" + k, v) for k, v in extra or () if k != "user"]
    return _answer(0, fields)


def userdb(resolver, directory, config, name, log):
    try:
        fields = userdb_fields(resolver, directory, config, name)
    except Refusal as r:
        log("userdb %s: %s" % (shown(name), r.message))
        return _answer(EXIT_TEMP, r.message)
    if fields is None:
        return _answer(1, "no such user")
    return _answer(0, fields)


def iterate(directory, after):
    """Mailbox names after AFTER in the table's order, at most ITERATE_BYTES of them;
    an empty answer is the end (doveadm -A asks again from its last name)."""
    try:
        rows = directory.query("SELECT username FROM mailbox WHERE username > %s "
                               "ORDER BY username LIMIT %s", (_text(after), ITERATE_ROWS))
    except UnicodeDecodeError:
        return _answer(100, "iterate: the name to start after is not UTF-8")
    except db.DirectoryUnavailable as e:  # anything else is a bug: answer() says so
        return _answer(EXIT_TEMP, "DB trouble listing mailboxes: %s" % e)
    out, size = [], 0
    for (name,) in rows:
        data = os.fsencode(name)
        if b"\0" in data:
            continue
        if size + len(data) + 1 > ITERATE_BYTES:
            break
        out.append(data)
        size += len(data) + 1
    return 0, b"".join(n + b"\0" for n in out)


def answer(command, args, resolver, directory, config, log):
    """(status, body) of the answer to a Dovecot command (COMMANDS). Never raises."""
    try:
        if command == b"passdb":
            return passdb(resolver, directory, config, *args, log=log)
        if command == b"userdb":
            return userdb(resolver, directory, config, args[0], log)
        return iterate(directory, args[0])
    except Exception as e:  # a bug must never become a login
        log("internal error in %s: %s: %s" % (command.decode(), type(e).__name__, e))
        return _answer(EXIT_TEMP, "internal error in qmailsqld (see its log)")
