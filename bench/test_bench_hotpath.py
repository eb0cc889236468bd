"""pytest-benchmark: Cython hot path against the pure-Python reference.

Run: .venv/bin/pytest bench/test_bench_hotpath.py --benchmark-enable
Compare the two rows of each group: the ratio is the speed-up.
"""
import pytest

from qmailsql.core import _hot, fallback
from qmailsql.core.resolve import MAX_FIELD, too_long
from qmailsql.daemon.commands import OPEN_COMMANDS, TABLE

IMPLS = [pytest.param(fallback, id="python"), pytest.param(_hot, id="cython")]
SQLSERVER = (b"# qmail's DB\nserver /run/mysqld/mysqld.sock\nserver db2.example.com:3306\n"
             b"login   qmail\npassword = \"s3cr#t\"\ndb\tqmail\nconnect_timeout 3\n"
             b"userlen 64\nfunky_queries yes\ncache_ttl 300\n")
FRAME = fallback.encode_frame([b"getpw", b"example.com-iain-slowlaris"])


@pytest.mark.parametrize("impl", IMPLS)
def test_parse_sqlserver(benchmark, impl):
    benchmark.group = "parse_sqlserver"
    assert benchmark(impl.parse_sqlserver, SQLSERVER)["login"] == "qmail"


@pytest.mark.parametrize("impl", IMPLS)
def test_candidates(benchmark, impl):
    benchmark.group = "candidates"
    assert len(benchmark(impl.candidates, b"example.com-iain-slow-laris-x", b"-", 32)) == 5


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_request(benchmark, impl):
    benchmark.group = "decode_frame+split_fields"

    def decode():
        payload, _ = impl.decode_frame(FRAME)
        return impl.split_fields(payload)
    assert benchmark(decode) == [b"getpw", b"example.com-iain-slowlaris"]


def dispatcher(impl):
    """IMPL's Dispatcher over the daemon's command table, with answers cached for a
    privileged getpw and for uid 800's `local`."""
    cache = impl.ResponseCache(1000)
    cache.put(b"getpw\0iain-slowlaris\0", b"cached", 0.0, 1e9, 100)
    cache.put(impl.local_cache_key(800, *LOCAL[:6]), b"lines", 0.0, 1e9, 0, 800)
    return impl.Dispatcher(TABLE, cache, too_long, MAX_FIELD, 4096, 2.0)


LOCAL = [b"local", b"iain", b"/home/iain", b"iain-slowlaris", b"-", b"slowlaris",
         b"example.org"]


@pytest.mark.parametrize("impl", IMPLS)
def test_dispatch_cached_getpw(benchmark, impl):
    benchmark.group = "dispatch: privileged getpw, cached"
    d = dispatcher(impl)
    assert benchmark(d.dispatch, b"getpw\0iain-slowlaris\0", 0, 1, True, OPEN_COMMANDS, 1.0,
                     -1e9) == (impl.CACHED, b"cached")


@pytest.mark.parametrize("impl", IMPLS)
def test_dispatch_cached_local(benchmark, impl):
    benchmark.group = "dispatch: the mailbox uid's local, cached"
    d = dispatcher(impl)
    payload = b"".join(f + b"\0" for f in LOCAL)
    assert benchmark(d.dispatch, payload, 800, 1, False, OPEN_COMMANDS, 1.0, -1e9) == (
        impl.CACHED, b"lines")
