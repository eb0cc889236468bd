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
* :func:`fragment`, what ``qmailsql dovecot-config`` prints;
* :func:`flush_auth_cache`, which admin commands call after a change;
* :class:`Private`, a throw-away Dovecot for the tests and benchmarks.

Caching. qmailsqld never caches a passdb answer. Dovecot's own auth cache is off in
the fragment unless asked for (``--auth-cache SIZE``): with it on, a repeat login is
answered by Dovecot from a hash of the last good password, so the admin commands of
this host flush it (``doveadm auth cache flush``) after every change, and other hosts
sharing the DB keep old entries for up to ``auth_cache_ttl``.
"""
import os
import shutil
import subprocess
import time

from qmailsql.core import auth, config as configmod, db, quota
from qmailsql.core.helpers import helper_path
from qmailsql.core.resolve import EXIT_TEMP, Refusal, shown

COMMANDS = frozenset([b"passdb", b"userdb", b"iterate"])
MAIL = "maildir:~/Maildir"       # what qmail-local delivers to (./Maildir/)
ITERATE_ROWS = 1000              # rows one `iterate` request reads
ITERATE_BYTES = 60000            # and at most this many bytes of names it answers
SCRIPT = "dovecot-auth.lua"      # `qmailsql helper dovecot-auth.lua`
INSTALLED_SCRIPT = "qmailsql-dovecot-auth.lua"  # its name in QMAIL/bin (`qmailsql install`)
DEFAULT_CONFIG = "/etc/dovecot/dovecot.conf"
AUTH_CACHE_TTL = "5 mins"        # with --auth-cache: how long other hosts may lag


# ---------------------------------------------------------------- the daemon's answers

def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


def _payload(status, fields):
    """status 0 + key=value fields, or another status + one line of text."""
    if status:
        return b"%d\0" % status + auth._line(fields).encode("utf-8", "replace")
    return b"0\0" + b"".join(os.fsencode("%s=%s" % kv) + b"\0" for kv in fields)


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
    except Refusal:
        raise
    except Exception as e:  # DirectoryUnavailable, and anything else from the DB
        raise Refusal(EXIT_TEMP, "DB lookup for %s failed: %s" % (shown(name.encode()), e))
    rows = resolver.fetch(names)
    for candidate in names:
        acct = resolver.account(candidate, rows)
        if acct is None or acct.uid == 0 or not resolver.usable_home(acct, lambda m: None):
            continue
        try:
            limits = quota.mailbox_limits(directory, acct.name)
        except db.DirectoryUnavailable as e:  # no login without its quota
            raise Refusal(EXIT_TEMP, "DB lookup of the quota of %s failed: %s" % (
                shown(acct.name.encode("utf-8", "replace")), e))
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
        return _payload(status, result)
    user = result[0]
    fields = [("user", user)]
    try:
        extra = userdb_fields(resolver, directory, config, user)
    except Refusal as r:  # Dovecot's own userdb lookup then meets the trouble itself
        log("passdb %s: no userdb fields to prefetch: %s" % (shown(login), r.message))
        extra = None
    fields += [("userdb_" + k, v) for k, v in extra or () if k != "user"]
    return _payload(0, fields)


def userdb(resolver, directory, config, name, log):
    try:
        fields = userdb_fields(resolver, directory, config, name)
    except Refusal as r:
        log("userdb %s: %s" % (shown(name), r.message))
        return _payload(EXIT_TEMP, r.message)
    if fields is None:
        return _payload(1, "no such user")
    return _payload(0, fields)


def iterate(directory, after):
    """Mailbox names after AFTER in the table's order, at most ITERATE_BYTES of them;
    an empty answer is the end (doveadm -A asks again from its last name)."""
    try:
        rows = directory.query("SELECT username FROM mailbox WHERE username > %s "
                               "ORDER BY username LIMIT %s", (_text(after), ITERATE_ROWS))
    except UnicodeDecodeError:
        return _payload(100, "iterate: the name to start after is not UTF-8")
    except Exception as e:
        return _payload(EXIT_TEMP, "DB trouble listing mailboxes: %s" % e)
    out, size = [], 0
    for (name,) in rows:
        data = os.fsencode(name)
        if b"\0" in data:
            continue
        if size + len(data) + 1 > ITERATE_BYTES:
            break
        out.append(data)
        size += len(data) + 1
    return b"0\0" + b"".join(n + b"\0" for n in out)


def answer(command, args, resolver, directory, config, log):
    """The response payload for a Dovecot command (COMMANDS). Never raises."""
    try:
        if command == b"passdb":
            return passdb(resolver, directory, config, *args, log=log)
        if command == b"userdb":
            return userdb(resolver, directory, config, args[0], log)
        return iterate(directory, args[0])
    except Exception as e:  # a bug must never become a login
        log("internal error in %s: %s: %s" % (command.decode(), type(e).__name__, e))
        return _payload(EXIT_TEMP, "internal error in qmailsqld (see its log)")


# ---------------------------------------------------------------- the configuration

def script_path(qmail_dir):
    """The Lua script Dovecot should load: QMAIL/bin's copy (`qmailsql install` puts
    it there, readable by Dovecot's user), else the package's own."""
    installed = os.path.join(qmail_dir, "bin", INSTALLED_SCRIPT)
    return installed if os.path.exists(installed) else str(helper_path(SCRIPT))


def installed_version():
    """The fragment syntax for the installed dovecot: '2.3' (up to 2.3), '2.4' (2.4 and
    later), or None when there is no dovecot."""
    exe = shutil.which("dovecot") or ("/usr/sbin/dovecot"
                                      if os.access("/usr/sbin/dovecot", os.X_OK) else None)
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        major, minor = (int(p) for p in out.split()[0].split(".")[:2])
    except (IndexError, ValueError):
        return None
    return "2.4" if (major, minor) >= (2, 4) else "2.3"


HEADER = """\
# qmailsql: Dovecot's passdb and userdb answered by qmailsqld.
# Written by `qmailsql dovecot-config` for Dovecot {version}; `!include` it from a
# dovecot.conf that sets protocols, listeners and base_dir (and TLS).
# No DB login here: qmailsqld holds the only one. The Lua script runs in auth-worker
# processes as Dovecot's unprivileged user ($default_internal_user), which qmailsqld
# admits by uid for its passdb, userdb and iterate requests only. Passwords are
# checked by qmailsqld, so use plaintext mechanisms (auth_mechanisms = plain login).
"""

CACHE_OFF = """\
# No auth cache: every login asks qmailsqld, so a password change, a suspension or a
# service bar takes effect at once, on every host sharing the DB.
auth_cache_size = 0
"""

CACHE_ON = """\
# Auth cache: a repeat login is answered by Dovecot. `qmailsql passwd` and the
# `qmailsql mailbox` commands flush it on this host (doveadm auth cache flush); other
# hosts sharing the DB keep an old entry for up to auth_cache_ttl.
auth_cache_size = {size}
auth_cache_ttl = {ttl}
auth_cache_negative_ttl = 0
"""

BODY_23 = """\
passdb {{
  driver = lua
  # cache key: user and service, so a bar on one service is never read from the
  # cache entry of another
  args = file={script} blocking=yes cache_key=%u%s
}}
# logins get their userdb fields from the passdb answer; LMTP and doveadm ask the lua
# userdb
userdb {{
  driver = prefetch
}}
userdb {{
  driver = lua
  args = file={script} blocking=yes
}}
service auth-worker {{
  user = $default_internal_user
}}
import_environment = $import_environment QMAILSQL_SOCKET={socket}
"""

BODY_24 = """\
passdb lua {{
  lua_file = {script}
  lua_settings {{
    socket = {socket}
  }}
}}
# logins get their userdb fields from the passdb answer; LMTP and doveadm ask the lua
# userdb
userdb prefetch {{
}}
userdb lua {{
  lua_file = {script}
  lua_settings {{
    socket = {socket}
  }}
}}
service auth-worker {{
  user = $SET:default_internal_user
}}
"""


def fragment(qmail_dir, socket, version="2.3", auth_cache=None, script=None):
    """The dovecot.conf fragment (text) for Dovecot VERSION ('2.3' or '2.4')."""
    if version not in ("2.3", "2.4"):
        raise ValueError("Dovecot %s: the fragment is written for 2.3 or 2.4" % version)
    script = script or script_path(qmail_dir)
    for what, value in (("socket", socket), ("script", script)):
        if any(c in value for c in " \t\n\"'#"):
            raise ValueError("the %s path %r has a space, quote or #, which dovecot.conf "
                             "cannot take here; move it" % (what, value))
    text = HEADER.format(version=version)
    text += (CACHE_ON.format(size=auth_cache, ttl=AUTH_CACHE_TTL) if auth_cache else CACHE_OFF)
    body = BODY_23 if version == "2.3" else BODY_24
    return text + body.format(script=script, socket=socket)


def cmd_dovecot_config(args):
    qmail_dir = configmod.qmail_dir(args.qmail_dir)
    version = args.dovecot or installed_version() or "2.3"
    socket = args.socket or configmod.socket_path(qmail_dir)
    try:
        text = fragment(qmail_dir, socket, version, args.auth_cache, args.script)
    except ValueError as e:
        import sys
        sys.stderr.write("qmailsql: dovecot-config: %s\n" % e)
        return 100
    print(text, end="")
    return 0


def add_command(sub):
    import argparse
    s = sub.add_parser(
        "dovecot-config", help="print Dovecot's passdb/userdb configuration for this host",
        description="Print the dovecot.conf fragment that makes Dovecot (IMAP, POP3, LMTP, "
        "doveadm) ask qmailsqld: passdb and userdb blocks (driver lua), the Lua script's "
        "path, qmailsqld's socket, and the auth-worker running as Dovecot's unprivileged "
        "user. Save it (e.g. /etc/dovecot/conf.d/qmailsql.conf) and !include it from a "
        "dovecot.conf that sets protocols, listeners and base_dir.")
    s.add_argument("--dovecot", metavar="VERSION", choices=["2.3", "2.4"],
                   help="the Dovecot syntax to write (default: the installed dovecot's, "
                        "else 2.3)")
    s.add_argument("--auth-cache", metavar="SIZE",
                   help="turn Dovecot's auth cache on with this size (e.g. 10M); default "
                        "off, so every change takes effect at once everywhere")
    s.add_argument("--socket", metavar="PATH",
                   help="qmailsqld's socket (default: $QMAILSQL_SOCKET or "
                        "QMAIL/qmailsql/qmailsqld.sock)")
    s.add_argument("--script", metavar="PATH",
                   help="the Lua script's path (default: QMAIL/bin/%s if installed, else "
                        "the package's; Dovecot's user must be able to read it)"
                        % INSTALLED_SCRIPT)
    s.add_argument("--qmail-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="the qmail home (default: $QMAILSQL_QMAIL_DIR or conf-qmail)")
    s.set_defaults(func=cmd_dovecot_config)


# ---------------------------------------------------------------- Dovecot's auth cache

def _tool(name):
    return shutil.which(name) or next((p for p in ("/usr/bin/" + name, "/usr/sbin/" + name)
                                       if os.access(p, os.X_OK)), None)


def flush_auth_cache(warn, environ=None):
    """Drop Dovecot's auth cache after an admin change, when this host's Dovecot
    ($QMAILSQL_DOVECOT_CONFIG, default /etc/dovecot/dovecot.conf) has it turned on.
    True when flushed, False when there is nothing to flush; WARN(message) on failure."""
    environ = os.environ if environ is None else environ
    conf = environ.get("QMAILSQL_DOVECOT_CONFIG") or DEFAULT_CONFIG
    doveconf, doveadm = _tool("doveconf"), _tool("doveadm")
    if not (doveconf and doveadm and os.path.exists(conf)):
        return False  # no Dovecot here
    try:
        size = subprocess.run([doveconf, "-c", conf, "-h", "auth_cache_size"],
                              capture_output=True, text=True, timeout=30)
        if size.returncode == 0 and size.stdout.strip() in ("0", ""):
            return False  # no auth cache: nothing can be stale
        r = subprocess.run([doveadm, "-c", conf, "auth", "cache", "flush"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return True
        lines = (r.stderr or r.stdout).strip().splitlines()
        problem = lines[-1] if lines else "exit %d" % r.returncode
    except (OSError, subprocess.SubprocessError) as e:
        problem = str(e)
    warn("could not flush Dovecot's auth cache (doveadm -c %s auth cache flush: %s): until "
         "its entries expire (auth_cache_ttl) Dovecot may still accept an old password; run "
         "that command when Dovecot answers" % (conf, problem))
    return False


# ---------------------------------------------------------------- a private Dovecot

DOVECOT = "/usr/sbin/dovecot"

PRIVATE_CONF = """\
# a private Dovecot (qmailsql.core.dovecot.Private): its own base_dir, state and log
base_dir = {top}/run
state_dir = {top}/state
instance_name = qmailsql-{port}
log_path = {top}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
default_internal_user = {internal_user}
# no auth penalty (Dovecot's growing delay per failing address): qmailsqld's
# failed-login limiter is what the tests measure, and the benchmarks want no delays
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{listeners}
{body}
"""

LISTENER = """\
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


# the old way in, kept for comparison (tests/test_pop3_e2e.py, bench/dovecot_login.py):
# Dovecot's checkpassword passdb running qmailsql-checkpassword, which changes uid
# before Dovecot's checkpassword-reply runs, so auth must be root, with INSECURE_SETUID
CHECKPASSWORD_RECIPE = """\
mail_location = maildir:~/Maildir
import_environment = TZ INSECURE_SETUID=1 QMAILSQL_SOCKET={socket}
service auth {{
  user = root
}}
passdb {{
  driver = checkpassword
  args = {checkpassword}
}}
userdb {{
  driver = prefetch
}}
"""


class DovecotMissing(Exception):
    pass


class Private:
    """A Dovecot of its own in directory TOP (short, searchable by every uid): its own
    dovecot.conf, base_dir, state_dir and log, listening on 127.0.0.1 ports, never
    touching a system Dovecot. BODY is the auth part of the configuration (a
    passdb/userdb recipe, or `!include` of the dovecot-config fragment); INTERNAL_USER
    is the unprivileged user its auth processes run as. Needs root (Dovecot's master
    changes uids)."""

    def __init__(self, top, body, ports, internal_user="dovecot"):
        for prog in (DOVECOT, "/usr/bin/doveadm"):
            if not os.access(prog, os.X_OK):
                raise DovecotMissing("Dovecot's %s is missing: apt-get install dovecot-core "
                                     "dovecot-imapd dovecot-pop3d dovecot-auth-lua lua-socket "
                                     "(bash .ci/setup does)" % prog)
        self.top = str(top)
        self.ports = dict(ports)  # {"imap": port, "pop3": port}
        self.conf = os.path.join(self.top, "dovecot.conf")
        self.log_path = os.path.join(self.top, "dovecot.log")
        self.proc = None
        listeners = "".join(LISTENER.format(protocol=p, port=n) for p, n in self.ports.items())
        with open(self.conf, "w") as f:
            f.write(PRIVATE_CONF.format(top=self.top, port=min(self.ports.values()),
                                        protocols=" ".join(self.ports), listeners=listeners,
                                        body=body, internal_user=internal_user))

    def start(self, timeout=30.0):
        import socket
        out = open(self.log_path + ".out", "ab")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("dovecot exited with %s:\n%s" % (self.proc.returncode,
                                                                       self.log()))
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("dovecot did not listen on 127.0.0.1:%d within "
                                           "%.0fs:\n%s" % (port, timeout, self.log()))
                    time.sleep(0.05)
        return self

    def doveadm(self, *args, timeout=60):
        return subprocess.run(["/usr/bin/doveadm", "-c", self.conf] + list(args),
                              capture_output=True, text=True, timeout=timeout)

    def log(self, limit=20000):
        """The end of what Dovecot logged (LIMIT characters; None: all of it)."""
        text = ""
        for path in (self.log_path + ".out", self.log_path):
            try:
                with open(path, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return text if limit is None else text[-limit:]

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
