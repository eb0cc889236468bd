"""qmailsqld's hot path: the Cython twins (_hot) equal their Python reference (fallback).

Response framing, the cache policy (cache_times) and the response cache itself, driven
by random operation sequences.
"""
import pytest
from hypothesis import given, settings, strategies as st

from qmailsql.core import _hot, fallback
from qmailsql.daemon import server as daemon
from qmailsql.core.hotpath import decode_frame, split_fields


def test_daemon_uses_the_compiled_twins():
    if daemon.IMPLEMENTATION == "cython":
        assert daemon.ResponseCache is _hot.ResponseCache
        assert daemon.cache_times is _hot.cache_times
        assert daemon.encode_response is _hot.encode_response


# ---------------------------------------------------------------- framing

@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_encode_response_equal_and_decodable(status, body):
    frame = _hot.encode_response(status, body)
    assert frame == fallback.encode_response(status, body)
    payload, used = decode_frame(frame)
    assert used == len(frame)
    assert payload == b"%d\0" % status + body


# ---------------------------------------------------------------- policy

FIELD = st.sampled_from([b"", b"alias", b"iain", b"-", b"x", b"800", b"/h", b"ALIAS",
                         b"a\0b"]) | st.binary(max_size=5)
TTL = st.sampled_from([0, 1, 10, 300, 3600])


def getpw_case():
    local = st.sampled_from([b"", b"x", b"iain-foo", b"-", b"alias"]) | st.binary(max_size=6)

    def build(local, fields_, alias_shape):
        if alias_shape:
            fields_ = [b"alias", b"1", b"2", b"/h", b"-", local]
        body = b"".join(f + b"\0" for f in fields_)
        return b"getpw\0" + local + b"\0", body
    return st.builds(build, local, st.lists(FIELD, min_size=0, max_size=8), st.booleans())


request = st.one_of(
    getpw_case(),
    st.tuples(st.sampled_from([b"getpw\0", b"local\0", b"auth\0", b"ping\0", b"flush\0",
                               b"getpw", b"", b"local", b"getpwx\0", b"userdb\0",
                               b"passdb\0", b"iterate\0", b"userdb"])
              .flatmap(lambda head: st.binary(max_size=12).map(lambda t: head + t)),
              st.binary(max_size=40)),
)


@settings(max_examples=3000, deadline=None)
@given(request, st.sampled_from([0, 1, 100, 111, 115, 116, 255]), TTL, TTL, TTL)
def test_cache_times_equal(req_body, status, cache_ttl, negative_ttl, stale_ttl):
    req, body = req_body
    args = (req, status, body, cache_ttl, negative_ttl, stale_ttl)
    assert _hot.cache_times(*args) == fallback.cache_times(*args)


def test_cache_times_policy():
    ok = b"iain\0" b"800\0" b"100\0" b"/h\0" b"-\0" b"foo\0"
    alias = b"alias\0" b"801\0" b"100\0" b"/a\0" b"-\0" b"nobody\0"
    for m in (_hot, fallback):
        ct = m.cache_times
        assert ct(b"getpw\0iain-foo\0", 0, ok, 300, 10, 3600) == (300, 3600)
        assert ct(b"getpw\0nobody\0", 0, alias, 300, 10, 3600) == (10, 0)
        # the alias user reached through a real candidate is a positive answer
        assert ct(b"getpw\0alias-nobody\0", 0, alias, 300, 10, 3600) == (300, 3600)
        assert ct(b"getpw\0x\0", 116, b"no alias user", 300, 10, 3600) == (10, 0)
        for code in (111, 100, 115):
            assert ct(b"getpw\0x\0", code, b"trouble", 300, 10, 3600) == (0, 0)
        assert ct(b"getpw\0x\0", 0, b"short\0answer\0", 300, 10, 3600) == (0, 0)
        assert ct(b"local\0u\0/h\0u\0\0\0d\0", 0, b"./Maildir/\n", 300, 10, 3600) == (300, 0)
        assert ct(b"local\0u\0/h\0u\0\0\0d\0", 0, b"", 300, 10, 3600) == (300, 0)
        assert ct(b"local\0u\0/h\0u\0\0\0d\0", 111, b"db down", 300, 10, 3600) == (0, 0)
        assert ct(b"auth\0u\0pw\0\0", 0, b"u\0" b"1\0" b"1\0" b"/h\0\0", 300, 10, 3600) \
            == (0, 0)
        assert ct(b"ping\0", 0, b"pong", 300, 10, 3600) == (0, 0)
        # Dovecot: a userdb answer like a delivery's; never a password's, never a miss
        fields = b"uid=800\0gid=100\0home=/h\0mail=maildir:~/Maildir\0"
        assert ct(b"userdb\0iain\0", 0, fields, 300, 10, 3600) == (300, 0)
        assert ct(b"userdb\0nobody\0", 1, b"no such user", 300, 10, 3600) == (0, 0)
        assert ct(b"userdb\0iain\0", 111, b"db down", 300, 10, 3600) == (0, 0)
        assert ct(b"passdb\0iain\0pw\0imap\0\0", 0, b"user=iain\0", 300, 10, 3600) == (0, 0)
        assert ct(b"iterate\0\0", 0, b"iain\0", 300, 10, 3600) == (0, 0)


# ---------------------------------------------------------------- the cache

KEYS = st.sampled_from([b"getpw\0a\0", b"getpw\0b\0", b"local\0a\0", b"k", b"", b"z" * 50])
TIME = st.floats(0, 1000, allow_nan=False).map(lambda x: round(x, 3))
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=8), TIME,
              st.sampled_from([-1, 0, 0.5, 1, 5, 100]), st.sampled_from([-1, 0, 1, 50])),
    st.tuples(st.just("get"), KEYS, TIME),
    st.tuples(st.just("get_stale"), KEYS, TIME),
    st.tuples(st.just("clear")),
    st.tuples(st.just("len")),
), max_size=60)


def apply(cache, ops):
    out = []
    for op in ops:
        name = op[0]
        if name == "put":
            out.append(cache.put(*op[1:]))
        elif name == "get":
            out.append(cache.get(*op[1:]))
        elif name == "get_stale":
            out.append(cache.get_stale(*op[1:]))
        elif name == "clear":
            out.append(cache.clear())
        else:
            out.append(len(cache))
        out.append(cache.generation)
    return out


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 5), OPS)
def test_cache_equal(max_entries, ops):
    """Same answers, same evictions, same generations, on random operation sequences
    (a small bound, so eviction happens often)."""
    assert apply(_hot.ResponseCache(max_entries), ops) == \
        apply(fallback.ResponseCache(max_entries), ops)


def test_cache_semantics():
    for m in (_hot, fallback):
        c = m.ResponseCache(4)
        assert c.put(b"a", b"A", 10.0, 5, 100) is True
        assert c.get(b"a", 14.9) == b"A" and c.get(b"a", 15.0) is None
        assert c.get_stale(b"a", 114.9) == b"A" and c.get_stale(b"a", 115.0) is None
        assert c.put(b"n", b"N", 10.0, 5, 0) and c.get_stale(b"n", 15.0) is None
        assert c.put(b"never", b"X", 10.0, 0, 100) is False and c.get(b"never", 10) is None
        for k in (b"b", b"c"):
            c.put(k, k, 10.0, 5)
        assert len(c) == 4
        c.put(b"d", b"d", 10.0, 5)  # full: the older half goes
        assert len(c) == 3
        assert c.get(b"a", 11.0) is None and c.get(b"n", 11.0) is None
        assert c.get(b"d", 11.0) == b"d" and c.get(b"c", 11.0) == b"c"
        # re-putting a key makes it the newest
        c.put(b"b", b"B2", 11.0, 5)
        c.put(b"e", b"e", 11.0, 5)
        c.put(b"f", b"f", 11.0, 5)  # evicts the older half: c and d
        assert c.get(b"b", 12.0) == b"B2" and c.get(b"c", 12.0) is None
        g = c.generation
        c.clear()
        assert len(c) == 0 and c.generation == g + 1
        with pytest.raises(ValueError):
            m.ResponseCache(0)


def test_split_fields_of_requests():
    """The loop's request parsing (hotpath.split_fields) on the commands it knows."""
    assert split_fields(b"getpw\0iain\0") == [b"getpw", b"iain"]
    assert split_fields(b"ping\0") == [b"ping"]
    assert split_fields(b"getpw\0\0") == [b"getpw", b""]
    with pytest.raises(ValueError):
        split_fields(b"ping")
