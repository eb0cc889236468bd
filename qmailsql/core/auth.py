"""Who may read mail: the daemon's side of checkpassword (SPEC section 6).

The contract for qmailsqld (its ``auth`` command, run in a thread pool because a
slow hash must not stall deliveries)::

    status, body = auth.response(directory, config, login, password, remoteip)

returns the answer of csrc/PROTOCOL.md (the daemon frames it) and never raises:

* ``0, b"user\\0uid\\0gid\\0home\\0shell\\0"``  login accepted (shell is empty: the
  mailbox table has no shell column, checkpassword then sets ``/bin/sh``);
* ``1, b"reason"``   login refused (bad login or password, suspended, empty stored
  password, uid 0, a stored value of the wrong shape, too many failures);
* ``111, b"reason"`` temporary trouble (DB down, a misconfigured row, a bug).

It logs one line per attempt through ``log`` (default: ``directory.log``), with the
reason, never the password. Underneath, :func:`authenticate` returns
``(user, uid, gid, home, shell)`` or raises :class:`LoginRefused` (status 1) or
``resolve.Refusal(111, reason)``.

What it does, in order:

1. The failed-login :class:`Limiter`: an address with too many recent failures,
   or one that failed for a login being guessed at, is refused at once ("too many
   failures"); an address that has not failed is never refused for the login.
2. ``user@host`` logins are resolved through the ``virtual`` table (the exact
   ``virtual_username`` at ``virtual_host``, never a catch-all), then one
   parameterised query fetches the mailbox row; usernames are compared lower-cased
   in Python, because the column's collation folds case and pads spaces.
3. Every refusal costs about what a wrong password costs: a row that can verify is
   verified (even when it is suspended, uid 0 or barred from the login's service, and
   the answer is thrown away); unknown logins and unusable rows spend the time in
   ``passwords.dummy_verify``. The service bars are qmailsql.core.services'.
4. Opt-in rehash (``rehash yes`` in control/sqlserver): after a successful login
   with a weak stored hash, the row gets ``hash_password(default_scheme, password)``
   through the write server, guarded so that a concurrent change is not overwritten.
   A failed rehash is logged and the login still succeeds.

Nothing here is cached: every login asks the DB.
"""
import os
import threading
import time
from collections import deque

from qmailsql.core import passwords, services, virtual
from qmailsql.core.db import DirectoryUnavailable
from qmailsql.core.resolve import EXIT_TEMP, Refusal, mailbox_row_fault, pick_row, shown

__all__ = ["LoginRefused", "NoSuchMailbox", "Limiter", "LIMITER", "authenticate", "attempt",
           "response", "login_names", "set_password", "MAX_LOGIN", "MAX_PASSWORD"]

EXIT_REFUSED = 1

# checkpassword delivers at most 512 bytes of login + password; a direct request to
# the daemon could send 64 kB. SHA-crypt's cost grows with the password's length, so
# absurd sizes are refused before anything is looked up or hashed (the answer does
# not depend on the login, so it tells nothing).
MAX_LOGIN = 1024
MAX_PASSWORD = 1024

class LoginRefused(Refusal):
    """Bad login: status 1. `reason` (also `.message`) is for the log; the POP3/IMAP
    client never sees it. A Refusal with code 1, so a caller that only knows
    resolve.Refusal still answers status 1."""

    def __init__(self, reason):
        Refusal.__init__(self, EXIT_REFUSED, reason)
        self.reason = reason


class NoSuchMailbox(Exception):
    """`qmailsql passwd` was given a user the mailbox table does not have."""


# ---------------------------------------------------------------- failed-login limiter

class _Record:
    __slots__ = ("failures", "blocked_until", "strikes")

    def __init__(self):
        self.failures = deque()  # (time, login) of recent failures
        self.blocked_until = 0.0
        self.strikes = 0


class Limiter:
    """Slows password guessing down without ever locking the owner out for long.

    Per remote address: `max_failures` failures from one address within `window`
    seconds block that address, for every login, for a back-off that starts at
    `base_delay` and doubles with each further block, capped at `max_delay`.

    Per login: a login with `max_failures` failures within `window` from anywhere
    (guesses spread over many addresses) is being guessed at. Then each address that
    fails for it is held back, for that login only, for a back-off of its own
    (base_delay, doubling with each failure of that address for that login, capped
    at max_delay): every address gets one guess per back-off. The login itself is
    never blocked: an address that has not failed for it is not held back.

    Attempts refused by the limiter are not failures. So the worst case for the real
    owner is bounded: from an address where they have not failed (nor has anyone
    else, max_failures times), they are let in at once; from one where they typed a
    wrong password, at most max_delay after the last one. A window with no failure
    forgets a key, and its back-off starts again at base_delay.

    A successful login forgets what held that login back at that address, and at the
    address only that login's failures (a user's own typos are forgiven; an
    attacker's successful login to their own account does not wipe the count of
    their guesses at others). Without a remote address (remoteip empty), all such
    attempts count as one address.

    In memory, thread-safe, bounded to `max_keys` keys. `clock` (default
    time.monotonic) is injectable for tests.
    """

    def __init__(self, max_failures=5, window=300.0, base_delay=5.0, max_delay=60.0,
                 clock=time.monotonic, max_keys=100000):
        if max_failures < 1 or window <= 0 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError("bad limiter settings")
        self.max_failures = max_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self.max_keys = max_keys
        # ("ip", ip): failures from an address; ("login", login): failures of a login;
        # ("held", login, ip): that address held back for that login
        self._records = {}
        self._lock = threading.Lock()

    def _fresh(self, key, now):
        """The record for KEY with failures older than the window dropped (or None)."""
        rec = self._records.get(key)
        if rec is None:
            return None
        while rec.failures and rec.failures[0][0] <= now - self.window:
            rec.failures.popleft()
        if not rec.failures and rec.blocked_until <= now:
            del self._records[key]
            return None
        return rec

    def _record(self, key, now):
        rec = self._fresh(key, now)
        if rec is None:
            if len(self._records) >= self.max_keys:
                self._sweep(now)
            rec = self._records[key] = _Record()
        return rec

    def _back_off(self, rec, now):
        delay = min(self.max_delay, self.base_delay * (2 ** min(rec.strikes, 30)))
        rec.blocked_until = now + delay
        rec.strikes += 1
        return delay

    def blocked(self, login, remoteip=""):
        """(what, seconds left) if the limiter refuses LOGIN from REMOTEIP now, else None;
        what is ("ip", address) or ("login", login, address)."""
        now = self.clock()
        with self._lock:
            for key in ((("ip", remoteip),) if remoteip else ()) + (("held", login, remoteip),):
                rec = self._fresh(key, now)
                if rec is not None and rec.blocked_until > now:
                    return (key if key[0] == "ip" else ("login",) + key[1:]), \
                        rec.blocked_until - now
        return None

    def failure(self, login, remoteip=""):
        """Count a failed login; returns [(what, delay)] for what it blocked (see
        blocked())."""
        now = self.clock()
        started = []
        with self._lock:
            if remoteip:
                rec = self._record(("ip", remoteip), now)
                rec.failures.append((now, login))
                while len(rec.failures) > self.max_failures:
                    rec.failures.popleft()
                if len(rec.failures) >= self.max_failures and rec.blocked_until <= now:
                    started.append((("ip", remoteip), self._back_off(rec, now)))
            rec = self._record(("login", login), now)
            rec.failures.append((now, remoteip))
            while len(rec.failures) > self.max_failures:
                rec.failures.popleft()
            if len(rec.failures) >= self.max_failures:  # being guessed at
                held = self._record(("held", login, remoteip), now)
                held.failures.append((now, login))
                while len(held.failures) > 1:
                    held.failures.popleft()
                started.append((("login", login, remoteip), self._back_off(held, now)))
        return started

    def success(self, login, remoteip=""):
        """LOGIN logged in (from REMOTEIP): forget what held it back there, and its
        failures at that address."""
        with self._lock:
            self._records.pop(("held", login, remoteip), None)
            if remoteip:
                rec = self._records.get(("ip", remoteip))
                if rec is not None:
                    rec.failures = deque(f for f in rec.failures if f[1] != login)
                    if not rec.failures and rec.blocked_until <= self.clock():
                        del self._records[("ip", remoteip)]

    def _sweep(self, now):
        for key in list(self._records):
            self._fresh(key, now)
        if len(self._records) >= self.max_keys:  # still full: forget the stalest half
            def last(k):
                rec = self._records[k]
                return rec.failures[-1][0] if rec.failures else rec.blocked_until
            stale = sorted(self._records, key=last)
            for key in stale[:len(stale) // 2 + 1]:
                del self._records[key]

    def __len__(self):
        """How many keys it remembers (forgetting the ones a quiet window let go)."""
        now = self.clock()
        with self._lock:
            for key in list(self._records):
                self._fresh(key, now)
            return len(self._records)


LIMITER = Limiter()  # the daemon's, shared by its worker threads


# ---------------------------------------------------------------- helpers

def _text(value, what):
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise LoginRefused("%s is not valid UTF-8" % what)
    raise TypeError("%s must be bytes or str, not %s" % (what, type(value).__name__))


def _show(text, limit=64):
    """LOGIN for a log line: printable, one line, short."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    return shown(text, limit)


def _held(what):
    """A Limiter's (what, ...) for a log line or refusal reason."""
    if what[0] == "ip":
        return "ip %s blocked" % _show(what[1])
    return "login %s held back at %s" % (_show(what[1]), _show(what[2]) if what[2]
                                         else "addresses unknown")


def _ip(remoteip):
    if remoteip is None:
        return ""
    if isinstance(remoteip, (bytes, bytearray, memoryview)):
        remoteip = bytes(remoteip).decode("latin-1")
    return remoteip.strip()[:64]


def _shape_problem(password_type, stored):
    """What is wrong with the row's stored password, or None (cheap for good shapes)."""
    if passwords.well_formed(password_type, stored):
        return None  # a refusal of such a row is a wrong password: no hash to spend
    try:
        return passwords.check_stored(password_type, stored)
    except Exception as e:  # a diagnosis must never turn a refusal into trouble
        return "cannot check the stored password: %s" % e


# ---------------------------------------------------------------- lookups

_MAILBOX_SQL = ("SELECT username, uid, gid, home, password, password_type, suspended, "
                "deny_services FROM mailbox WHERE username IN (%s)")


def _virtual_names(directory, config, local, host, note):
    """Mailbox names a `local@host` login may mean, best first: only the exact
    virtual_username at virtual_host counts (never a pattern or the catch-all).
    Uses qmailsql.core.virtual's query and row rules (a blank username is a
    misconfiguration: Refusal 111)."""
    _, rows = virtual.fetch(directory, [(host, local)], False)
    exact = [r for r in rows if isinstance(r.virtual_username, str)
             and isinstance(r.virtual_host, str) and r.virtual_username.strip() != ""
             and r.virtual_username.lower() == local and r.virtual_host.lower() == host]
    if not exact:
        return []
    match = virtual.from_row(config, exact[0], host, local)
    if match.kind != "local":
        note.append("%s@%s is a magic forward, not a mailbox" % (local, host))
        return []
    # mail to local@host goes to the local part username[-ext]; a login reads the
    # mailbox that mail is delivered to: the user named username-ext if there is
    # one, else username (what qmail-getpw's longest-first rule picks)
    names = [match.target.decode("utf-8").lower()]
    base = exact[0].username.strip().lower()
    if base not in names:
        names.append(base)
    return names


def login_names(directory, config, login, note):
    """Mailbox names LOGIN (lower-cased) may mean, best first: `user`, or for
    `local@host` the mailbox its virtual row delivers to. Raises for DB trouble."""
    names = []
    if "@" in login:
        local, _, host = login.rpartition("@")
        if local and host:
            names = _virtual_names(directory, config, local, host, note)
            if names:
                note.append("via virtual: %s" % " or ".join(names))
    if login not in names:
        names.append(login)  # a plain login, or a mailbox literally named user@host
    return names


def _lookup(directory, config, login):
    """(mailbox row or None, notes). Raises for DB trouble."""
    note = []
    names = login_names(directory, config, login, note)
    rows = directory.query(_MAILBOX_SQL % ",".join(["%s"] * len(names)), names)
    for name in names:
        row = pick_row(rows, name)
        if row is not None:
            return row, note
    return None, note


# ---------------------------------------------------------------- authenticate

def authenticate(directory, config, login, password, remoteip="", log=None, limiter=None,
                 service=""):
    """(user, uid, gid, home, shell) for a correct LOGIN and PASSWORD, for SERVICE
    (pop3, imap, smtp, ...; see qmailsql.core.services for the bars).

    Raises LoginRefused (status 1) for a bad login, resolve.Refusal(111, reason) for
    trouble (DB down, misconfigured row). LOGIN, PASSWORD and REMOTEIP may be bytes
    or str. Only side events are logged here (limiter blocks, malformed stored
    passwords, rehash); the outcome is the caller's to log (response() does)."""
    log = log or getattr(directory, "log", None) or (lambda msg: None)
    limiter = LIMITER if limiter is None else limiter
    scheme = getattr(config, "default_scheme", "sha512-crypt") or "sha512-crypt"
    password = passwords.as_bytes(password)
    ip = _ip(remoteip)
    if len(login) > MAX_LOGIN or len(password) > MAX_PASSWORD:
        raise LoginRefused("login or password longer than %d bytes" % MAX_LOGIN)
    try:
        name = _text(login, "login").lower()
    except LoginRefused:
        passwords.dummy_verify(password, scheme)
        raise
    hit = limiter.blocked(name, ip)
    if hit is not None:
        what, left = hit
        raise LoginRefused("too many failures (%s for %.0f more s)" % (_held(what),
                                                                     max(left, 1)))

    spent = []  # set once this attempt has paid for one hash of real cost

    def refuse(reason):
        if not spent:  # so a refusal costs the same whatever the row (or no row) holds
            passwords.dummy_verify(password, scheme)
        for what, delay in limiter.failure(name, ip):
            log("auth limiter: %s for %.0f s after %d failures in %.0f s"
                % (_held(what), delay, limiter.max_failures, limiter.window))
        raise LoginRefused(reason)

    if not name or "\0" in name:
        refuse("empty login" if not name else "login contains NUL")

    try:
        row, notes = _lookup(directory, config, name)
    except DirectoryUnavailable as e:  # anything else is a bug: it goes up as one
        raise Refusal(EXIT_TEMP, "DB lookup for login %s failed: %s" % (_show(name), e),
                      cause="db")
    via = (" (%s)" % "; ".join(notes)) if notes else ""

    if row is None:
        refuse("unknown login %s%s" % (_show(name), via))

    username, uid, gid, home, stored, password_type, suspended, denied = row
    who = "%s%s" % (_show(username), via)
    if stored is None or stored == "" or stored == b"":
        refuse("empty stored password for %s: nobody can log in" % who)

    ok = passwords.verify(password_type, stored, password)
    if not passwords.is_weak(password_type, stored):
        spent.append(True)  # a real hash was computed; cheap schemes pay the dummy too
    if isinstance(suspended, str) and suspended.strip().upper() == "Y":
        refuse("account %s suspended" % who)
    if uid is not None and str(uid).strip() == "0":
        refuse("%s has uid 0, which may never log in" % who)
    denied = services.stored(denied)
    if services.barred(denied, service):
        refuse("%s is barred from %s (deny_services=%s)" % (
            who, services.canonical(service) or "logins for an unnamed service "
            "(%r)" % _show(service or ""), services.column_value(denied)))
    if not ok:
        problem = _shape_problem(password_type, stored)
        if problem is not None:
            spent.clear()  # verify() gave up early: refuse() spends the time
            log("auth: mailbox %s has an unusable stored password: %s" % (_show(username),
                                                                            problem))
            refuse("unusable stored password for %s: %s" % (who, problem))
        refuse("wrong password for %s" % who)

    # the password is right: a row qmail cannot use is trouble, not a bad login
    fault = mailbox_row_fault(username, uid, gid, home)
    if fault is not None:
        raise Refusal(EXIT_TEMP, "misconfigured mailbox row for %s: %s (uid=%r gid=%r "
                      "home=%r)" % (who, fault, uid, gid, home), cause="row")
    uid, gid = int(uid), int(gid)

    limiter.success(name, ip)
    if getattr(config, "rehash", False) and passwords.is_weak(password_type, stored):
        _rehash(directory, config, username, password_type, stored, password, log)
    return username, uid, gid, home, ""


def _rehash(directory, config, username, old_type, old_stored, password, log):
    """Store PASSWORD in default_scheme unless the row changed meanwhile. Never raises."""
    scheme = getattr(config, "default_scheme", "sha512-crypt") or "sha512-crypt"
    try:
        new_type, new_stored = passwords.hash_password(scheme, password)
        if passwords.is_weak(new_type, new_stored):
            return  # default_scheme is itself weak: nothing to gain
        # byte-exact comparison of the old value: the column's collation would call
        # 'Secret' and 'secret ' equal and overwrite a concurrent change
        directory.query(
            "UPDATE mailbox SET password = %s, password_type = %s "
            "WHERE username = %s AND CAST(password AS BINARY) = CAST(%s AS BINARY) "
            "AND password_type = %s",
            (new_stored, new_type, username, old_stored, old_type), write=True)
        rows = directory.query(
            "SELECT password FROM mailbox WHERE username = %s", (username,), write=True)
        if any(r[0] == new_stored for r in rows):
            log("auth: rehashed the %s password of %s to %s" % (old_type, _show(username),
                                                                  scheme))
        else:
            log("auth: rehash of %s skipped: its password changed meanwhile" % _show(username))
    except Exception as e:
        log("auth: rehash of %s failed (login still accepted): %s" % (_show(username), e))


# ---------------------------------------------------------------- the daemon's entry point

def _line(text, limit=400):
    """A response body: one line, no NUL, bounded."""
    text = " ".join(str(text).replace("\0", " ").split())
    return (text[:limit] + "...") if len(text) > limit else text


def attempt(directory, config, login, password, remoteip="", log=None, limiter=None,
            service=""):
    """One login, as the daemon answers it: (0, (user, uid, gid, home, shell)), or
    (1, reason) refused, or (111 or another code, reason) trouble. Never raises; logs
    one line per attempt (never the password)."""
    log = log or getattr(directory, "log", None) or (lambda msg: None)
    ip = _ip(remoteip)
    where = (" from %s" % ip) if ip else ""
    bar = services.canonical(service)
    if bar:
        where = " (%s)%s" % (bar, where)
    try:
        shown_login = _show(login)
    except Exception:
        shown_login = "?"
    try:
        user, uid, gid, home, shell = authenticate(directory, config, login, password,
                                                   remoteip, log=log, limiter=limiter,
                                                   service=service)
        if any("\0" in f for f in (user, home, shell)):
            raise Refusal(EXIT_TEMP, "mailbox row for %s contains NUL" % shown_login)
    except LoginRefused as r:
        log("auth refused %s%s: %s" % (shown_login, where, r.reason))
        return EXIT_REFUSED, _line(r.reason)
    except Refusal as r:
        code = r.code if isinstance(r.code, int) and 0 < r.code < 256 and r.code != 1 \
            else EXIT_TEMP
        message = r.message
        if "Unknown column" in message:  # the daemon is newer than the tables
            message += "; run `qmailsql migrate`"
        log("auth trouble %s%s: %s" % (shown_login, where, message))
        return code, _line(message)
    except Exception as e:  # a bug must never become a login
        log("auth trouble %s%s: internal error: %s: %s" % (shown_login, where,
                                                           type(e).__name__, e))
        return EXIT_TEMP, "internal error in qmailsqld (see its log)"
    log("auth ok %s%s: user %s uid %d" % (shown_login, where, _show(user), uid))
    return 0, (user, uid, gid, home, shell)


def response(directory, config, login, password, remoteip="", log=None, limiter=None,
             service=""):
    """(status, body) of the answer to the `auth` command (see the module doc)."""
    status, result = attempt(directory, config, login, password, remoteip, log, limiter,
                             service)
    if status:
        return status, result.encode("utf-8", "replace")
    user, uid, gid, home, shell = result
    fields = [os.fsencode(user), b"%d" % uid, b"%d" % gid, os.fsencode(home),
              os.fsencode(shell)]
    return 0, b"".join(f + b"\0" for f in fields)


# ---------------------------------------------------------------- qmailsql passwd

def set_password(directory, config, user, password, scheme=None):
    """Set USER's password (hashed in SCHEME, default config.default_scheme) through
    the write server. Returns (username as stored, password_type, scheme).
    Raises NoSuchMailbox, ValueError (bad scheme, empty password) or DB errors."""
    scheme = scheme or getattr(config, "default_scheme", None) or "sha512-crypt"
    name = user.lower()
    rows = directory.query("SELECT username FROM mailbox WHERE username = %s", (name,),
                           write=True)
    row = pick_row(rows, name)
    if row is None:
        raise NoSuchMailbox("no mailbox named %s" % _show(user))
    password_type, stored = passwords.hash_password(scheme, password)
    directory.query("UPDATE mailbox SET password = %s, password_type = %s WHERE username = %s",
                    (stored, password_type, row[0]), write=True)
    return row[0], password_type, scheme
