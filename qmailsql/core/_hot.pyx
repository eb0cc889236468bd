# cython: boundscheck=False, wraparound=False, cdivision=True
"""Cython hot path: the same names and behaviour as qmailsql/core/fallback.py.

Per-delivery work lives here: request framing, local-part splitting, the response
cache, the loop's dispatch of a request, and the control/sqlserver parser the daemon
runs at start and on reload.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdio cimport snprintf

from qmailsql.core.definitions import (CACHED, INLINE, KEY_ALIASES, PRIVILEGED, REFUSED,
                                       REPEATABLE, STALE, STALE_NOW, WORK, ConfigError,
                                       cache_times)
from qmailsql.core.errors import EXIT_TEMP, EXIT_USAGE, shown


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


UNTERMINATED = "request fields must each end in NUL"


cdef inline list _fields(bytes payload):
    """split_fields(), None for a payload whose last field lacks its NUL."""
    cdef Py_ssize_t n = len(payload)
    if n == 0 or (<const unsigned char *>payload)[n - 1] != 0:
        return None
    return payload[:n - 1].split(b"\0")


def split_fields(bytes payload):
    cdef list fields = _fields(payload)
    if fields is None:
        raise ValueError(UNTERMINATED)
    return fields


# ---------------------------------------------------------------------------
# qmailsqld's hot path: response framing and the response cache (same names and
# behaviour as in qmailsql/core/fallback.py; cache_times is definitions.py's).

def encode_response(long status, bytes body=b""):
    cdef bytes payload = b"%d\0" % status + body
    return b"%d:%s," % (len(payload), payload)


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


# ---------------------------------------------------------------------------
# qmailsqld's dispatch (same names and behaviour as in qmailsql/core/fallback.py).

MALFORMED = encode_response(EXIT_TEMP, b"malformed request")


cdef inline bytes _local_key(long uid, bytes command, bytes user, bytes homedir, bytes local,
                             bytes dash, bytes ext):
    cdef char prefix[32]
    cdef int n = snprintf(prefix, sizeof(prefix), "uid=%ld", uid)
    return b"\0".join([prefix[:n], command, user, homedir, local, dash, ext])


def local_cache_key(long uid, bytes command, bytes user, bytes homedir, bytes local,
                    bytes dash, bytes ext):
    return _local_key(uid, command, user, homedir, local, dash, ext)


cdef enum:
    CACHE_NONE, CACHE_SHARED, CACHE_PER_UID, CACHE_STALE


@cython.final
cdef class _Spec:
    # one row of the command table, as dispatch() reads it
    cdef object row          # the table's Command
    cdef object pool         # "inline", "db" or "auth"
    cdef object handler
    cdef bint inline
    cdef int cache
    cdef tuple nargs
    cdef Py_ssize_t asked    # nargs[-1]: the count named in messages
    cdef tuple fields        # names of the bounded fields
    cdef Py_ssize_t[8] limits
    cdef Py_ssize_t nbounded


cdef dict _CACHE_MODES = {None: CACHE_NONE, "shared": CACHE_SHARED,
                          "per-uid": CACHE_PER_UID, "stale": CACHE_STALE}


cdef class Dispatcher:
    cdef dict specs
    cdef readonly object table
    cdef readonly ResponseCache cache
    cdef object too_long
    cdef readonly Py_ssize_t max_field, max_homedir
    cdef readonly double stale_shortcut

    def __init__(self, table, ResponseCache cache, too_long, Py_ssize_t max_field,
                 Py_ssize_t max_homedir, double stale_shortcut):
        cdef _Spec spec
        cdef Py_ssize_t i
        self.table = table
        self.cache = cache
        self.too_long = too_long
        self.max_field = max_field
        self.max_homedir = max_homedir
        self.stale_shortcut = stale_shortcut
        self.specs = {}
        for name, row in table.items():
            spec = _Spec.__new__(_Spec)
            spec.row = row
            spec.pool = row.pool
            spec.handler = row.handler
            spec.inline = row.pool == "inline"
            spec.cache = _CACHE_MODES[row.cache]
            spec.nargs = tuple(row.nargs)
            if not spec.nargs:  # asked below is read without a bounds check
                raise ValueError("command %r: no field count" % name)
            spec.asked = spec.nargs[len(spec.nargs) - 1]  # (no wraparound here)
            # dispatch() reads the fields these need without a bounds check
            if min(spec.nargs) < {CACHE_PER_UID: 6, CACHE_STALE: 1}.get(spec.cache, 0):
                raise ValueError("command %r: too few fields for its cache key" % name)
            spec.fields = tuple(row.fields)
            if len(spec.fields) > 8:
                raise ValueError("command %r: more than 8 bounded fields" % name)
            spec.nbounded = len(spec.fields)
            for i in range(spec.nbounded):
                spec.limits[i] = max_homedir if spec.fields[i] == "homedir" else max_field
            self.specs[name] = spec

    cpdef tuple dispatch(self, bytes payload, long uid, long pid, bint privileged, commands,
                         double now, double db_failed_at):
        cdef object frame, found, stale = None
        cdef list fields
        cdef bytes command, key = payload, value
        cdef _Spec spec
        cdef Py_ssize_t i, n, nfields
        if privileged:
            frame = self.cache.get(payload, now)
            if frame is not None:
                return (CACHED, frame)
        fields = _fields(payload)
        if fields is None:
            return (REFUSED, MALFORMED, "malformed", "malformed request from uid %d pid %d: "
                    "%s" % (uid, pid, UNTERMINATED), True)
        command = fields[0]
        found = self.specs.get(command)
        if found is None:
            name = shown(command)
            return (REFUSED, encode_response(EXIT_USAGE, b"unknown command " +
                                             name.encode("ascii")),
                    "malformed", "unknown command %s from uid %d" % (name, uid), False)
        spec = <_Spec>found
        if not privileged and command not in commands:
            return (REFUSED, encode_response(EXIT_TEMP, b"qmailsqld refuses %s requests from "
                                             b"uid %d" % (command, uid)),
                    "command", "refused uid %d for %s (pid %d; allow it with %s)" % (
                        uid, command.decode("ascii"), pid, "QMAILSQL_DOVECOT_UIDS"
                        if spec.row.who == "dovecot" else "QMAILSQL_CLIENT_UIDS"), False)
        nfields = len(fields) - 1
        if nfields not in spec.nargs:
            return (REFUSED, encode_response(EXIT_TEMP, b"malformed %s request: %d fields, "
                                             b"expected %d" % (command, nfields, spec.asked)),
                    "malformed", "%s request from uid %d with %d fields instead of %d" % (
                        command.decode("ascii"), uid, nfields, spec.asked), False)
        if spec.inline:
            return (INLINE, spec.handler)
        n = spec.nbounded if spec.nbounded < nfields else nfields
        for i in range(n):
            value = <bytes>fields[i + 1]
            if len(value) > spec.limits[i]:
                problem = self.too_long(spec.fields[i], value, spec.limits[i])
                return (REFUSED, encode_response(EXIT_TEMP, problem.encode()), "size",
                        "refused %s from uid %d pid %d: %s" % (command.decode("ascii"), uid,
                                                               pid, problem), False)
        if spec.cache == CACHE_STALE:
            stale = self.cache.get_stale(payload, now)
            if stale is not None and now - db_failed_at < self.stale_shortcut:
                return (STALE_NOW, stale, "stale answer for getpw %s: the DB was unreachable "
                        "%.1fs ago" % (shown(fields[1]), now - db_failed_at))
        elif spec.cache != CACHE_NONE and not privileged:
            if spec.cache == CACHE_PER_UID:
                key = _local_key(uid, command, fields[1], fields[2], fields[3], fields[4],
                                 fields[5])
            frame = self.cache.get(key, now)
            if frame is not None:
                return (CACHED, frame)
        return (WORK, spec.pool, command, fields[1:], key, stale)
