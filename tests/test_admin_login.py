"""The administrator's login (SPEC 2): initdb, grant, migrate and the admin commands log
in from a MariaDB option file, never with control/sqlserver's login, and the daemon's
login has exactly the README's two grants."""
import os
import subprocess
import sys

import pytest

import qmailsql
from qmailsql.core import config as configmod
from qmailsql.core import db as dbmod
from qmailsql.sandbox import host as sb

README_GRANTS = {"GRANT SELECT ON `{db}`.* TO `{u}`@`{h}`",
                 "GRANT UPDATE (`password_type`, `password`) ON `{db}`.`mailbox` TO `{u}`@`{h}`"}


def grants(paths, user, host):
    rows = sb.root_sql(paths, [("SHOW GRANTS FOR %s@%s", (user, host))])
    return {g for (g,) in rows if not g.startswith("GRANT USAGE ON *.*")}


def expected(db, user, host):
    return {g.format(db=db, u=user, h=host) for g in README_GRANTS}


def qmailsql_cmd(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qmailsql"] + list(args), capture_output=True,
                          text=True, env=env or os.environ, timeout=120)


def write_sqlserver(qhome, sandbox, login="qsadmintest", password="pw-admin-test",
                    database="qmail"):
    path = qhome / "control" / "sqlserver"
    path.write_text("server %s\nlogin %s\n%sdb %s\n" % (
        sb.Paths(sandbox).db_socket, login, "password %s\n" % password if password else "",
        database))
    os.chmod(path, 0o640)


@pytest.fixture
def qhome(tmp_path, sandbox):
    """A qmail home that is no sandbox, on the sandbox's server, whose control/sqlserver
    names login qsadmintest: the administrator must come from an option file."""
    (tmp_path / "control").mkdir()
    write_sqlserver(tmp_path, sandbox)
    return tmp_path


@pytest.fixture
def admin_env(sandbox, tmp_path):
    """A shell with no ~/.my.cnf; QMAILSQL_DEFAULTS_FILE names the sandbox's root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMAILSQL_")}
    home = tmp_path / "nohome"
    home.mkdir()
    env["HOME"] = str(home)
    with_file = dict(env, QMAILSQL_DEFAULTS_FILE=str(sb.Paths(sandbox).root_cnf))
    return env, with_file


def test_sandbox_daemon_login_has_exactly_the_readme_grants(sandbox):
    paths = sb.Paths(sandbox)
    cfg = configmod.load(str(sandbox))
    for host in ("localhost", "127.0.0.1"):
        assert grants(paths, cfg.login, host) == expected("qmail", cfg.login, host)
    d = dbmod.Directory(cfg)  # the daemon's own login cannot write rows
    try:
        with pytest.raises(dbmod.DirectoryUnavailable) as e:
            d.query("INSERT INTO rcpthosts (host) VALUES ('nope.example')", write=True)
        assert "(1142)" in str(e.value)
        assert d.query("SELECT COUNT(*) FROM mailbox")  # but it reads
    finally:
        d.close()


def test_connect_is_the_administrator_and_admin_false_the_daemon(sandbox):
    with qmailsql.connect(str(sandbox)) as q:
        assert q.config.admin and q.config.defaults_file == str(sb.Paths(sandbox).root_cnf)
        assert q.directory.query("SELECT CURRENT_USER()")[0][0] == "root@localhost"
    with qmailsql.connect(str(sandbox), admin=False) as q:
        assert q.directory.query("SELECT CURRENT_USER()")[0][0] == "qmailsql@localhost"


@pytest.fixture
def powerful_login(sandbox):
    """control/sqlserver's login (qhome's qsadmintest) may do everything in the DB."""
    paths = sb.Paths(sandbox)
    sb.root_sql(paths, [("CREATE OR REPLACE USER qsadmintest@localhost IDENTIFIED BY "
                         "'pw-admin-test'", ()),
                        ("GRANT ALL ON qmail.* TO qsadmintest@localhost", ())])
    yield paths
    sb.root_sql(paths, [("DROP USER IF EXISTS qsadmintest@localhost", ())])


def test_admin_commands_never_use_the_daemons_login(qhome, admin_env, powerful_login):
    """control/sqlserver's login here may do everything; the commands still do not use
    it: without an option file they log in as the OS user (root, with a password here:
    refused), with one as its user."""
    paths = powerful_login
    plain, with_file = admin_env
    for args in (["rcpthost", "list"], ["mailbox", "list"], ["initdb"], ["sync",
                                                                          "--no-reload"]):
        r = qmailsql_cmd("--qmail-dir", str(qhome), *args, env=plain)
        assert r.returncode == 111, (args, r.stdout, r.stderr)
        assert "Access denied for user 'root'@'localhost'" in r.stderr, r.stderr
        assert "option files" in r.stderr and "--defaults-file" in r.stderr
    r = qmailsql_cmd("--qmail-dir", str(qhome), "rcpthost", "list", env=with_file)
    assert r.returncode == 0, r.stderr
    r = qmailsql_cmd("--qmail-dir", str(qhome), "rcpthost", "list", "--defaults-file",
                     str(paths.root_cnf), env=plain)
    assert r.returncode == 0, r.stderr
    r = qmailsql_cmd("--qmail-dir", str(qhome), "--defaults-file", "/nonexistent/my.cnf",
                     "rcpthost", "list", env=plain)
    assert r.returncode == 111 and "/nonexistent/my.cnf" in r.stderr, r.stderr


def test_grant_gives_exactly_the_readme_grants_and_takes_the_rest(qhome, admin_env, sandbox):
    paths = sb.Paths(sandbox)
    _, with_file = admin_env
    sb.root_sql(paths, [("CREATE OR REPLACE USER qsadmintest@localhost IDENTIFIED BY 'old'", ()),
                        ("GRANT ALL ON qmail.* TO qsadmintest@localhost", ()),
                        ("GRANT PROCESS ON *.* TO qsadmintest@localhost", ())])
    try:
        r = qmailsql_cmd("--qmail-dir", str(qhome), "grant", env=with_file)
        assert r.returncode == 0, r.stderr
        assert grants(paths, "qsadmintest", "localhost") == expected("qmail", "qsadmintest",
                                                                    "localhost")
        assert "GRANT PROCESS" not in "".join(grants(paths, "qsadmintest", "localhost"))
        assert "pw-admin-test" not in r.stdout + r.stderr  # never shown
        # control/sqlserver's password is now the login's
        cfg = configmod.load(str(qhome))
        d = dbmod.Directory(cfg)
        try:
            assert d.query("SELECT CURRENT_USER()")[0][0] == "qsadmintest@localhost"
            d.query("UPDATE mailbox SET password = password WHERE username = 'nobody-here'",
                    write=True)  # the rehash grant
            with pytest.raises(dbmod.DirectoryUnavailable):
                d.query("DELETE FROM mailbox WHERE username = 'nobody-here'", write=True)
        finally:
            d.close()
        r = qmailsql_cmd("--qmail-dir", str(qhome), "grant", "--host", "10.9.8.7", env=with_file)
        assert r.returncode == 0, r.stderr
        assert grants(paths, "qsadmintest", "10.9.8.7") == expected("qmail", "qsadmintest",
                                                                   "10.9.8.7")
    finally:
        sb.root_sql(paths, [("DROP USER IF EXISTS qsadmintest@localhost", ()),
                            ("DROP USER IF EXISTS qsadmintest@'10.9.8.7'", ())])


def test_grant_needs_the_password_in_sqlserver(qhome, admin_env, sandbox):
    _, with_file = admin_env
    write_sqlserver(qhome, sandbox, password="")
    r = qmailsql_cmd("--qmail-dir", str(qhome), "grant", env=with_file)
    assert r.returncode == 100 and "no password" in r.stderr, r.stderr


def test_initdb_creates_the_database(qhome, admin_env, sandbox):
    paths = sb.Paths(sandbox)
    _, with_file = admin_env
    write_sqlserver(qhome, sandbox, database="qs_initdb_test")
    try:
        r = qmailsql_cmd("--qmail-dir", str(qhome), "initdb", env=with_file)
        assert r.returncode == 0, r.stderr
        assert "created database qs_initdb_test" in r.stdout
        tables = sb.root_sql(paths, [("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_schema = 'qs_initdb_test'", ())])
        assert {t for (t,) in tables} == {"mailbox", "alias", "virtual", "rcpthosts",
                                             "domain_quota"}
        r = qmailsql_cmd("--qmail-dir", str(qhome), "initdb", env=with_file)
        assert r.returncode == 0 and "nothing (all tables exist)" in r.stdout, r.stderr
        assert "created database" not in r.stdout
    finally:
        sb.root_sql(paths, [("DROP DATABASE IF EXISTS qs_initdb_test", ())])
    write_sqlserver(qhome, sandbox, database="bad`name")
    r = qmailsql_cmd("--qmail-dir", str(qhome), "initdb", env=with_file)
    assert r.returncode == 100 and "database name" in r.stderr, r.stderr


def test_admin_connect_args_carry_no_daemon_identity(tmp_path):
    """Neither the daemon's password nor its TLS client certificate goes into the
    administrator's connection; the server's CA check stays."""
    cfg = configmod.from_mapping({"server": ["db.example:3307"], "login": "qmailsql",
                                  "password": "daemon-secret", "ssl_ca": "/ca",
                                  "ssl_cert": "/daemon.pem", "ssl_key": "/daemon.key"})
    cnf = tmp_path / "admin.cnf"
    cnf.write_text("[client]\nuser=dba\n")
    admin = configmod.as_admin(cfg, str(cnf))
    args = dbmod.connect_args(admin, admin.servers[0])
    assert "user" not in args and "passwd" not in args
    assert (args["read_default_file"], args["read_default_group"]) == (str(cnf), "qmailsql")
    assert args["ssl"] == {"ca": "/ca"} and args["ssl_mode"] == "VERIFY_IDENTITY"
    assert "daemon-secret" not in repr(args)
    assert dbmod.connect_args(cfg, cfg.servers[0])["ssl"]["cert"] == "/daemon.pem"


def test_quota_commands_log_in_as_the_administrator(qhome, admin_env, powerful_login):
    """`qmailsql quota` and `quota set` are admin commands: the option file's login,
    never control/sqlserver's (which may do everything here)."""
    paths = powerful_login
    plain, with_file = admin_env
    try:
        for args in (["quota"], ["quota", "set", "@quota-admin.example", "--size", "1M"]):
            r = qmailsql_cmd("--qmail-dir", str(qhome), *args, env=plain)
            assert r.returncode == 111, (args, r.stdout, r.stderr)
            assert "Access denied for user 'root'@'localhost'" in r.stderr, r.stderr
        r = qmailsql_cmd("--qmail-dir", str(qhome), "quota", "set", "@quota-admin.example",
                         "--size", "1M", "--defaults-file", str(paths.root_cnf), env=plain)
        assert r.returncode == 0, r.stderr
        assert sb.root_sql(paths, [("SELECT quota_size FROM qmail.domain_quota WHERE "
                                    "host = 'quota-admin.example'", ())]) == ((1048576,),)
        r = qmailsql_cmd("--qmail-dir", str(qhome), "--defaults-file", str(paths.root_cnf),
                         "quota", "--json", env=plain)
        assert r.returncode == 0, r.stderr
        assert "quota-admin.example" in r.stdout
    finally:
        sb.root_sql(paths, [("DELETE FROM qmail.domain_quota WHERE host = "
                             "'quota-admin.example'", ())])
