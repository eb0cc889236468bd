# cython: language_level=3, boundscheck=False, wraparound=False
"""crypt(3) for qmailsql: a thin binding to the system's libxcrypt.

Python's own `crypt` module is deprecated (and gone in 3.13), so this is the
binding the project uses everywhere:

* ``crypt(password, setting) -> bytes`` calls ``crypt_rn`` with a private,
  heap-allocated ``struct crypt_data`` (about 32 kB; too big for the stack of
  every thread) and releases the GIL while hashing, so slow hashes (bcrypt,
  yescrypt, many-round SHA-crypt) do not stall the daemon's other threads.
  Any failure (unsupported or malformed setting, out of memory) raises
  ValueError: libxcrypt's ``crypt_rn`` returns NULL there, and the failure
  tokens ``*0`` / ``*1`` that ``crypt``/``crypt_r`` would return are treated
  as failures too.
* ``gensalt(prefix, count=0) -> bytes`` calls ``crypt_gensalt_rn`` with
  random bytes from the OS; ``count=0`` means the library's default cost.

NUL bytes: crypt(3) takes C strings, so a password or setting containing NUL
would be silently truncated there. Both functions refuse such input with
ValueError instead.
"""

from libc.stdlib cimport calloc, free

cdef extern from "<string.h>" nogil:
    void explicit_bzero(void *s, size_t n)

cdef extern from "<crypt.h>" nogil:
    enum: CRYPT_OUTPUT_SIZE
    enum: CRYPT_GENSALT_OUTPUT_SIZE
    enum: CRYPT_SALT_OK
    enum: CRYPT_SALT_INVALID
    enum: CRYPT_SALT_METHOD_DISABLED
    enum: CRYPT_SALT_METHOD_LEGACY
    enum: CRYPT_SALT_TOO_CHEAP
    struct crypt_data:
        char output[CRYPT_OUTPUT_SIZE]
    char *crypt_rn(const char *phrase, const char *setting, void *data, int size)
    char *crypt_gensalt_rn(const char *prefix, unsigned long count,
                           const char *rbytes, int nrbytes,
                           char *output, int output_size)
    int crypt_checksalt(const char *setting)
    const char *crypt_preferred_method()

SALT_OK = CRYPT_SALT_OK
SALT_INVALID = CRYPT_SALT_INVALID
SALT_METHOD_DISABLED = CRYPT_SALT_METHOD_DISABLED
SALT_METHOD_LEGACY = CRYPT_SALT_METHOD_LEGACY
SALT_TOO_CHEAP = CRYPT_SALT_TOO_CHEAP


cdef bytes _cstring(object value, str what):
    """bytes-like -> bytes without NUL (a C string crypt(3) sees whole)."""
    cdef bytes b
    if isinstance(value, bytes):
        b = <bytes>value
    elif isinstance(value, (bytearray, memoryview)):
        b = bytes(value)
    else:
        raise TypeError("%s must be bytes, not %s" % (what, type(value).__name__))
    if b"\0" in b:
        raise ValueError("%s contains a NUL byte (crypt(3) would truncate it there)" % what)
    return b


def crypt(password, setting):
    """Hash `password` with `setting` (a salt from gensalt(), or a full stored
    hash to verify against). Returns the hash as bytes; ValueError on failure."""
    cdef bytes p = _cstring(password, "password")
    cdef bytes s = _cstring(setting, "setting")
    cdef const char *cp = p
    cdef const char *cs = s
    cdef size_t size = sizeof(crypt_data)
    cdef void *data = calloc(1, size)
    cdef char *out
    cdef bytes result
    if data == NULL:
        raise MemoryError()
    try:
        with nogil:
            out = crypt_rn(cp, cs, data, <int>size)
        if out == NULL or out[0] == b'*' or out[0] == 0:
            raise ValueError("crypt(3) rejected the setting %r (unsupported or malformed hash)"
                             % s[:40])
        result = out
    finally:
        explicit_bzero(data, size)  # the work area held key material
        free(data)
    return result


def gensalt(prefix, unsigned long count=0):
    """A fresh setting for the hash `prefix` (b"$6$", b"$5$", b"$2b$", b"$y$",
    b"$1$", ...; None = libxcrypt's preferred method). `count` is the cost
    parameter (rounds, log2 rounds, ...); 0 means the library's default."""
    cdef bytes pb
    cdef const char *cp = NULL
    cdef char buf[CRYPT_GENSALT_OUTPUT_SIZE]
    cdef char *out
    if prefix is not None:
        pb = _cstring(prefix, "prefix")
        cp = pb
    with nogil:
        out = crypt_gensalt_rn(cp, count, NULL, 0, buf, CRYPT_GENSALT_OUTPUT_SIZE)
    if out == NULL or out[0] == b'*':
        raise ValueError("crypt_gensalt cannot make a setting for prefix %r with count %d "
                         "(unsupported hash method or cost out of range)" % (prefix, count))
    return <bytes>out


def checksalt(setting):
    """libxcrypt's crypt_checksalt(): SALT_OK, SALT_INVALID, SALT_METHOD_LEGACY, ..."""
    cdef bytes s = _cstring(setting, "setting")
    cdef const char *cs = s
    return crypt_checksalt(cs)


def preferred_method():
    """The prefix libxcrypt prefers for new hashes (e.g. b"$y$"), or None."""
    cdef const char *m = crypt_preferred_method()
    if m == NULL:
        return None
    return <bytes>m
