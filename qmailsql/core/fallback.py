"""Pure-Python reference of the hot path (the Cython module `_hot` has the same names).

`qmailsql.core.hotpath` picks one of the two; QMAILSQL_PUREPYTHON=1 forces this one.
tests/test_hotpath.py holds the two equal on random input.
"""

from qmailsql.core.definitions import (  # noqa: F401 (cache_times: one for both builds)
    CACHED, INLINE, KEY_ALIASES, PRIVILEGED, REFUSED, REPEATABLE, STALE, STALE_NOW, WORK,
    ConfigError, cache_times)
from qmailsql.core.errors import EXIT_TEMP, EXIT_USAGE, shown

_BLANK = b" \t\r"


def _unquote(raw, filename, lineno):
    """Value text after the separator: quoted (with \\ escapes) or bare up to a comment."""
    q = raw[:1]
    if q == b'"' or q == b"'":
        out = bytearray()
        i = 1
        n = len(raw)
        while i < n:
            c = raw[i]
            if c == q[0]:
                rest = raw[i + 1:].strip(_BLANK)
                if rest and rest[:1] != b"#":
                    raise ConfigError(filename, lineno, "text after the closing quote")
                return bytes(out)
            if c == 0x5C and q == b'"' and i + 1 < n:  # backslash escapes in "..."
                i += 1
                c = raw[i]
            out.append(c)
            i += 1
        raise ConfigError(filename, lineno, "unterminated quote")
    # bare value: a '#' after white space starts a comment
    i = 0
    n = len(raw)
    while i < n:
        if raw[i] == 0x23 and (i == 0 or raw[i - 1] in (0x20, 0x09)):
            raw = raw[:i]
            break
        i += 1
    return raw.rstrip(_BLANK)


def parse_sqlserver(data, filename="control/sqlserver"):
    """Parse control/sqlserver bytes into {canonical key: str} ('server': list of str).

    Accepts `key value` and `key=value` with any spaces or tabs around either,
    # comments, blank lines, optional quotes. Unknown or repeated keys are errors.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    result = {}
    seen_at = {}
    lineno = 0
    for line in data.split(b"\n"):
        lineno += 1
        line = line.strip(_BLANK)
        if not line or line[:1] == b"#":
            continue
        i = 0
        n = len(line)
        while i < n and (0x61 <= (line[i] | 0x20) <= 0x7A or 0x30 <= line[i] <= 0x39
                         or line[i] == 0x5F):
            i += 1
        if i == 0:
            raise ConfigError(filename, lineno, "expected `key value` or `key=value`")
        word = line[:i].decode("ascii").lower()
        j = i
        while j < n and line[j] in (0x20, 0x09):
            j += 1
        if j < n and line[j] == 0x3D:
            j += 1
            while j < n and line[j] in (0x20, 0x09):
                j += 1
        elif j == i and j < n:
            raise ConfigError(filename, lineno, "expected white space or `=` after %r" % word)
        key = KEY_ALIASES.get(word)
        if key is None:
            raise ConfigError(filename, lineno, "unknown key %r (known keys: %s)"
                              % (word, ", ".join(sorted(KEY_ALIASES))))
        raw = line[j:]
        if not raw or raw[:1] == b"#":
            raise ConfigError(filename, lineno, "key %r has no value" % word)
        value = _unquote(raw, filename, lineno)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(filename, lineno, "value of %r is not valid UTF-8" % word)
        if key in REPEATABLE:
            result.setdefault(key, []).append(text)
        elif key in seen_at:
            raise ConfigError(filename, lineno, "%r given twice (first on line %d)"
                              % (key, seen_at[key]))
        else:
            result[key] = text
        seen_at.setdefault(key, lineno)
    return result


def candidates(local, auto_break=b"-", userlen=32):
    """The user names qmail-getpw tries for LOCAL, longest first.

    Yields (lower-cased name, dash, ext) for the whole of LOCAL and for each prefix
    ending just before an auto_break character, each shorter than userlen, as stock
    qmail-getpw does; ext keeps its case. Empty names are never candidates. Linear in
    len(LOCAL): only the first userlen positions can end a prefix.
    """
    out = []
    brk = auto_break[0] if auto_break else -1
    n = len(local)
    if 0 < n < userlen:
        out.append((local.lower(), b"", b""))
    p = min(n, userlen) - 1
    while p > 0:
        if local[p] == brk:
            out.append((local[:p].lower(), b"-", local[p + 1:]))
        p -= 1
    return out


def encode_frame(fields):
    """A netstring whose payload is each field followed by NUL (csrc/PROTOCOL.md)."""
    payload = b"\0".join(fields) + b"\0"
    return b"%d:%s," % (len(payload), payload)


def decode_frame(buf, limit=65536, start=0):
    """Split one frame off BUF at offset START (bytes or bytearray; nothing is copied
    but the payload).

    Returns (payload, offset just after the frame), or (None, 0) when more bytes are
    needed. Raises ValueError for a malformed or oversized frame.
    """
    n = len(buf)
    i = start
    length = 0
    while i < n:
        c = buf[i]
        if c == 0x3A:
            break
        if not (0x30 <= c <= 0x39) or i - start >= 6:
            raise ValueError("malformed frame length")
        length = length * 10 + c - 0x30
        i += 1
    else:
        return None, 0
    if i == start:
        raise ValueError("malformed frame length")
    if length > limit:
        raise ValueError("frame of %d bytes exceeds the limit of %d" % (length, limit))
    end = i + 1 + length
    if n <= end:
        return None, 0
    if buf[end] != 0x2C:
        raise ValueError("frame not terminated by ','")
    return bytes(buf[i + 1:end]), end + 1


def split_fields(payload):
    """NUL-terminated fields of a request payload; ValueError if the last lacks its NUL."""
    if not payload or payload[-1] != 0:
        raise ValueError("request fields must each end in NUL")
    return payload[:-1].split(b"\0")


# ---------------------------------------------------------------------------
# qmailsqld's hot path: response framing and the response cache (its policy,
# cache_times, is in definitions.py: once per worker answer, not per request).
# (qmailsql/core/_hot.pyx has the same names; tests/test_hotpath_daemon.py holds
# the two equal.)

def encode_response(status, body=b""):
    """One response frame: netstring of `status\\0body` (csrc/PROTOCOL.md)."""
    payload = b"%d\0" % status + body
    return b"%d:%s," % (len(payload), payload)


def entry_cost(key, response):
    """What one cache entry counts against its share: 1, plus 1 per kB it holds."""
    return 1 + ((len(key) + len(response)) >> 10)


SHARDS = 64  # the cache's index is this many dicts: one that grows pauses for its size only

# a cache entry: a list, with the links of the two lists it is in (by key: no cycles)
_RESPONSE, _FRESH, _STALE, _SHARE, _COST, _PREV, _NEXT, _UPREV, _UNEXT = range(9)


class ResponseCache:
    """Response frames keyed by request payload, each fresh until / stale until a time.

    Shares, so that no local user can evict what deliveries depend on: privileged
    peers' answers with a stale time (the stale store, answers for DB outages) and
    without one (negative answers, `local` lines) each have max_entries; each
    unprivileged uid (OWNER of put) has uid_entries (default max_entries // 100), all
    of them together unprivileged_entries (default max_entries). An entry counts
    entry_cost(): 1, plus 1 per kB, so memory is bounded too. A full share drops its
    oldest entry (by insertion; re-putting a key makes it the newest).

    Every operation is O(1) with no pause that grows with the cache: each share is a
    list linked through its entries (oldest first), and the index is SHARDS dicts, so
    a dict that grows or compacts holds a SHARDS-th of the entries. clear() bumps
    `generation`, so answers computed before a flush are not stored.
    """

    def __init__(self, max_entries=100000, uid_entries=0, unprivileged_entries=0):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.uid_entries = uid_entries if uid_entries > 0 else max(1, max_entries // 100)
        self.unprivileged_entries = (unprivileged_entries if unprivileged_entries > 0
                                     else max_entries)
        self.generation = 0
        self._reset()

    def _reset(self):
        self._tables = [{} for _ in range(SHARDS)]  # key -> entry, by hash(key)
        self._size = 0
        self._shares = {}                           # share -> [oldest key, newest key, cost]
        self._unprivileged = [None, None, 0]        # every unprivileged uid's entries

    def _table(self, key):
        return self._tables[hash(key) & (SHARDS - 1)]

    def __len__(self):
        return self._size

    def share_cost(self, owner):
        """What OWNER's share holds now (PRIVILEGED, STALE or a uid), in entry_cost()s."""
        share = self._shares.get(owner)
        return share[2] if share is not None else 0

    def get(self, key, now):
        """The response for KEY if it is still fresh at NOW, else None."""
        e = self._table(key).get(key)
        if e is not None and now < e[_FRESH]:
            return e[_RESPONSE]
        return None

    def get_stale(self, key, now):
        """The response for KEY if it may still be given while the DB is down, else None."""
        e = self._table(key).get(key)
        if e is not None and now < e[_STALE]:
            return e[_RESPONSE]
        return None

    def put(self, key, response, now, ttl, stale=0, owner=PRIVILEGED):
        """Keep RESPONSE for KEY (fresh ttl seconds, then stale more) in OWNER's share
        (PRIVILEGED, or the uid of an unprivileged peer: no stale time then). False if
        not kept: ttl <= 0, or bigger than the whole share."""
        if ttl <= 0:
            return False
        table = self._table(key)
        old = table.pop(key, None)
        if old is not None:
            self._size -= 1
            self._unlink(old)
        if owner >= 0:
            share_id, cap, stale = owner, min(self.uid_entries, self.unprivileged_entries), 0
        elif stale > 0:
            share_id, cap = STALE, self.max_entries
        else:
            share_id, cap = PRIVILEGED, self.max_entries
        cost = entry_cost(key, response)
        if cost > cap:
            return False
        share = self._shares.get(share_id)
        if share is None:
            share = self._shares[share_id] = [None, None, 0]
        fresh = now + ttl
        e = [response, fresh, fresh + (stale if stale > 0 else 0), share_id, cost,
             None, None, None, None]
        table[key] = e
        self._size += 1
        self._append(share, key, e, _PREV, _NEXT)
        if owner >= 0:
            self._append(self._unprivileged, key, e, _UPREV, _UNEXT)
        while share[2] > cap:
            self._drop(share[0])
        while self._unprivileged[2] > self.unprivileged_entries:
            self._drop(self._unprivileged[0])
        return True

    def _append(self, chain, key, e, prev, next_):
        """Link entry E (KEY) in at the new end of CHAIN ([oldest, newest, cost])."""
        newest = chain[1]
        e[prev] = newest
        if newest is None:
            chain[0] = key
        else:
            self._table(newest)[newest][next_] = key
        chain[1] = key
        chain[2] += e[_COST]

    def _remove(self, chain, e, prev, next_):
        """Link entry E out of CHAIN."""
        p, n = e[prev], e[next_]
        if p is None:
            chain[0] = n
        else:
            self._table(p)[p][next_] = n
        if n is None:
            chain[1] = p
        else:
            self._table(n)[n][prev] = p
        chain[2] -= e[_COST]

    def _drop(self, key):
        e = self._table(key).pop(key)
        self._size -= 1
        self._unlink(e)

    def _unlink(self, e):
        """Take entry E (just out of the index) out of its share's accounts."""
        share_id = e[_SHARE]
        share = self._shares[share_id]
        self._remove(share, e, _PREV, _NEXT)
        if share_id >= 0:
            self._remove(self._unprivileged, e, _UPREV, _UNEXT)
            if share[0] is None:
                del self._shares[share_id]

    def clear(self):
        self._reset()
        self.generation += 1


# ---------------------------------------------------------------------------
# qmailsqld's dispatch: from a request payload to what the loop does with it.

MALFORMED = encode_response(EXIT_TEMP, b"malformed request")


def local_cache_key(uid, command, user, homedir, local, dash, ext):
    """The cache key of unprivileged peer UID's `local`/`localq` answer: the uid (a worker
    checked the account for this very uid) and every field the answer depends on, not
    the domain (aliases.py ignores it), so getpw may fill it before the domain is known.
    The fields hold no NUL: the key is unambiguous."""
    return b"uid=%d\0" % uid + b"\0".join([command, user, homedir, local, dash, ext])


class Dispatcher:
    """The loop's per-request decision, with its one side effect on the cache: lookups.

    TABLE is the daemon's command table (name -> Command, qmailsql/daemon/commands.py),
    CACHE its ResponseCache, TOO_LONG(name, value, limit) says why a field is too long
    (resolve.too_long: words the refusal of a field longer than its bound); the table's
    bounded fields may be MAX_FIELD bytes long, homedir MAX_HOMEDIR. Within STALE_SHORTCUT seconds of a DB failure a getpw with a stale
    answer gets it at once. dispatch() returns a tuple: see definitions.CACHED etc.
    """

    def __init__(self, table, cache, too_long, max_field, max_homedir, stale_shortcut):
        self.table = table
        self.cache = cache
        self.too_long = too_long
        self.max_field = max_field
        self.max_homedir = max_homedir
        self.stale_shortcut = stale_shortcut

    def dispatch(self, payload, uid, pid, privileged, commands, now, db_failed_at):
        """What to do with request PAYLOAD from peer UID/PID (PRIVILEGED: in the client
        uid list; else it may send COMMANDS) at monotonic time NOW; DB_FAILED_AT: when a
        worker last saw the DB fail."""
        cache = self.cache
        if privileged:
            frame = cache.get(payload, now)
            if frame is not None:
                return (CACHED, frame)
        try:
            fields = split_fields(payload)
        except ValueError as e:
            return (REFUSED, MALFORMED, "malformed", "malformed request from uid %d pid %d: "
                    "%s" % (uid, pid, e), True)
        command = fields[0]
        args = fields[1:]
        spec = self.table.get(command)
        if spec is None:
            name = shown(command)
            return (REFUSED, encode_response(EXIT_USAGE, b"unknown command " +
                                             name.encode("ascii")),
                    "malformed", "unknown command %s from uid %d" % (name, uid), False)
        if not privileged and command not in commands:
            return (REFUSED, encode_response(EXIT_TEMP, b"qmailsqld refuses %s requests from "
                                             b"uid %d" % (command, uid)),
                    "command", "refused uid %d for %s (pid %d; allow it with %s)" % (
                        uid, command.decode("ascii"), pid, "QMAILSQL_DOVECOT_UIDS"
                        if spec.who == "dovecot" else "QMAILSQL_CLIENT_UIDS"), False)
        nargs = spec.nargs
        if len(args) not in nargs:
            return (REFUSED, encode_response(EXIT_TEMP, b"malformed %s request: %d fields, "
                                             b"expected %d" % (command, len(args), nargs[-1])),
                    "malformed", "%s request from uid %d with %d fields instead of %d" % (
                        command.decode("ascii"), uid, len(args), nargs[-1]), False)
        if spec.pool == "inline":
            return (INLINE, spec.handler)
        for name, value in zip(spec.fields, args):
            limit = self.max_homedir if name == "homedir" else self.max_field
            if len(value) > limit:
                problem = self.too_long(name, value, limit)
                return (REFUSED, encode_response(EXIT_TEMP, problem.encode()), "size",
                        "refused %s from uid %d pid %d: %s" % (command.decode("ascii"), uid,
                                                               pid, problem), False)
        key = payload
        stale = None
        how = spec.cache
        if how == "stale":
            stale = cache.get_stale(payload, now)
            if stale is not None and now - db_failed_at < self.stale_shortcut:
                # the DB failed a moment ago: no need to make this one wait for it too
                return (STALE_NOW, stale, "stale answer for getpw %s: the DB was unreachable "
                        "%.1fs ago" % (shown(args[0]), now - db_failed_at))
        elif how is not None and not privileged:
            if how == "per-uid":
                # a worker checks that USER is this peer's own account
                key = local_cache_key(uid, command, *args[:5])
            frame = cache.get(key, now)  # "shared" (Dovecot's userdb): anyone's answer
            if frame is not None:
                return (CACHED, frame)
        return (WORK, spec.pool, command, args, key, stale)
