"""qmailsqld's hot path: the Cython twins (_hot) equal their Python reference (fallback).

Response framing, the cache policy (cache_times), the response cache itself and the
loop's dispatch of a request, driven by random operation sequences.
"""
import gc

import pytest
from hypothesis import example, given, settings, strategies as st

from qmailsql.core import _hot, fallback
from qmailsql.core.resolve import too_long
from qmailsql.daemon import server as daemon
from qmailsql.daemon.commands import DOVECOT_PEER_COMMANDS, OPEN_COMMANDS, TABLE
from qmailsql.core.hotpath import (FRESH, HIT, NEGATIVE, NEVER, PRIVILEGED, STALE,
                                   decode_frame, split_fields)


def test_daemon_uses_the_compiled_twins():
    if daemon.IMPLEMENTATION == "cython":
        assert daemon.ResponseCache is _hot.ResponseCache
        assert daemon.cache_times is _hot.cache_times
        assert daemon.encode_response is _hot.encode_response
        assert daemon.Dispatcher is _hot.Dispatcher


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

def test_cache_times_is_one_for_both_builds():
    assert _hot.cache_times is fallback.cache_times


def test_cache_times_policy():
    """The worker says what the answer is (Task.kind); the TTLs follow from it alone."""
    for m in (_hot, fallback):
        ct = m.cache_times
        assert ct(HIT, 300, 10, 3600) == (300, 3600)       # a getpw delivery
        assert ct(NEGATIVE, 300, 10, 3600) == (10, 0)      # alias user for want of any, 116
        assert ct(FRESH, 300, 10, 3600) == (300, 0)        # local, localq, userdb
        assert ct(NEVER, 300, 10, 3600) == (0, 0)          # auth, passdb, refusals
        assert ct("bogus", 300, 10, 3600) == (0, 0)        # anything unknown: never


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
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    print("traced memory after each round of 60,000 puts: %s" % sizes)
    assert len(c) == 2000 + 2000 + 40 * 25  # every share full, none over
    # tracemalloc sees every allocation of the process: rounds differ by a few percent
    # (seen: -2.5% to +2.8%); the creep this guards against doubled it every round
    assert max(sizes[2:]) <= sizes[1] * 1.10


def test_split_fields_of_requests():
    """The loop's request parsing (hotpath.split_fields) on the commands it knows."""
    assert split_fields(b"getpw\0iain\0") == [b"getpw", b"iain"]
    assert split_fields(b"ping\0") == [b"ping"]
    assert split_fields(b"getpw\0\0") == [b"getpw", b""]
    with pytest.raises(ValueError):
        split_fields(b"ping")


# ---------------------------------------------------------------- dispatch

MAX_FIELD, MAX_HOMEDIR = 8, 16  # small bounds, so that requests cross them often
ARG = st.sampled_from([b"", b"iain", b"/h", b"-", b"x", b"x" * 9, b"h" * 17, b"a\0b",
                       b"\xff"]) | st.binary(max_size=3)
SHORT = st.sampled_from([b"", b"iain", b"/h", b"x"])  # few values: requests repeat
COMMAND = st.sampled_from(sorted(TABLE) + [b"", b"bogus", b"getpwx", b"LOCAL"])


def join(fields):
    return b"".join(f + b"\0" for f in fields)


PAYLOAD = st.one_of(
    # the field counts the table takes, mostly short fields: they reach the cache
    st.sampled_from(sorted(TABLE)).flatmap(lambda c: st.sampled_from(TABLE[c].nargs).flatmap(
        lambda n: st.lists(SHORT | ARG, min_size=n, max_size=n).map(lambda a: join([c] + a)))),
    st.builds(lambda c, a: join([c] + a), COMMAND, st.lists(ARG, max_size=7)),
    st.binary(max_size=12))
PEER = st.tuples(st.sampled_from([0, 5, 800]), st.integers(1, 99999), st.booleans(),
                 st.sampled_from([OPEN_COMMANDS, DOVECOT_PEER_COMMANDS]))
# (pool index of the request, its peer, time, seconds since the DB failed, TTL of the
# answer put for a WORK result (0: none), its stale time, whether it goes in as the
# peer's own (else privileged))
OP = st.tuples(st.integers(0, 7), PEER, st.floats(0, 50).map(lambda x: round(x, 2)),
               st.sampled_from([1e9, 0.5, 3.0]), st.sampled_from([0, 0, 1, 30]),
               st.sampled_from([0, 100]), st.booleans())


def run_dispatch(m, pool, ops):
    cache = m.ResponseCache(6, 2, 4)
    d = m.Dispatcher(TABLE, cache, too_long, MAX_FIELD, MAX_HOMEDIR, 2.0)
    out = []
    for i, (which, (uid, pid, privileged, commands), now, since, ttl, stale, own) in \
            enumerate(ops):
        result = d.dispatch(pool[which % len(pool)], uid, pid, privileged, commands, now,
                            now - since)
        out.append(result)
        if result[0] == m.WORK and ttl:  # what drain_wake does with the worker's answer
            out.append(cache.put(result[4], b"answer %d" % i, now, ttl, stale,
                                 uid if own and not privileged else PRIVILEGED))
        out.append((len(cache), cache.generation))
    return out


@settings(max_examples=3000, deadline=None)
@given(st.lists(PAYLOAD, min_size=1, max_size=8), st.lists(OP, max_size=30))
@example([b"getpw\0iain\0"], [(0, (0, 1, True, OPEN_COMMANDS), 1.0, 1e9, 1, 100, False),
                              (0, (0, 1, True, OPEN_COMMANDS), 5.0, 0.5, 0, 0, False),
                              (0, (0, 1, True, OPEN_COMMANDS), 6.0, 3.0, 0, 0, False)])
def test_dispatch_equal(pool, ops):
    """The same decisions, refusal frames and log lines, cache hits and cache keys for
    random payloads from random peers, with the answers to earlier ones in the cache."""
    assert run_dispatch(_hot, pool, ops) == run_dispatch(fallback, pool, ops)


LOCAL = [b"local", b"iain", b"/h/iain", b"iain-x", b"-", b"x"]


def payload(fields):
    return b"".join(f + b"\0" for f in fields)


@pytest.mark.parametrize("m", [_hot, fallback], ids=["cython", "python"])
def test_dispatch_semantics(m):
    cache = m.ResponseCache(100)
    d = m.Dispatcher(TABLE, cache, too_long, 16, 32, 2.0)

    def ask(fields, uid=800, privileged=False, now=10.0, failed=-1e9, raw=None):
        return d.dispatch(raw if raw is not None else payload(fields), uid, 4242, privileged,
                          OPEN_COMMANDS, now, failed)
    # a peer's local: worked out under its uid's key, which leaves the domain out
    work = ask(LOCAL + [b"example.org"])
    assert work == (m.WORK, "db", b"local", LOCAL[1:] + [b"example.org"],
                    m.local_cache_key(800, *LOCAL[:6]), None)
    assert work[4] == b"uid=800\0local\0iain\0/h/iain\0iain-x\0-\0x"
    cache.put(work[4], b"lines", 10.0, 300, 0, 800)
    assert ask(LOCAL + [b"other.example"]) == (m.CACHED, b"lines")
    assert ask(LOCAL + [b"example.org"], uid=801)[0] == m.WORK       # not another uid's
    assert ask([b"localq"] + LOCAL[1:] + [b"example.org"])[0] == m.WORK  # nor localq's
    # privileged peers: by payload, first of all
    getpw = payload([b"getpw", b"iain-x"])
    assert ask([b"getpw", b"iain-x"], uid=0, privileged=True) == (
        m.WORK, "db", b"getpw", [b"iain-x"], getpw, None)
    cache.put(getpw, b"delivery", 10.0, 1, 100)
    assert ask(None, uid=0, privileged=True, raw=getpw) == (m.CACHED, b"delivery")
    # expired: the stale answer goes with the task, or at once just after a DB failure
    assert ask(None, uid=0, privileged=True, now=20.0, raw=getpw)[5] == b"delivery"
    assert ask(None, uid=0, privileged=True, now=20.0, failed=19.0, raw=getpw) == (
        m.STALE_NOW, b"delivery",
        "stale answer for getpw 'iain-x': the DB was unreachable 1.0s ago")
    # refusals: the frame, the RefusalLog kind and line, and whether to close after
    assert ask([b"getpw", b"iain"]) == (
        m.REFUSED, m.encode_response(111, b"qmailsqld refuses getpw requests from uid 800"),
        "command", "refused uid 800 for getpw (pid 4242; allow it with QMAILSQL_CLIENT_UIDS)",
        False)
    assert ask(None, raw=b"getpw\0iain")[0:3] == (m.REFUSED, m.MALFORMED, "malformed")
    assert ask(None, raw=b"getpw\0iain")[4] is True
    assert ask([b"nope"])[1] == m.encode_response(100, b"unknown command 'nope'")
    assert ask(LOCAL)[3] == "local request from uid 800 with 5 fields instead of 6"
    big = ask([b"local", b"iain", b"h" * 33] + LOCAL[3:] + [b"d"])
    assert big[0:3] == (m.REFUSED, m.encode_response(111, too_long("homedir", b"h" * 33, 32)
                                                     .encode()), "size")
    assert ask([b"local", b"iain", b"h" * 32] + LOCAL[3:] + [b"d"])[0] == m.WORK
    assert ask([b"local", b"i" * 17] + LOCAL[2:] + [b"d"])[3].endswith(
        too_long("user", b"i" * 17, 16))
    assert ask([b"ping"]) == (m.INLINE, "ping")
