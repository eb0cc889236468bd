"""Pure-Python reference of the hot path (the Cython module `_hot` has the same names).

`qmailsql.hotpath` picks one of the two; QMAILSQL_PUREPYTHON=1 forces this one.
tests/test_hotpath.py holds the two equal on random input.
"""

# Canonical key <- every spelling control/sqlserver accepts.
KEY_ALIASES = {
    "server": "server", "port": "port", "socket": "socket",
    "login": "login", "user": "login",
    "password": "password", "pass": "password", "password_file": "password_file",
    "db": "db", "database": "db",
    "connect_timeout": "connect_timeout", "read_timeout": "read_timeout",
    "ssl_ca": "ssl_ca", "ssl_cert": "ssl_cert", "ssl_key": "ssl_key",
    "ssl_verify": "ssl_verify", "write_server": "write_server",
    "auto_break": "auto_break", "userlen": "userlen",
    "funky_queries": "funky_queries", "magic_forwarding": "magic_forwarding",
    "system_users": "system_users", "cache_ttl": "cache_ttl",
    "negative_ttl": "negative_ttl", "stale_ttl": "stale_ttl",
    "rehash": "rehash", "default_scheme": "default_scheme",
    "quota_overflow": "quota_overflow", "quota_warn_percent": "quota_warn_percent",
}
REPEATABLE = frozenset(["server"])
_BLANK = b" \t\r"


class ConfigError(ValueError):
    """A control/sqlserver problem; str() names the file and line."""

    def __init__(self, filename, lineno, message):
        self.filename = filename
        self.lineno = lineno
        self.message = message
        where = "%s:%d" % (filename, lineno) if lineno else filename
        ValueError.__init__(self, "%s: %s" % (where, message))


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
    qmail-getpw does; ext keeps its case. Empty names are never candidates.
    """
    out = []
    brk = auto_break[0] if auto_break else -1
    n = len(local)
    p = n
    while p > 0:
        if p < userlen and (p == n or local[p] == brk):
            if p == n:
                out.append((local.lower(), b"", b""))
            else:
                out.append((local[:p].lower(), b"-", local[p + 1:]))
        p -= 1
    return out


def encode_frame(fields):
    """A netstring whose payload is each field followed by NUL (csrc/PROTOCOL.md)."""
    payload = b"\0".join(fields) + b"\0"
    return b"%d:%s," % (len(payload), payload)


def decode_frame(buf, limit=65536):
    """Split one frame off the front of BUF.

    Returns (payload, bytes consumed), or (None, 0) when more bytes are needed.
    Raises ValueError for a malformed or oversized frame.
    """
    n = len(buf)
    i = 0
    length = 0
    while i < n:
        c = buf[i]
        if c == 0x3A:
            break
        if not (0x30 <= c <= 0x39) or i >= 6:
            raise ValueError("malformed frame length")
        length = length * 10 + c - 0x30
        i += 1
    else:
        return None, 0
    if i == 0:
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
# qmailsqld's hot path: response framing, the response cache and its policy.
# (qmailsql/_hot.pyx has the same names; tests/test_hotpath_daemon.py holds
# the two equal.)

def encode_response(status, body=b""):
    """One response frame: netstring of `status\\0body` (csrc/PROTOCOL.md)."""
    payload = b"%d\0" % status + body
    return b"%d:%s," % (len(payload), payload)


def cache_times(request, status, body, cache_ttl, negative_ttl, stale_ttl):
    """How long qmailsqld may keep the answer (STATUS, BODY) to REQUEST (a payload).

    Returns (ttl, stale): the answer is fresh for ttl seconds and may then be given
    for stale more seconds while the DB is unreachable; ttl 0 means never cache.
    getpw: a real user lives cache_ttl (+ stale_ttl); the alias user's answer for
    an unknown local (user `alias`, dash `-`, ext = the whole local) and 116 live
    negative_ttl with no stale time, so a new user is not bounced for long and an
    unknown address never goes to the alias user because the DB is down.
    local, localq and userdb (Dovecot's): cache_ttl, no stale time. Everything else
    (auth, passdb, local-confirm, 111, ...): never.
    """
    if request[:6] == b"getpw\0":
        if status == 0:
            fields = body.split(b"\0")
            if len(fields) != 7 or fields[6] != b"":
                return (0, 0)
            n = len(request)
            local = request[6:n - 1] if n > 6 else b""
            if fields[0] == b"alias" and fields[4] == b"-" and fields[5] == local:
                return (negative_ttl, 0)
            return (cache_ttl, stale_ttl)
        if status == 116:
            return (negative_ttl, 0)
        return (0, 0)
    if request[:6] == b"local\0" or request[:7] in (b"userdb\0", b"localq\0"):
        if status == 0:
            return (cache_ttl, 0)
        return (0, 0)
    return (0, 0)


class ResponseCache:
    """Response frames keyed by request payload, each fresh until / stale until a time.

    Bounded: when max_entries is reached the older half (by insertion) is dropped.
    clear() bumps `generation`, so answers computed before a flush are not stored.
    """

    def __init__(self, max_entries=100000):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.generation = 0
        self._d = {}

    def __len__(self):
        return len(self._d)

    def get(self, key, now):
        """The response for KEY if it is still fresh at NOW, else None."""
        e = self._d.get(key)
        if e is not None and now < e[1]:
            return e[0]
        return None

    def get_stale(self, key, now):
        """The response for KEY if it may still be given while the DB is down, else None."""
        e = self._d.get(key)
        if e is not None and now < e[2]:
            return e[0]
        return None

    def put(self, key, response, now, ttl, stale=0):
        """Keep RESPONSE for KEY (fresh ttl seconds, then stale more); False if ttl <= 0."""
        if ttl <= 0:
            return False
        d = self._d
        if key in d:
            del d[key]
        elif len(d) >= self.max_entries:
            self._evict()
            d = self._d
        fresh = now + ttl
        d[key] = (response, fresh, fresh + (stale if stale > 0 else 0))
        return True

    def _evict(self):
        keep = self.max_entries // 2
        items = list(self._d.items())
        self._d = dict(items[len(items) - keep:]) if keep else {}

    def clear(self):
        self._d = {}
        self.generation += 1
