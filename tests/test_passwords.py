"""Password verification: qmailsql.core._crypt (libxcrypt binding) and qmailsql.core.passwords.

Known-answer vectors are published values (MySQL manual, Drepper's SHA-crypt
specification as shipped with glibc, OpenBSD/Openwall bcrypt tests, the yescrypt
reference TESTS-OK, the classic DES/MD5-crypt examples), so a wrong local
implementation cannot agree with them by accident.
"""
import ast
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qmailsql.core import _crypt, passwords  # noqa: E402
from qmailsql.core.passwords import (  # noqa: E402
    SCHEMES, check_stored, dummy_verify, hash_password, is_weak, mysql41_password,
    mysql_old_password, verify,
)

# --- published vectors ----------------------------------------------------------

MYSQL41 = [
    (b"password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"),
    (b"mypass", "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4"),  # MySQL manual
]
MYSQL_OLD = [
    (b"password", "5d2e19393cc5ef67"),
    (b"mypass", "6f8c114b58f2ce9e"),  # MySQL manual, OLD_PASSWORD()
]
CRYPT = [
    # DES: the classic crypt("password", "ab")
    ("des", b"password", "abJnggxhB/yWI"),
    # MD5-crypt
    ("md5", b"password", "$1$3azHgidD$SrJPt7B.9rekpmwJwtON31"),
    # SHA-crypt specification (Drepper), vectors 1
    ("sha256", b"Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("sha512", b"Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIF"
                                "NjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    # SHA-crypt specification: explicit rounds
    ("sha512-rounds", b"Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0"
     "Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    # bcrypt (OpenBSD / Openwall test vectors)
    ("bcrypt-2a", b"U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    ("bcrypt-2b", b"U*U", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
    # yescrypt reference implementation, TESTS-OK
    ("yescrypt", b"pleaseletmein",
     "$y$jD5.7$LdJMENpBABJJ3hIHjB1Bi.$HboGM6qPrsK.StKYGt6KErmUYtioHreJd98oIugoNB6"),
]
CRYPT_IDS = [c[0] for c in CRYPT]

FAST = ("plain", "mysql41", "md5-crypt", "sha256-crypt", "sha512-crypt")
SLOW = ("bcrypt", "yescrypt")


# --- _crypt -----------------------------------------------------------------------

@pytest.mark.parametrize("name,pw,hashed", CRYPT, ids=CRYPT_IDS)
def test_crypt_known_vectors(name, pw, hashed):
    assert _crypt.crypt(pw, hashed.encode()) == hashed.encode()


def test_crypt_sha_setting_without_hash():
    # the setting alone gives the full hash (spec vectors, setting form)
    assert _crypt.crypt(b"Hello world!", b"$5$saltstring") == \
        b"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"


@pytest.mark.parametrize("setting", [b"", b"!", b"*", b"*0", b"*1", b"$6", b"$9$abc",
                                     b"$2b$99$CCCCCCCCCCCCCCCCCCCCC.", b"!$6$abc$def", b"a!"])
def test_crypt_bad_setting_raises(setting):
    with pytest.raises(ValueError):
        _crypt.crypt(b"password", setting)


def test_crypt_refuses_nul():
    with pytest.raises(ValueError):
        _crypt.crypt(b"pass\0word", b"$6$saltstring")
    with pytest.raises(ValueError):
        _crypt.crypt(b"password", b"$6$salt\0string")


def test_crypt_requires_bytes():
    with pytest.raises(TypeError):
        _crypt.crypt("password", b"ab")
    assert _crypt.crypt(bytearray(b"password"), memoryview(b"ab")) == b"abJnggxhB/yWI"


@pytest.mark.parametrize("prefix", [b"$6$", b"$5$", b"$2b$", b"$y$", b"$1$"])
def test_gensalt_prefixes(prefix):
    s1 = _crypt.gensalt(prefix)
    s2 = _crypt.gensalt(prefix)
    assert s1.startswith(prefix)
    assert s1 != s2  # fresh random salt each time
    h = _crypt.crypt(b"secret", s1)
    assert h.startswith(prefix)
    assert _crypt.crypt(b"secret", h) == h
    assert _crypt.crypt(b"Secret", h) != h


def test_gensalt_count():
    assert _crypt.gensalt(b"$2b$", 4).startswith(b"$2b$04$")
    assert _crypt.gensalt(b"$5$", 10000).startswith(b"$5$rounds=10000$")
    assert _crypt.gensalt(b"$6$", 0).startswith(b"$6$")
    assert not _crypt.gensalt(b"$6$", 0).startswith(b"$6$rounds=")


@pytest.mark.parametrize("prefix,count", [(b"$nope$", 0), (b"$2b$", 99)])
def test_gensalt_bad(prefix, count):
    with pytest.raises(ValueError):
        _crypt.gensalt(prefix, count)


def test_crypt_releases_gil():
    """While one thread is inside crypt(), another can run Python code.

    With a huge switch interval the hashing thread would keep the GIL from
    `started.set()` to the end of the thread unless crypt() releases it, so the
    main thread would only ever see `finished` True. Deterministic, not timed."""
    setting = _crypt.gensalt(b"$2b$", 10)
    started = threading.Event()
    state = {"finished": False, "result": None}

    def work():
        started.set()
        state["result"] = _crypt.crypt(b"password", setting)
        state["finished"] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=work)
        t.start()
        started.wait()
        seen_while_hashing = not state["finished"]
    finally:
        sys.setswitchinterval(old)
    t.join()
    assert state["finished"] and state["result"].startswith(b"$2b$10$")
    assert seen_while_hashing, "crypt() held the GIL while hashing"


def test_threads_hash_correctly_in_parallel():
    name, pw, hashed = CRYPT[3]  # $6$ vector
    results = []

    def work():
        for _ in range(20):
            results.append(_crypt.crypt(pw, hashed.encode()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [hashed.encode()] * 80


def test_no_deprecated_crypt_module():
    for path in (ROOT / "qmailsql" / "core" / "passwords.py",):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name != "crypt" for a in node.names), path
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module != "crypt", path
    pyx = (ROOT / "qmailsql" / "core" / "_crypt.pyx").read_text()
    assert "import crypt" not in pyx and "from crypt " not in pyx


# --- MySQL PASSWORD() / OLD_PASSWORD() --------------------------------------------

@pytest.mark.parametrize("pw,expected", MYSQL41)
def test_mysql41_vectors(pw, expected):
    assert mysql41_password(pw) == expected
    assert verify("MySQL-Password", expected, pw)
    assert verify("MySQL-Password", expected.lower(), pw)


@pytest.mark.parametrize("pw,expected", MYSQL_OLD)
def test_mysql_old_vectors(pw, expected):
    assert mysql_old_password(pw) == expected
    assert verify("MySQL-Password", expected, pw)
    assert verify("MySQL-Password", expected.upper(), pw)  # case-insensitive hex


def test_mysql_old_skips_spaces_and_tabs():
    # OLD_PASSWORD() ignores spaces and tabs, so these all collide (as in MySQL)
    assert mysql_old_password(b"pass word") == "5d2e19393cc5ef67"
    assert mysql_old_password(b"\tpass word ") == "5d2e19393cc5ef67"
    assert mysql_old_password(b"pass\nword") != "5d2e19393cc5ef67"


def test_mysql_high_bytes():
    # bytes >= 0x80 are taken unsigned (uchar) in the C code; the value is stable
    old = mysql_old_password("pässwörd".encode("utf-8"))
    assert len(old) == 16 and old != mysql_old_password("pässwörd".encode("latin-1"))
    assert verify("MySQL-Password", old, "pässwörd".encode("utf-8"))


def test_mysql_empty_is_empty_like_mysql():
    assert mysql41_password(b"") == ""
    assert mysql_old_password(b"") == ""


@pytest.mark.parametrize("stored", [
    "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E1",     # 40 chars (truncated)
    "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19 ",   # trailing space
    "2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19",      # no star
    "5d2e19393cc5ef6",                               # 15 hex
    "5d2e19393cc5ef67a",                             # 17 hex
    "5d2e19393cc5ef6g",                              # not hex
    "password",                                      # plain text in the wrong type
])
def test_mysql_malformed_stored_fails(stored):
    assert verify("MySQL-Password", stored, b"password") is False
    assert check_stored("MySQL-Password", stored) is not None


# --- verify -------------------------------------------------------------------------

def test_plain():
    assert verify("Password", "s3cret", b"s3cret")
    assert verify("Password", b"s3cret", b"s3cret")
    assert not verify("Password", "s3cret", b"s3cret ")
    assert not verify("Password", "s3cret", b"S3cret")
    assert not verify("Password", "s3cret", b"")
    assert verify("Password", "pässwörd", "pässwörd".encode("utf-8"))


@pytest.mark.parametrize("name,pw,hashed", CRYPT, ids=CRYPT_IDS)
def test_crypt_password_vectors(name, pw, hashed):
    assert verify("Crypt-Password", hashed, pw)
    assert verify("Crypt-Password", hashed.encode(), pw)
    assert not verify("Crypt-Password", hashed, b"x" + pw)  # (DES ignores bytes past 8)
    assert not verify("Crypt-Password", hashed, b"")


def test_des_truncates_at_eight():
    # DES looks at 8 characters only: a known weakness, hence is_weak()
    assert verify("Crypt-Password", "abJnggxhB/yWI", b"passwordANYTHING")


@pytest.mark.parametrize("kind,stored", [
    ("Password", "password"),
    ("Crypt-Password", "abJnggxhB/yWI"),
    ("MySQL-Password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"),
    ("MySQL-Password", "5d2e19393cc5ef67"),
])
def test_wrong_password_fails(kind, stored):
    assert verify(kind, stored, b"password") is True
    for wrong in (b"Password", b"passwor", b"xpassword", b"", b"x" * 1000):
        assert verify(kind, stored, wrong) is False


@pytest.mark.parametrize("kind", SCHEMES)
@pytest.mark.parametrize("stored", ["", b"", None])
def test_empty_stored_fails(kind, stored):
    assert verify(kind, stored, b"") is False
    assert verify(kind, stored, b"password") is False
    assert "empty" in check_stored(kind, stored)


@pytest.mark.parametrize("kind", ["", "plain", "Crypt", "MD5-Password", "Password2", None, 42])
def test_unknown_type_fails(kind):
    assert verify(kind, "password", b"password") is False
    assert "unknown password_type" in check_stored(kind, "password")


@pytest.mark.parametrize("kind", ["password", "PASSWORD", " Password ", b"Password"])
def test_type_matched_case_insensitively(kind):
    assert verify(kind, "password", b"password")
    assert check_stored(kind, "password") is None


@pytest.mark.parametrize("stored", [
    "*0", "*1", "!", "!!", "*", "!$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIF"
    "NjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    "$6$saltstring", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8",  # salt only / truncated
    "$9$whatever$xyz", "abJnggxhB/yWI ", " abJnggxhB/yWI", "ab", "a", "$2b$05$short",
    "abJnggxhB/yW\0I", "password",
])
def test_crypt_malformed_stored_fails(stored):
    assert verify("Crypt-Password", stored, b"password") is False
    assert verify("Crypt-Password", stored, b"") is False
    assert check_stored("Crypt-Password", stored) is not None


def test_crypt_given_with_nul_is_refused():
    stored = _crypt.crypt(b"pass", b"$6$saltsalt").decode()
    assert verify("Crypt-Password", stored, b"pass")
    # crypt(3) would stop at the NUL and accept this; we refuse it
    assert verify("Crypt-Password", stored, b"pass\0word") is False
    assert verify("Crypt-Password", stored, b"pass\0") is False


def test_nul_in_given_other_types_does_not_crash():
    assert verify("Password", "pass", b"pass\0word") is False
    assert verify("MySQL-Password", mysql41_password(b"pass"), b"pass\0") is False
    assert verify("MySQL-Password", mysql_old_password(b"pass"), b"pass\0") is False


def test_given_as_str_is_utf8():
    assert verify("Password", "pässwörd", "pässwörd")
    assert verify("MySQL-Password", mysql41_password("pässwörd".encode()), "pässwörd")


def test_non_utf8_stored_str_does_not_raise():
    assert verify("Password", "\udcff", b"\xff") is False  # lone surrogate: unencodable
    assert verify("Crypt-Password", "\udcff", b"x") is False
    assert check_stored("Password", "\udcff") is not None


def test_verify_returns_bool():
    for args in [("Password", "a", b"a"), ("Password", "a", b"b"),
                 ("MySQL-Password", "5d2e19393cc5ef67", b"password")]:
        assert type(verify(*args)) is bool


# --- check_stored -----------------------------------------------------------------

@pytest.mark.parametrize("kind,stored", [
    ("Password", "anything"),
    ("MySQL-Password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"),
    ("MySQL-Password", "5D2E19393CC5EF67"),
] + [("Crypt-Password", c[2]) for c in CRYPT])
def test_check_stored_accepts_good_rows(kind, stored):
    assert check_stored(kind, stored) is None


def test_check_stored_messages_say_what_is_wrong():
    assert "truncated" in check_stored("Crypt-Password", CRYPT[3][2][:60])
    assert "truncated" in check_stored("MySQL-Password", "*2470C0C06DEE42FD1618BB")
    assert "extra characters" in check_stored("Crypt-Password", "abJnggxhB/yWIxyz")
    assert "whitespace" in check_stored("Crypt-Password", "abJnggxhB/yWI\n")
    assert "locked" in check_stored("Crypt-Password", "!abJnggxhB/yWI")
    assert "not a hash" in check_stored("Crypt-Password", "$9$x$y")
    assert "Password, Crypt-Password, MySQL-Password" in check_stored("Plain", "x")


# --- is_weak ----------------------------------------------------------------------

@pytest.mark.parametrize("kind,stored,weak", [
    ("Password", "secret", True),
    ("MySQL-Password", "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19", True),
    ("MySQL-Password", "5d2e19393cc5ef67", True),
    ("Crypt-Password", "abJnggxhB/yWI", True),
    ("Crypt-Password", "$1$3azHgidD$SrJPt7B.9rekpmwJwtON31", True),
    ("Crypt-Password", CRYPT[2][2], False),   # $5$
    ("Crypt-Password", CRYPT[3][2], False),   # $6$
    ("Crypt-Password", CRYPT[6][2], False),   # $2b$
    ("Crypt-Password", CRYPT[5][2], False),   # $2a$
    ("Crypt-Password", CRYPT[7][2], False),   # $y$
    ("Crypt-Password", "", False),             # nothing to rehash
    ("Nonsense", "secret", False),
])
def test_is_weak(kind, stored, weak):
    assert is_weak(kind, stored) is weak


# --- hash_password ----------------------------------------------------------------

SCHEME_SHAPE = {
    "plain": ("Password", "correct horse"),
    "mysql41": ("MySQL-Password", "*"),
    "sha512-crypt": ("Crypt-Password", "$6$"),
    "sha256-crypt": ("Crypt-Password", "$5$"),
    "bcrypt": ("Crypt-Password", "$2b$"),
    "yescrypt": ("Crypt-Password", "$y$"),
    "md5-crypt": ("Crypt-Password", "$1$"),
}


@pytest.mark.parametrize("scheme", sorted(SCHEME_SHAPE))
def test_hash_password_round_trip(scheme):
    kind, start = SCHEME_SHAPE[scheme]
    got_kind, stored = hash_password(scheme, b"correct horse")
    assert got_kind == kind
    assert isinstance(stored, str) and stored.startswith(start)
    assert verify(got_kind, stored, b"correct horse")
    assert not verify(got_kind, stored, b"correct horsE")
    assert check_stored(got_kind, stored) is None
    assert is_weak(got_kind, stored) is (scheme in ("plain", "mysql41", "md5-crypt"))


def test_hash_password_salts_differ():
    assert hash_password("sha512-crypt", b"pw")[1] != hash_password("sha512-crypt", b"pw")[1]


def test_hash_password_scheme_case_and_count():
    kind, stored = hash_password(" BCrypt ", b"pw", count=4)
    assert stored.startswith("$2b$04$") and verify(kind, stored, b"pw")


def test_hash_password_unknown_scheme_names_valid_ones():
    with pytest.raises(ValueError) as exc:
        hash_password("sha1", b"pw")
    for name in SCHEME_SHAPE:
        assert name in str(exc.value)


@pytest.mark.parametrize("pw", [b"", b"a\0b"])
def test_hash_password_refuses_unusable(pw):
    with pytest.raises(ValueError):
        hash_password("sha512-crypt", pw)
    with pytest.raises(ValueError):
        hash_password("plain", pw)


def test_hash_password_plain_must_be_utf8():
    with pytest.raises(ValueError):
        hash_password("plain", b"\xff\xfe")


# --- dummy_verify -------------------------------------------------------------------

def test_dummy_verify_does_real_work(monkeypatch):
    calls = []
    real = _crypt.crypt
    monkeypatch.delitem(passwords._DUMMY, "bcrypt", raising=False)

    def counting(pw, setting):
        calls.append(setting)
        return real(pw, setting)

    monkeypatch.setattr(passwords._crypt, "crypt", counting)
    assert dummy_verify(b"password") is False
    assert len(calls) == 1 and calls[0].startswith(b"$6$")  # hash made at import
    calls.clear()
    assert dummy_verify(b"password", scheme="bcrypt") is False
    assert len(calls) == 2 and calls[-1].startswith(b"$2b$")  # make the hash, verify once
    calls.clear()
    assert dummy_verify(b"x", scheme="bcrypt") is False
    assert len(calls) == 1  # dummy hash is cached per scheme


@pytest.mark.parametrize("given", [b"", b"x\0y", "str", b"a" * 600])
def test_dummy_verify_never_raises(given):
    assert dummy_verify(given) is False
    assert dummy_verify(given, scheme="no-such-scheme") is False


# --- properties -----------------------------------------------------------------------

passwords_bytes = st.one_of(
    st.binary(min_size=1, max_size=72),
    st.text(min_size=1, max_size=18).map(lambda s: s.encode("utf-8")),
).filter(lambda b: b"\0" not in b and 0 < len(b) <= 72)


def _property(scheme, pw, other):
    if scheme == "plain":
        try:
            pw.decode("utf-8")
        except UnicodeDecodeError:
            assume(False)
    assume(other != pw)
    kind, stored = hash_password(scheme, pw)
    assert verify(kind, stored, pw)
    assert not verify(kind, stored, other)


@pytest.mark.parametrize("scheme", FAST)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(pw=passwords_bytes, other=passwords_bytes)
def test_property_round_trip_fast(scheme, pw, other):
    _property(scheme, pw, other)


@pytest.mark.parametrize("scheme", SLOW)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(pw=passwords_bytes, other=passwords_bytes)
def test_property_round_trip_slow(scheme, pw, other):
    _property(scheme, pw, other)


@settings(max_examples=200, deadline=None)
@given(kind=st.one_of(st.sampled_from(SCHEMES), st.text(max_size=20), st.none()),
       stored=st.one_of(st.text(max_size=120), st.binary(max_size=120), st.none()),
       pw=st.binary(max_size=80))
def test_property_never_raises_on_bad_data(kind, stored, pw):
    assert verify(kind, stored, pw) in (True, False)
    problem = check_stored(kind, stored)
    assert problem is None or isinstance(problem, str)
    assert is_weak(kind, stored) in (True, False)


@pytest.mark.parametrize("ptype", ["Crypt-Password", "crypt-password "])
def test_well_formed_shapes_agree_with_check_stored(ptype):
    # the cheap shape test (auth's and the doctor's, once two copies that disagreed on
    # bcrypt's $2x$) never calls a row fine that check_stored() faults
    good = [passwords.hash_password(s, b"pw")[1] for s in ("sha512-crypt", "sha256-crypt",
                                                          "md5-crypt", "bcrypt")]
    for stored in good:
        assert passwords.well_formed(ptype, stored), stored
        assert passwords.check_stored(ptype, stored) is None
    for stored in ("$2x$05$" + "a" * 53, "*" + "0" * 40, "", "!" + good[0], good[0][:-1]):
        assert not passwords.well_formed(ptype, stored), stored
    assert passwords.well_formed("MySQL-Password", "*" + "A" * 40)
    assert not passwords.well_formed("Password", "a\0b")
