"""Dovecot's side of the administrator's tools: the dovecot.conf fragment that
`qmailsql dovecot-config` prints (passdb/userdb answered by qmailsqld through
dovecot-auth.lua, see qmailsql/core/dovecot.py) and the flush of Dovecot's own auth
cache after an admin change.

Caching. qmailsqld never caches a passdb answer. Dovecot's own auth cache is off in
the fragment unless asked for (``--auth-cache SIZE``): with it on, a repeat login is
answered by Dovecot from a hash of the last good password, so the admin commands of
this host flush it (``doveadm auth cache flush``) after every change, and other hosts
sharing the DB keep old entries for up to ``auth_cache_ttl``.
"""
import os
import shutil
import subprocess

from qmailsql.core import config as configmod
from qmailsql.core.dovecot import INSTALLED_SCRIPT, SCRIPT
from qmailsql.core.helpers import helper_path

DEFAULT_CONFIG = "/etc/dovecot/dovecot.conf"
AUTH_CACHE_TTL = "5 mins"        # with --auth-cache: how long other hosts may lag


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


def config_text(qmail_dir=None, version=None, auth_cache=None, socket=None, script=None):
    """What `qmailsql dovecot-config` prints: the fragment for VERSION (default: the
    installed dovecot's, else 2.3) with qmailsqld's socket of QMAIL_DIR (or SOCKET).
    ValueError when a path cannot go into dovecot.conf."""
    qmail_dir = configmod.qmail_dir(qmail_dir)
    version = version or installed_version() or "2.3"
    socket = socket or configmod.socket_path(qmail_dir)
    return fragment(qmail_dir, socket, version, auth_cache, script)


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
