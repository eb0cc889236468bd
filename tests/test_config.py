"""control/sqlserver parsing (SPEC section 2), for both hot-path implementations."""
import os

import pytest

from qmailsql.core import _hot, config, fallback
from qmailsql.core.definitions import ConfigError

IMPLS = [pytest.param(fallback, id="python"), pytest.param(_hot, id="cython")]


@pytest.fixture(params=IMPLS)
def parse(request):
    return request.param.parse_sqlserver


def test_key_value_forms(parse):
    text = (b"# comment line\n"
            b"\n"
            b"server localhost\n"
            b"login=qmail\n"
            b"password \t =\t s3cret  \n"
            b"\tdb\t\tqmail   # trailing comment\n"
            b"  userlen   =   64\n")
    got = parse(text, "sqlserver")
    assert got == {"server": ["localhost"], "login": "qmail", "password": "s3cret",
                   "db": "qmail", "userlen": "64"}


def test_aliases_are_canonical(parse):
    got = parse(b"user u\npass p\ndatabase d\nserver a\nserver b\n")
    assert got == {"login": "u", "password": "p", "db": "d", "server": ["a", "b"]}


def test_quotes_and_hash_inside_values(parse):
    got = parse(b'password "a b#c \\"q\\""\nlogin \'x y\'  # note\ndb a#b\n')
    assert got == {"password": 'a b#c "q"', "login": "x y", "db": "a#b"}


def test_crlf_lines(parse):
    assert parse(b"login u\r\ndb d\r\n") == {"login": "u", "db": "d"}


@pytest.mark.parametrize("text, line, words", [
    (b"login u\nfrobnicate 1\n", 2, "unknown key 'frobnicate'"),
    (b"login u\nlogin v\n", 2, "given twice (first on line 1)"),
    (b"login u\nuser v\n", 2, "given twice"),
    (b"db\n", 1, "has no value"),
    (b"db =\n", 1, "has no value"),
    (b"password \"abc\n", 1, "unterminated quote"),
    (b"password \"abc\" x\n", 1, "text after the closing quote"),
    (b"=x\n", 1, "expected `key value`"),
    (b"login-x y\n", 1, "expected white space or `=`"),
    (b"\n\n\ndb \xff\xfe\n", 4, "not valid UTF-8"),
])
def test_errors_name_file_and_line(parse, text, line, words):
    with pytest.raises(ConfigError) as e:
        parse(text, "/var/qmail/control/sqlserver")
    assert e.value.lineno == line
    assert str(e.value).startswith("/var/qmail/control/sqlserver:%d: " % line)
    assert words in str(e.value)


def write(tmp_path, text, mode=0o640):
    (tmp_path / "control").mkdir(exist_ok=True)
    p = tmp_path / "control" / "sqlserver"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_load_defaults_and_servers(tmp_path):
    write(tmp_path, "server db1:3307\nserver [::1]:3308\nserver /run/mysqld/mysqld.sock\n"
                    "login q\npassword p\n")
    cfg = config.load(str(tmp_path))
    # sockets first, then the order given
    assert [str(s) for s in cfg.servers] == ["/run/mysqld/mysqld.sock", "db1:3307",
                                            "[::1]:3308"]
    assert cfg.write_server == config.Server(host="db1", port=3307)
    assert (cfg.auto_break, cfg.userlen, cfg.system_users, cfg.funky_queries) == (
        b"-", 32, True, False)
    assert cfg.db == "qmail"


def test_load_typed_values(tmp_path):
    write(tmp_path, "server h\nport 3310\nlogin q\nauto_break +\nuserlen 64\n"
                    "system_users no\nfunky_queries yes\ncache_ttl 7\nwrite_server w:1\n")
    cfg = config.load(str(tmp_path))
    assert cfg.servers == [config.Server(host="h", port=3310)]
    assert cfg.write_server == config.Server(host="w", port=1)
    assert (cfg.auto_break, cfg.userlen, cfg.system_users, cfg.funky_queries,
            cfg.cache_ttl) == (b"+", 64, False, True, 7)


@pytest.mark.parametrize("text, words", [
    ("login q\n", "no `server`"),
    ("server h\n", "no `login`"),
    ("server h\nlogin q\nuserlen many\n", "userlen must be a whole number"),
    ("server h\nlogin q\nsystem_users perhaps\n", "system_users must be yes or no"),
    ("server h:99999\nlogin q\n", "port must be 1-65535"),
    ("server h\nlogin q\nauto_break --\n", "auto_break must be one"),
])
def test_load_rejects_bad_values(tmp_path, text, words):
    write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert words in str(e.value)
    assert str(tmp_path / "control" / "sqlserver") in str(e.value)


def test_world_readable_password_is_refused_with_fix(tmp_path):
    p = write(tmp_path, "server h\nlogin q\npassword p\n", mode=0o644)
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert "chgrp qmailsql %s; chmod 640 %s" % (p, p) in str(e.value)
    os.chmod(p, 0o640)
    assert config.load(str(tmp_path)).password == "p"


def test_world_readable_without_password_is_fine(tmp_path):
    write(tmp_path, "server h\nlogin q\n", mode=0o644)
    assert config.load(str(tmp_path)).password == ""


def test_password_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    os.chmod(pw, 0o600)
    write(tmp_path, "server h\nlogin q\npassword_file %s\n" % pw, mode=0o644)
    assert config.load(str(tmp_path)).password == "from-file"
    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError, match="readable by every local user"):
        config.load(str(tmp_path))


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(str(tmp_path))
    assert "missing" in str(e.value) and "QMAILSQL_QMAIL_DIR" in str(e.value)


def test_cli_reports_config_error_with_111(tmp_path, capsys):
    from qmailsql.cli import main
    write(tmp_path, "server h\nlogin q\nbogus 1\n")
    assert main(["--qmail-dir", str(tmp_path), "getpw", "iain"]) == 111
    err = capsys.readouterr().err
    assert "sqlserver:3: unknown key 'bogus'" in err
    assert "out of memory" not in err
