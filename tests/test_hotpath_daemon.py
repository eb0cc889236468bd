"""qmailsqld's hot path: the Cython twins (_hot) equal their Python reference (fallback).

Response framing, the cache policy (cache_times) and the response cache itself, driven
by random operation sequences.
"""
import pytest
from hypothesis import given, settings, strategies as st

from qmailsql.core import _hot, fallback
from qmailsql.daemon import server as daemon
from qmailsql.core.hotpath import PRIVILEGED, STALE, decode_frame, split_fields


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

KEYS = st.sampled_from([b"getpw\0a\0", b"getpw\0b\0", b"local\0a\0", b"k", b"", b"z" * 50,
                        b"uid=1\0local\0a\0", b"uid=2\0local\0b\0", b"y" * 1500])
TIME = st.floats(0, 1000, allow_nan=False).map(lambda x: round(x, 3))
OWNERS = st.sampled_from([PRIVILEGED, PRIVILEGED, 0, 1, 2])
RESPONSES = st.one_of(st.binary(max_size=8), st.sampled_from([b"r" * 1100, b"s" * 3000]))
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, RESPONSES, TIME,
              st.sampled_from([-1, 0, 0.5, 1, 5, 100]), st.sampled_from([-1, 0, 1, 50]),
              OWNERS),
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
        out.append([cache.share_cost(o) for o in (STALE, PRIVILEGED, 0, 1, 2)])
    return out


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 6), st.integers(0, 4), st.integers(0, 6), OPS)
def test_cache_equal(max_entries, uid_entries, unprivileged_entries, ops):
    """Same answers, same evictions, same shares, same generations, on random operation
    sequences (small bounds, so eviction happens often)."""
    args = (max_entries, uid_entries, unprivileged_entries)
    assert apply(_hot.ResponseCache(*args), ops) == \
        apply(fallback.ResponseCache(*args), ops)


@pytest.mark.parametrize("m", [_hot, fallback], ids=["cython", "python"])
def test_cache_semantics(m):
    c = m.ResponseCache(4, uid_entries=2, unprivileged_entries=3)
    assert c.put(b"a", b"A", 10.0, 5, 100) is True
    assert c.get(b"a", 14.9) == b"A" and c.get(b"a", 15.0) is None
    assert c.get_stale(b"a", 114.9) == b"A" and c.get_stale(b"a", 115.0) is None
    assert c.put(b"n", b"N", 10.0, 5, 0) and c.get_stale(b"n", 15.0) is None
    assert c.put(b"never", b"X", 10.0, 0, 100) is False and c.get(b"never", 10) is None
    # a full share drops its oldest entry, one per new entry
    for k in (b"b", b"c", b"d"):
        c.put(k, k, 10.0, 5)
    assert len(c) == 5 and c.share_cost(PRIVILEGED) == 4 and c.share_cost(STALE) == 1
    c.put(b"e", b"e", 10.0, 5)
    assert c.get(b"n", 11.0) is None and c.get(b"b", 11.0) == b"b" and len(c) == 5
    # re-putting a key makes it the newest
    c.put(b"b", b"B2", 11.0, 5)
    c.put(b"f", b"f", 11.0, 5)
    assert c.get(b"b", 12.0) == b"B2" and c.get(b"c", 12.0) is None
    # the stale store is a share of its own: privileged fresh-only answers never evict it
    assert c.get_stale(b"a", 100.0) == b"A"
    # each unprivileged uid has its share, all of them together a bound
    assert c.put(b"u7-1", b"x", 10.0, 5, 50, owner=7)
    assert c.get_stale(b"u7-1", 20.0) is None  # no stale time for unprivileged answers
    c.put(b"u7-2", b"x", 10.0, 5, owner=7)
    c.put(b"u7-3", b"x", 10.0, 5, owner=7)
    assert c.get(b"u7-1", 11.0) is None and c.share_cost(7) == 2
    c.put(b"u8-1", b"x", 10.0, 5, owner=8)
    c.put(b"u8-2", b"x", 10.0, 5, owner=8)  # 4 unprivileged > 3: the oldest of all goes
    assert c.get(b"u7-2", 11.0) is None and c.share_cost(7) == 1 and c.share_cost(8) == 2
    assert c.get_stale(b"a", 100.0) == b"A" and c.get(b"f", 11.0) == b"f"
    # bigger entries count more; one bigger than its whole share is not kept
    assert c.put(b"big", b"x" * 2048, 10.0, 5) and c.share_cost(PRIVILEGED) == 4
    assert len([k for k in (b"b", b"d", b"e", b"f", b"big") if c.get(k, 11.0)]) == 2
    assert c.put(b"huge", b"x" * 5000, 10.0, 5) is False
    g = c.generation
    c.clear()
    assert len(c) == 0 and c.generation == g + 1 and c.share_cost(STALE) == 0
    with pytest.raises(ValueError):
        m.ResponseCache(0)


@pytest.mark.parametrize("m", [_hot, fallback], ids=["cython", "python"])
def test_cache_memory_stays_bounded(m):
    """Past its bounds, the cache's memory stops growing (tracemalloc sees both
    implementations' allocations): the table is never rebuilt, nothing creeps."""
    import tracemalloc
    c = m.ResponseCache(2000, uid_entries=50, unprivileged_entries=1000)
    response = b"x" * 60
    tracemalloc.start()
    try:
        sizes = []
        for rnd in range(4):
            for i in range(20000):
                c.put(b"getpw\0user%d-%d\0" % (rnd, i), response, 1.0, 300, 3600)
                c.put(b"getpw\0gone%d-%d\0" % (rnd, i), response, 1.0, 10)
                c.put(b"uid=%d\0local\0%d\0" % (i % 40, i), response, 1.0, 300, owner=i % 40)
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    print("traced memory after each round of 60,000 puts: %s" % sizes)
    assert len(c) == 2000 + 2000 + 40 * 25  # every share full, none over
    assert sizes[3] <= sizes[1] * 1.05


def test_split_fields_of_requests():
    """The loop's request parsing (hotpath.split_fields) on the commands it knows."""
    assert split_fields(b"getpw\0iain\0") == [b"getpw", b"iain"]
    assert split_fields(b"ping\0") == [b"ping"]
    assert split_fields(b"getpw\0\0") == [b"getpw", b""]
    with pytest.raises(ValueError):
        split_fields(b"ping")
