"""The Cython hot path and its pure-Python reference stay equal (differential fuzzing)."""
import os

import pytest
from hypothesis import given, settings, strategies as st

from qmailsql.core import _hot, fallback, hotpath
from qmailsql.core.definitions import ConfigError


def test_cython_module_is_the_one_in_use():
    # a build that silently fell back to Python would hide a broken extension
    if os.environ.get("QMAILSQL_PUREPYTHON", "") not in ("", "0"):
        assert hotpath.IMPLEMENTATION == "python"
    else:
        assert hotpath.IMPLEMENTATION == "cython"
        assert hotpath.candidates is _hot.candidates


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except ConfigError as e:
        return ("ConfigError", e.lineno, e.message)
    except ValueError as e:
        return ("ValueError", str(e))


config_bytes = st.lists(st.one_of(
    st.sampled_from([b"server", b"login", b"user", b"password", b"db", b"port", b"bogus",
                     b"#", b" ", b"\t", b"=", b'"', b"'", b"\\", b"\n", b"\r", b"x", b"\xff",
                     b"userlen", b"server /s"]),
    st.binary(max_size=4)), max_size=30).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(config_bytes)
def test_parser_equal(data):
    assert outcome(fallback.parse_sqlserver, data, "f") == outcome(_hot.parse_sqlserver, data, "f")


locals_ = st.lists(st.sampled_from([b"a", b"B", b"-", b"+", b"\xff", b"'", b"%", b"_", b"\\",
                                    b"iain", b"--", b"x"]), max_size=40).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(locals_, st.sampled_from([b"-", b"+", b""]), st.integers(min_value=0, max_value=40))
def test_candidates_equal(local, brk, userlen):
    assert fallback.candidates(local, brk, userlen) == _hot.candidates(local, brk, userlen) \
        == every_prefix(local, brk, userlen)


def every_prefix(local, brk, userlen):
    """qmail-getpw's walk done the slow way: every position of LOCAL, longest first."""
    out = []
    for p in range(len(local), 0, -1):
        if p < userlen and (p == len(local) or local[p:p + 1] == brk[:1] != b""):
            out.append((local[:p].lower(), b"-" if p < len(local) else b"",
                        local[p + 1:]))
    return out


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=30),
       st.integers(min_value=0, max_value=8), st.booleans())
def test_decode_frame_equal(buf, limit, start, mutable):
    buf = bytearray(buf) if mutable else buf
    assert outcome(fallback.decode_frame, buf, limit, start) == \
        outcome(_hot.decode_frame, buf, limit, start)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\0" not in b), min_size=1,
                max_size=6))
def test_frame_round_trip(fields):
    for impl in (fallback, _hot):
        frame = impl.encode_frame(fields)
        payload, used = impl.decode_frame(frame + b"junk")
        assert used == len(frame)
        assert impl.split_fields(payload) == fields


@pytest.mark.parametrize("impl", [fallback, _hot], ids=["python", "cython"])
def test_candidates_like_qmail_getpw(impl):
    assert impl.candidates(b"Iain-SlowLaris") == [(b"iain-slowlaris", b"", b""),
                                                 (b"iain", b"-", b"SlowLaris")]
    assert impl.candidates(b"a-b-c") == [(b"a-b-c", b"", b""), (b"a-b", b"-", b"c"),
                                        (b"a", b"-", b"b-c")]
    # names must be shorter than userlen (qmail's GETPW_USERLEN buffer)
    assert impl.candidates(b"abcd-e", b"-", 5) == [(b"abcd", b"-", b"e")]
    assert impl.candidates(b"abcde-f", b"-", 5) == []
    # a leading break gives no empty name
    assert impl.candidates(b"-x") == [(b"-x", b"", b"")]
    assert impl.candidates(b"") == []


@pytest.mark.parametrize("impl", [fallback, _hot], ids=["python", "cython"])
def test_frame_errors(impl):
    assert impl.decode_frame(b"5:ab") == (None, 0)
    assert impl.decode_frame(b"12") == (None, 0)
    with pytest.raises(ValueError, match="exceeds"):
        impl.decode_frame(b"70000:", 65536)
    with pytest.raises(ValueError, match="malformed"):
        impl.decode_frame(b"x:")
    with pytest.raises(ValueError, match="terminated"):
        impl.decode_frame(b"1:ab")
    with pytest.raises(ValueError):
        impl.split_fields(b"getpw\0x")
    # at an offset, in a bytearray (the daemon's input buffer): the same frames
    buf = bytearray(b"5:ping\0,12:getpw\0alice\0,1")
    assert impl.decode_frame(buf, 65536, 0) == (b"ping\0", 8)
    assert impl.decode_frame(buf, 65536, 8) == (b"getpw\0alice\0", 24)
    assert impl.decode_frame(buf, 65536, 24) == (None, 0)
