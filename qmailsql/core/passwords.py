"""Password verification for mailbox rows (SPEC sections 3 and 6).

``mailbox.password_type`` says how ``mailbox.password`` is stored:

``Password``
    plain text, compared byte for byte (constant time) with the given password.
``Crypt-Password``
    a crypt(3) hash, verified by the system's libxcrypt through
    :mod:`qmailsql.core._crypt`: DES, ``$1$``, ``$5$``, ``$6$``, ``$2b$``/``$2a$``/``$2y$``,
    ``$y$`` and whatever else that library supports.
``MySQL-Password``
    the value of MySQL's ``PASSWORD()``, computed locally (MySQL 8 has no
    ``PASSWORD()`` any more): either the 41-character ``*`` + hex SHA1(SHA1(pw))
    of MySQL >= 4.1 or the 16-hex-digit pre-4.1 ``OLD_PASSWORD()``. Hex digits
    are compared case-insensitively in both forms.

The type name is matched case-insensitively with surrounding whitespace ignored
(MySQL's default collations compare it that way too).

:func:`verify` never raises for bad data: an empty stored password, an unknown
type or a stored value of the wrong shape simply does not verify. The caller
reports such rows as misconfigurations with :func:`check_stored`, which says
what is wrong in words.

NUL bytes: crypt(3) stops at the first NUL, so a given password containing NUL
is refused (False) for ``Crypt-Password`` instead of being checked truncated.
(The checkpassword interface cannot deliver a NUL inside a password anyway.)

Unknown logins: call :func:`dummy_verify` so that "no such user" costs the same
time as "wrong password" and the two cannot be told apart by timing.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Optional, Tuple, Union

from . import _crypt

__all__ = [
    "SCHEMES", "HASH_SCHEMES", "verify", "check_stored", "is_weak", "hash_password",
    "mysql_old_password", "mysql41_password", "dummy_verify",
]

SCHEMES = ("Password", "Crypt-Password", "MySQL-Password")
_TYPES = {s.lower(): s for s in SCHEMES}

# default_scheme value -> (password_type, crypt prefix or None)
HASH_SCHEMES = {
    "plain": ("Password", None),
    "mysql41": ("MySQL-Password", None),
    "sha512-crypt": ("Crypt-Password", b"$6$"),
    "sha256-crypt": ("Crypt-Password", b"$5$"),
    "bcrypt": ("Crypt-Password", b"$2b$"),
    "yescrypt": ("Crypt-Password", b"$y$"),
    "md5-crypt": ("Crypt-Password", b"$1$"),
}

# crypt(3) prefixes that are not "weak" for the opt-in rehash. Everything else
# that verifies (DES, BSDi "_", $1$, NT-hash $3$, SunMD5, $sha1$, bcrypt's buggy
# $2x$) is weak.
_STRONG_CRYPT = (b"$5$", b"$6$", b"$2b$", b"$2a$", b"$2y$", b"$y$", b"$gy$", b"$7$")

_HEX = b"0123456789abcdefABCDEF"
_RE_MYSQL41 = re.compile(rb"\*[0-9A-Fa-f]{40}\Z")
_RE_MYSQL_OLD = re.compile(rb"[0-9A-Fa-f]{16}\Z")

StrOrBytes = Union[str, bytes]


# --- MySQL PASSWORD() / OLD_PASSWORD() ------------------------------------------

def mysql_old_password(password: bytes) -> str:
    """MySQL's pre-4.1 ``OLD_PASSWORD()``: 16 lower-case hex digits.

    The classic nr/nr2/add hash; spaces and tabs in the password are skipped.
    Like MySQL, the empty password gives the empty string."""
    password = as_bytes(password)
    if not password:
        return ""
    nr, add, nr2 = 1345345333, 7, 0x12345671
    mask = 0xFFFFFFFF  # only the low 31 bits survive, so 32-bit arithmetic is exact
    for c in password:
        if c == 0x20 or c == 0x09:
            continue
        nr = (nr ^ ((((nr & 63) + add) * c) + (nr << 8))) & mask
        nr2 = (nr2 + ((nr2 << 8) ^ nr)) & mask
        add = (add + c) & mask
    return "%08x%08x" % (nr & 0x7FFFFFFF, nr2 & 0x7FFFFFFF)


def mysql41_password(password: bytes) -> str:
    """MySQL >= 4.1 ``PASSWORD()``: ``*`` + upper-case hex of SHA1(SHA1(password)).

    Like MySQL, the empty password gives the empty string."""
    password = as_bytes(password)
    if not password:
        return ""
    return "*" + hashlib.sha1(hashlib.sha1(password).digest()).hexdigest().upper()


# --- verification -----------------------------------------------------------------

def as_bytes(value: StrOrBytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError("expected bytes or str, not %s" % type(value).__name__)


def _canon_type(password_type) -> Optional[str]:
    if isinstance(password_type, (bytes, bytearray)):
        try:
            password_type = bytes(password_type).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(password_type, str):
        return None
    return _TYPES.get(password_type.strip().lower())


def _stored_bytes(stored) -> Optional[bytes]:
    """The stored value as bytes, or None when it is missing/unusable."""
    if stored is None:
        return None
    try:
        b = as_bytes(stored)
    except (TypeError, UnicodeEncodeError):
        return None
    return b or None


def _verify_crypt(stored: bytes, given: bytes) -> bool:
    if b"\0" in given or b"\0" in stored:
        return False
    try:
        computed = _crypt.crypt(given, stored)
    except ValueError:
        return False
    return hmac.compare_digest(computed, stored)


def _verify_mysql(stored: bytes, given: bytes) -> bool:
    if _RE_MYSQL41.match(stored):
        computed = mysql41_password(given).encode("ascii")
        return hmac.compare_digest(computed, stored.upper())
    if _RE_MYSQL_OLD.match(stored):
        computed = mysql_old_password(given).encode("ascii")
        return hmac.compare_digest(computed, stored.lower())
    return False


def verify(password_type: StrOrBytes, stored: Optional[StrOrBytes], given: bytes) -> bool:
    """True when `given` (the password a client sent) matches the mailbox row's
    (`password_type`, `stored`). Never raises for bad data: empty/NULL stored
    password, unknown type or malformed stored value -> False."""
    kind = _canon_type(password_type)
    stored_b = _stored_bytes(stored)
    if kind is None or stored_b is None:
        return False
    try:
        given_b = as_bytes(given)
    except (TypeError, UnicodeEncodeError):
        return False
    if kind == "Password":
        return hmac.compare_digest(stored_b, given_b)
    if kind == "Crypt-Password":
        return _verify_crypt(stored_b, given_b)
    return _verify_mysql(stored_b, given_b)


# --- diagnostics --------------------------------------------------------------------

def check_stored(password_type: StrOrBytes, stored: Optional[StrOrBytes]) -> Optional[str]:
    """A human-readable description of what is wrong with this row's password
    columns, or None when nothing is (the row can verify some password)."""
    kind = _canon_type(password_type)
    if kind is None:
        return ("unknown password_type %r (expected one of: %s)"
                % (password_type, ", ".join(SCHEMES)))
    if stored is None or (isinstance(stored, (str, bytes)) and not stored):
        return "empty password (%s): nobody can log in to this mailbox" % kind
    try:
        stored_b = as_bytes(stored)
    except (TypeError, UnicodeEncodeError) as exc:
        return "password column is not text (%s)" % exc
    if kind == "Password":
        if b"\0" in stored_b:
            return "plain password contains a NUL byte: no client can send it"
        return None
    if kind == "MySQL-Password":
        if _RE_MYSQL41.match(stored_b) or _RE_MYSQL_OLD.match(stored_b):
            return None
        n = len(stored_b)
        if stored_b.startswith(b"*") and n < 41 and all(c in _HEX for c in stored_b[1:]):
            return ("MySQL-Password looks truncated (%d of 41 characters): widen the "
                    "password column (`qmailsql migrate`) and set the password again" % n)
        if stored_b != stored_b.strip():
            return "MySQL-Password has leading or trailing whitespace"
        return ("MySQL-Password must be '*' and 40 hex digits (PASSWORD()) or 16 hex "
                "digits (OLD_PASSWORD()); the stored value is %d characters long" % n)
    # Crypt-Password
    if b"\0" in stored_b:
        return "Crypt-Password contains a NUL byte"
    if stored_b != stored_b.strip():
        return "Crypt-Password has leading or trailing whitespace"
    if stored_b[:1] in (b"!", b"*"):
        return ("Crypt-Password starts with %r: a locked or disabled hash that "
                "never verifies" % stored_b[:1].decode("latin-1"))
    try:
        computed = _crypt.crypt(b"", stored_b)
    except ValueError:
        return ("Crypt-Password %r... is not a hash this system's crypt(3) supports "
                "(unknown prefix or malformed salt)" % stored_b[:12].decode("latin-1"))
    if len(computed) < len(stored_b):
        return ("Crypt-Password is %d characters but a complete hash of that kind is %d: "
                "it has extra characters after the hash" % (len(stored_b), len(computed)))
    if len(computed) > len(stored_b):
        return ("Crypt-Password is %d characters but a complete hash of that kind is %d: "
                "it looks truncated (widen the password column) or is only a salt"
                % (len(stored_b), len(computed)))
    return None


# Stored values of a shape that can verify (the cheap test; check_stored() runs crypt(3)
# and says what is wrong). bcrypt's buggy $2x$ is left to check_stored.
_B64 = "[./0-9A-Za-z]"
_WELL_FORMED_CRYPT = re.compile(
    r"(?:\$6\$(?:rounds=[0-9]+\$)?{c}{{1,16}}\${c}{{86}}"
    r"|\$5\$(?:rounds=[0-9]+\$)?{c}{{1,16}}\${c}{{43}}"
    r"|\$2[aby]\$[0-9]{{2}}\${c}{{53}}"
    r"|\$y\${c}+\${c}+\${c}{{43}}"
    r"|\$1\${c}{{1,8}}\${c}{{22}}"
    r"|{c}{{13}})\Z".format(c=_B64))
_WELL_FORMED_MYSQL = re.compile(r"(?:\*[0-9A-Fa-f]{40}|[0-9A-Fa-f]{16})\Z")
_SHAPES = {
    "Crypt-Password": lambda s, m=_WELL_FORMED_CRYPT.match: m(s) is not None,
    "MySQL-Password": lambda s, m=_WELL_FORMED_MYSQL.match: m(s) is not None,
    "Password": lambda s: "\0" not in s,
}


def well_formed(password_type, stored) -> bool:
    """True when STORED (text) has a shape that verifies for PASSWORD_TYPE: then
    check_stored() has nothing to say. Cheap (no crypt(3)): for every row of a scan
    and before each diagnosis of a refused login; False means "ask check_stored"."""
    if type(stored) is not str:
        return False
    shape = _SHAPES.get(password_type) or _SHAPES.get(_canon_type(password_type))
    return shape is not None and shape(stored)


def is_weak(password_type: StrOrBytes, stored: Optional[StrOrBytes]) -> bool:
    """True for stored passwords worth rehashing after a successful login:
    plain text, MySQL (either form), DES and $1$ (and other legacy crypt hashes).
    $5$, $6$, bcrypt and yescrypt are not weak. Unusable rows are not "weak"
    (they cannot verify, so there is nothing to rehash)."""
    kind = _canon_type(password_type)
    stored_b = _stored_bytes(stored)
    if kind is None or stored_b is None:
        return False
    if kind in ("Password", "MySQL-Password"):
        return True
    return not stored_b.startswith(_STRONG_CRYPT)


# --- hashing --------------------------------------------------------------------------

def hash_password(scheme: str, password: bytes, count: int = 0) -> Tuple[str, str]:
    """(password_type, stored) for a new password in `scheme`, a ``default_scheme``
    value: plain, mysql41, sha512-crypt, sha256-crypt, bcrypt, yescrypt, md5-crypt.

    `count` is the crypt cost parameter (0 = libxcrypt's default). Refuses an empty
    password or one containing NUL (neither could ever log in) with ValueError."""
    key = scheme.strip().lower() if isinstance(scheme, str) else scheme
    if key not in HASH_SCHEMES:
        raise ValueError("unknown password scheme %r; valid schemes: %s"
                         % (scheme, ", ".join(HASH_SCHEMES)))
    password = as_bytes(password)
    if not password:
        raise ValueError("refusing to store an empty password (it can never log in)")
    if b"\0" in password:
        raise ValueError("refusing a password containing a NUL byte (no client can send it)")
    kind, prefix = HASH_SCHEMES[key]
    if key == "plain":
        try:
            return kind, password.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a plain-text password must be valid UTF-8 to be stored") from None
    if key == "mysql41":
        return kind, mysql41_password(password)
    stored = _crypt.crypt(password, _crypt.gensalt(prefix, count))
    return kind, stored.decode("ascii")


# --- timing equaliser for unknown logins ------------------------------------------------

_DUMMY = {}


def _dummy_row(scheme: str) -> Tuple[str, str]:
    row = _DUMMY.get(scheme)
    if row is None:
        row = hash_password(scheme, os.urandom(24).hex().encode("ascii"))
        _DUMMY[scheme] = row
    return row


def dummy_verify(given: bytes, scheme: str = "sha512-crypt") -> bool:
    """Spend the time of a real verification of `given` against a hash of a random
    string (made once per scheme; sha512-crypt at import), then return False.
    Use it for unknown logins; pass the site's default_scheme as `scheme` when most
    mailboxes use it."""
    try:
        kind, stored = _dummy_row(scheme)
    except ValueError:
        kind, stored = _dummy_row("sha512-crypt")
    try:
        given_b = as_bytes(given).replace(b"\0", b"")
    except (TypeError, UnicodeEncodeError):
        given_b = b""
    verify(kind, stored, given_b)
    return False


_dummy_row("sha512-crypt")
