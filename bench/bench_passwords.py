"""Time passwords.verify() per stored scheme (pytest-benchmark).

    python -m pytest bench/bench_passwords.py --benchmark-enable
    python bench/bench_passwords.py          # the same

Each function times one successful verification; the crypt ones use the
library's default cost for their prefix (gensalt count 0).
"""
import sys

from qmailsql.core import _crypt
from qmailsql.core.passwords import (
    dummy_verify, mysql41_password, mysql_old_password, verify,
)

PW = b"correct horse battery staple"


def _crypt_row(prefix):
    return "Crypt-Password", _crypt.crypt(PW, _crypt.gensalt(prefix)).decode()


def _check(benchmark, kind, stored):
    assert benchmark(verify, kind, stored, PW) is True


def test_verify_plain(benchmark):
    _check(benchmark, "Password", PW.decode())


def test_verify_mysql41(benchmark):
    _check(benchmark, "MySQL-Password", mysql41_password(PW))


def test_verify_mysql_old(benchmark):
    _check(benchmark, "MySQL-Password", mysql_old_password(PW))


def test_verify_sha512_crypt(benchmark):
    _check(benchmark, *_crypt_row(b"$6$"))


def test_verify_bcrypt(benchmark):
    _check(benchmark, *_crypt_row(b"$2b$"))


def test_verify_yescrypt(benchmark):
    _check(benchmark, *_crypt_row(b"$y$"))


def test_dummy_verify(benchmark):
    assert benchmark(dummy_verify, PW) is False


if __name__ == "__main__":
    import pytest
    raise SystemExit(pytest.main([__file__, "--benchmark-enable", "-q", "-p", "no:cacheprovider"]
                                 + sys.argv[1:]))
