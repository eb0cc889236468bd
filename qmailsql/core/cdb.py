"""A small cdb writer and reader (the format of cr.yp.to/cdb/cdb.txt).

qmail-smtpd looks hosts up in control/morercpthosts.cdb; `qmailsql sync` writes that
file with `write()` (as qmail-newmrh would) and `qmailsql doctor` reads it back with
`Reader`.

Layout: a 2048-byte header of 256 (position, slots) pairs, then the records
(key length, data length, key, data), then 256 hash tables of (hash, position) slots.
Every number is a little-endian 32-bit unsigned integer; a file must stay under 4 GiB.
"""
import os
import struct

_PAIR = struct.Struct("<II")
HEADER = 2048
LIMIT = 0xFFFFFFFF


class CDBError(ValueError):
    """The data cannot be written as cdb, or a file is not a valid cdb."""


def cdb_hash(key):
    """The cdb hash: h = 5381; h = ((h << 5) + h) ^ c for every byte, modulo 2**32."""
    h = 5381
    for c in key:
        h = (((h << 5) + h) & LIMIT) ^ c
    return h


def make(pairs):
    """The bytes of a cdb holding PAIRS, an iterable of (key, data) bytes, in order.

    Repeated keys are all stored (a lookup finds the first one added)."""
    records = bytearray()
    tables = [[] for _ in range(256)]
    pos = HEADER
    for key, data in pairs:
        key, data = bytes(key), bytes(data)
        h = cdb_hash(key)
        tables[h & 255].append((h, pos))
        records += _PAIR.pack(len(key), len(data)) + key + data
        pos += 8 + len(key) + len(data)
        if pos > LIMIT:
            raise CDBError("cdb would exceed 4 GiB")
    header = bytearray()
    out = bytearray()
    for entries in tables:
        slots = 2 * len(entries)
        header += _PAIR.pack(pos + len(out), slots)
        table = [(0, 0)] * slots
        for h, rpos in entries:
            i = (h >> 8) % slots
            while table[i][1]:  # a used slot always has a non-zero position (>= 2048)
                i = (i + 1) % slots
            table[i] = (h, rpos)
        for h, rpos in table:
            out += _PAIR.pack(h, rpos)
    if pos + len(out) > LIMIT:
        raise CDBError("cdb would exceed 4 GiB")
    return bytes(header) + bytes(records) + bytes(out)


def write(path, pairs, mode=0o644):
    """Write a cdb of PAIRS to PATH atomically (temporary file, fsync, rename)."""
    data = make(pairs)
    atomic_write(path, data, mode)
    return data


def atomic_write(path, data, mode=0o644):
    """Replace PATH by DATA: write a temporary file beside it, fsync, rename, fsync dir.

    An existing file's mode and owner are kept; MODE is used for a new file."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.tmp.%d" % (os.path.basename(path), os.getpid()))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if st is not None:
            os.fchmod(fd, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
        else:
            os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Reader:
    """Lookups in cdb bytes: `get(key)`, `get_all(key)`, `items()`, `key in reader`."""

    def __init__(self, data):
        self.data = bytes(data)
        if len(self.data) < HEADER:
            raise CDBError("not a cdb: %d bytes, shorter than the 2048-byte header"
                           % len(self.data))
        self.tables = [_PAIR.unpack_from(self.data, 8 * i) for i in range(256)]
        for tpos, slots in self.tables:
            if tpos + 8 * slots > len(self.data) or tpos < HEADER:
                raise CDBError("not a cdb: hash table outside the file")

    @classmethod
    def open(cls, path):
        with open(path, "rb") as f:
            return cls(f.read())

    def _record(self, pos):
        if pos + 8 > len(self.data):
            raise CDBError("truncated cdb record at %d" % pos)
        klen, dlen = _PAIR.unpack_from(self.data, pos)
        end = pos + 8 + klen + dlen
        if end > len(self.data):
            raise CDBError("truncated cdb record at %d" % pos)
        return self.data[pos + 8:pos + 8 + klen], self.data[pos + 8 + klen:end], end

    def get_all(self, key):
        key = bytes(key)
        h = cdb_hash(key)
        tpos, slots = self.tables[h & 255]
        out = []
        if not slots:
            return out
        i = (h >> 8) % slots
        for _ in range(slots):
            sh, rpos = _PAIR.unpack_from(self.data, tpos + 8 * i)
            if rpos == 0:
                break
            if sh == h:
                k, d, _ = self._record(rpos)
                if k == key:
                    out.append(d)
            i = (i + 1) % slots
        return out

    def get(self, key, default=None):
        found = self.get_all(key)
        return found[0] if found else default

    def __contains__(self, key):
        return bool(self.get_all(key))

    def items(self):
        """Every (key, data) in the order written."""
        end = min(tpos for tpos, _ in self.tables)
        pos = HEADER
        out = []
        while pos < end:
            k, d, pos = self._record(pos)
            out.append((k, d))
        return out
