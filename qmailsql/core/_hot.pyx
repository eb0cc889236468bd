# cython: boundscheck=False, wraparound=False, cdivision=True
"""Cython hot path: the same names and behaviour as qmailsql/core/fallback.py.

Per-delivery work lives here: request framing, local-part splitting, and the
control/sqlserver parser the daemon runs at start and on reload.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize

from qmailsql.core.definitions import PRIVILEGED, STALE, ConfigError, KEY_ALIASES, REPEATABLE


cdef inline bint _blank(unsigned char c):
    return c == 0x20 or c == 0x09 or c == 0x0D


cdef inline bint _keychar(unsigned char c):
    return (0x61 <= (c | 0x20) <= 0x7A) or (0x30 <= c <= 0x39) or c == 0x5F


cdef bytes _unquote(bytes raw, filename, int lineno):
    cdef const unsigned char *s = raw
    cdef Py_ssize_t n = len(raw), i, k
    cdef unsigned char q
    cdef bytearray out
    if n and (s[0] == 0x22 or s[0] == 0x27):
        q = s[0]
        out = bytearray()
        i = 1
        while i < n:
            if s[i] == q:
                k = i + 1
                while k < n and _blank(s[k]):
                    k += 1
                if k < n and s[k] != 0x23:
                    raise ConfigError(filename, lineno, "text after the closing quote")
                return bytes(out)
            if s[i] == 0x5C and q == 0x22 and i + 1 < n:
                i += 1
            out.append(s[i])
            i += 1
        raise ConfigError(filename, lineno, "unterminated quote")
    i = 0
    while i < n:
        if s[i] == 0x23 and (i == 0 or s[i - 1] == 0x20 or s[i - 1] == 0x09):
            n = i
            break
        i += 1
    while n > 0 and _blank(s[n - 1]):
        n -= 1
    return raw[:n]


def parse_sqlserver(data, filename="control/sqlserver"):
    if isinstance(data, str):
        data = data.encode("utf-8")
    cdef dict result = {}
    cdef dict seen_at = {}
    cdef int lineno = 0
    cdef bytes line, raw
    cdef const unsigned char *s
    cdef Py_ssize_t a, b, i, j, n
    for line in (<bytes>data).split(b"\n"):
        lineno += 1
        s = line
        a = 0
        b = len(line)
        while a < b and _blank(s[a]):
            a += 1
        while b > a and _blank(s[b - 1]):
            b -= 1
        if a == b or s[a] == 0x23:
            continue
        i = a
        while i < b and _keychar(s[i]):
            i += 1
        if i == a:
            raise ConfigError(filename, lineno, "expected `key value` or `key=value`")
        word = line[a:i].decode("ascii").lower()
        j = i
        while j < b and (s[j] == 0x20 or s[j] == 0x09):
            j += 1
        if j < b and s[j] == 0x3D:
            j += 1
            while j < b and (s[j] == 0x20 or s[j] == 0x09):
                j += 1
        elif j == i and j < b:
            raise ConfigError(filename, lineno, "expected white space or `=` after %r" % word)
        key = KEY_ALIASES.get(word)
        if key is None:
            raise ConfigError(filename, lineno, "unknown key %r (known keys: %s)"
                              % (word, ", ".join(sorted(KEY_ALIASES))))
        if j == b or s[j] == 0x23:
            raise ConfigError(filename, lineno, "key %r has no value" % word)
        raw = line[j:b]
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
        if key not in seen_at:
            seen_at[key] = lineno
    return result


def candidates(bytes local, bytes auto_break=b"-", Py_ssize_t userlen=32):
    cdef list out = []
    cdef const unsigned char *s = local
    cdef Py_ssize_t n = len(local), p
    cdef int brk = auto_break[0] if auto_break else -1
    if 0 < n < userlen:
        out.append((local.lower(), b"", b""))
    p = (n if n < userlen else userlen) - 1
    while p > 0:
        if s[p] == brk:
            out.append((local[:p].lower(), b"-", local[p + 1:]))
        p -= 1
    return out


def encode_frame(fields):
    cdef bytes payload = b"\0".join(fields) + b"\0"
    return b"%d:%s," % (len(payload), payload)


def decode_frame(buf, Py_ssize_t limit=65536, Py_ssize_t start=0):
    cdef const unsigned char[:] view = buf
    cdef Py_ssize_t n = view.shape[0], i = start, length = 0, end
    cdef unsigned char c
    if start < 0:
        raise ValueError("negative start")
    while i < n:
        c = view[i]
        if c == 0x3A:
            break
        if c < 0x30 or c > 0x39 or i - start >= 6:
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
    if view[end] != 0x2C:
        raise ValueError("frame not terminated by ','")
    return PyBytes_FromStringAndSize(<const char *>&view[i + 1], length), end + 1


def split_fields(bytes payload):
    cdef Py_ssize_t n = len(payload)
    if n == 0 or (<const unsigned char *>payload)[n - 1] != 0:
        raise ValueError("request fields must each end in NUL")
    return payload[:n - 1].split(b"\0")


# ---------------------------------------------------------------------------
# qmailsqld's hot path: response framing, the response cache and its policy
# (same names and behaviour as in qmailsql/core/fallback.py).

def encode_response(long status, bytes body=b""):
    cdef bytes payload = b"%d\0" % status + body
    return b"%d:%s," % (len(payload), payload)


def cache_times(bytes request, long status, bytes body, cache_ttl, negative_ttl, stale_ttl):
    cdef Py_ssize_t n = len(request)
    cdef bytes head = request[:6]
    cdef list fields
    cdef bytes local
    if head == b"getpw\0":
        if status == 0:
            fields = body.split(b"\0")
            if len(fields) != 7 or len(<bytes>fields[6]) != 0:
                return (0, 0)
            local = request[6:n - 1] if n > 6 else b""
            if fields[0] == b"alias" and fields[4] == b"-" and fields[5] == local:
                return (negative_ttl, 0)
            return (cache_ttl, stale_ttl)
        if status == 116:
            return (negative_ttl, 0)
        return (0, 0)
    if head == b"local\0" or request[:7] == b"userdb\0" or request[:7] == b"localq\0":
        if status == 0:
            return (cache_ttl, 0)
        return (0, 0)
    return (0, 0)


cdef enum:
    SHARDS = 64  # as in fallback.py


cpdef Py_ssize_t entry_cost(bytes key, bytes response):
    return 1 + ((len(key) + len(response)) >> 10)


@cython.no_gc
@cython.final
cdef class _Entry:
    # bytes, floats and ints only: never in a cycle, so the GC need not walk 100,000s
    cdef bytes response
    cdef double fresh
    cdef double stale
    cdef long share
    cdef Py_ssize_t cost
    cdef bytes prev, next, uprev, unext  # neighbours in the share's and the uids' lists


@cython.no_gc
@cython.final
cdef class _Chain:
    cdef bytes oldest, newest
    cdef Py_ssize_t cost


cdef class ResponseCache:
    cdef list _tables
    cdef Py_ssize_t _size
    cdef dict _shares
    cdef _Chain _unprivileged
    cdef public Py_ssize_t max_entries
    cdef public Py_ssize_t uid_entries
    cdef public Py_ssize_t unprivileged_entries
    cdef public long generation

    def __init__(self, Py_ssize_t max_entries=100000, Py_ssize_t uid_entries=0,
                 Py_ssize_t unprivileged_entries=0):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.uid_entries = uid_entries if uid_entries > 0 else max(1, max_entries // 100)
        self.unprivileged_entries = (unprivileged_entries if unprivileged_entries > 0
                                     else max_entries)
        self.generation = 0
        self._reset()

    cdef _reset(self):
        self._tables = [{} for _ in range(SHARDS)]
        self._size = 0
        self._shares = {}
        self._unprivileged = _Chain.__new__(_Chain)

    cdef inline dict _table(self, bytes key):
        return <dict>self._tables[hash(key) & (SHARDS - 1)]

    cdef inline _Entry _at(self, bytes key):
        return <_Entry>self._table(key)[key]

    def __len__(self):
        return self._size

    def share_cost(self, long owner):
        cdef object share = self._shares.get(owner)
        return (<_Chain>share).cost if share is not None else 0

    cpdef object get(self, bytes key, double now):
        cdef object e = self._table(key).get(key)
        if e is not None and now < (<_Entry>e).fresh:
            return (<_Entry>e).response
        return None

    cpdef object get_stale(self, bytes key, double now):
        cdef object e = self._table(key).get(key)
        if e is not None and now < (<_Entry>e).stale:
            return (<_Entry>e).response
        return None

    cpdef bint put(self, bytes key, bytes response, double now, double ttl, double stale=0,
                   long owner=PRIVILEGED):
        cdef _Entry e
        cdef _Chain share
        cdef object old, found
        cdef dict table
        cdef long share_id
        cdef Py_ssize_t cap, cost
        if ttl <= 0:
            return False
        table = self._table(key)
        old = table.pop(key, None)
        if old is not None:
            self._size -= 1
            self._unlink(<_Entry>old)
        if owner >= 0:
            share_id = owner
            cap = min(self.uid_entries, self.unprivileged_entries)
            stale = 0
        elif stale > 0:
            share_id = STALE
            cap = self.max_entries
        else:
            share_id = PRIVILEGED
            cap = self.max_entries
        cost = entry_cost(key, response)
        if cost > cap:
            return False
        found = self._shares.get(share_id)
        if found is None:
            share = _Chain.__new__(_Chain)
            self._shares[share_id] = share
        else:
            share = <_Chain>found
        e = _Entry.__new__(_Entry)
        e.response = response
        e.fresh = now + ttl
        e.stale = e.fresh + (stale if stale > 0 else 0)
        e.share = share_id
        e.cost = cost
        table[key] = e
        self._size += 1
        self._append(share, key, e, False)
        if owner >= 0:
            self._append(self._unprivileged, key, e, True)
        while share.cost > cap:
            self._drop(share.oldest)
        while self._unprivileged.cost > self.unprivileged_entries:
            self._drop(self._unprivileged.oldest)
        return True

    cdef _append(self, _Chain chain, bytes key, _Entry e, bint uids):
        cdef bytes newest = chain.newest
        if uids:
            e.uprev = newest
        else:
            e.prev = newest
        if newest is None:
            chain.oldest = key
        elif uids:
            self._at(newest).unext = key
        else:
            self._at(newest).next = key
        chain.newest = key
        chain.cost += e.cost

    cdef _remove(self, _Chain chain, _Entry e, bint uids):
        cdef bytes p = e.uprev if uids else e.prev
        cdef bytes n = e.unext if uids else e.next
        if p is None:
            chain.oldest = n
        elif uids:
            self._at(p).unext = n
        else:
            self._at(p).next = n
        if n is None:
            chain.newest = p
        elif uids:
            self._at(n).uprev = p
        else:
            self._at(n).prev = p
        chain.cost -= e.cost

    cdef _drop(self, bytes key):
        cdef _Entry e = <_Entry>self._table(key).pop(key)
        self._size -= 1
        self._unlink(e)

    cdef _unlink(self, _Entry e):
        cdef _Chain share = <_Chain>self._shares[e.share]
        self._remove(share, e, False)
        if e.share >= 0:
            self._remove(self._unprivileged, e, True)
            if share.oldest is None:
                del self._shares[e.share]

    def clear(self):
        self._reset()
        self.generation += 1
