"""pytest-benchmark: Cython hot path against the pure-Python reference.

Run: .venv/bin/pytest bench/test_bench_hotpath.py --benchmark-enable
Compare the two rows of each group: the ratio is the speed-up.
"""
import pytest

from qmailsql.core import _hot, fallback

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
