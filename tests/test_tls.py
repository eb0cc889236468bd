"""TLS to the DB: a private mariadbd with a CA made here by openssl (sandbox.make_certs).

control/sqlserver's ssl_ca / ssl_cert / ssl_key / ssl_verify reach MariaDB's client
library through db.connect; a wrong CA, a wrong host name or a missing certificate is
DirectoryUnavailable (exit 111), never a traceback and never a plain-text fallback.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import add_mailbox

import qmailsql
from qmailsql.core import config as configmod, db
from qmailsql.sandbox import host as sb
from qmailsql.core.resolve import Delivery, Refusal

UID, GID = 800, 100
TLS_USER, X509_USER = "qmailtls", "qmailx509"


@pytest.fixture(scope="module")
def tls():
    """A sandbox whose server speaks TLS on 127.0.0.1; users that require it."""
    assert shutil.which("openssl"), ("openssl is missing (it makes the test CA): "
                                     "apt-get install openssl (bash .ci/setup does)")
    root = Path(tempfile.mkdtemp(prefix="qst-", dir="/tmp"))
    try:
        certs = sb.make_certs(root / "tls")
        other = sb.make_certs(root / "other-ca", name="someone else")
        port = sb.free_port()
        sb.up(str(root), port=port, daemon=False,
              ssl={k: certs[k] for k in ("ca", "cert", "key")})
        paths = sb.Paths(root)
        password = "tls-" + os.urandom(6).hex()
        stmts = []
        for user, require in ((TLS_USER, "SSL"), (X509_USER, "X509")):
            for host in ("localhost", "127.0.0.1"):
                stmts += [("CREATE OR REPLACE USER %%s@%%s IDENTIFIED BY %%s REQUIRE %s"
                           % require, (user, host, password)),
                          ("GRANT SELECT ON qmail.* TO %s@%s", (user, host))]
        sb.root_sql(paths, stmts)
        yield {"root": root, "paths": paths, "port": port, "certs": certs, "other": other,
               "password": password}
    finally:
        try:
            sb.down(str(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)


def qmail_home(tmp_path, tls, user=TLS_USER, server=None, **ssl):
    """A qmail home whose control/sqlserver reaches the TLS server as USER."""
    home = tmp_path / "qmail"
    (home / "control").mkdir(parents=True)
    lines = ["server %s" % (server or "127.0.0.1:%d" % tls["port"]),
             "login %s" % user, "password %s" % tls["password"], "db qmail",
             "connect_timeout 5", "read_timeout 5", "system_users no"]
    lines += ["ssl_%s %s" % kv for kv in ssl.items()]
    path = home / "control" / "sqlserver"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o640)
    return home


def cipher(home):
    d = db.Directory(configmod.load(str(home)))
    try:
        return dict(d.query("SHOW STATUS LIKE 'Ssl_%%'"))
    finally:
        d.close()


def test_connects_over_tls_with_verification(tls, tmp_path):
    c = tls["certs"]
    home = qmail_home(tmp_path, tls, ca=c["ca"], cert=c["client_cert"], key=c["client_key"],
                      verify="yes")
    status = cipher(home)
    assert status["Ssl_cipher"], status
    assert status["Ssl_version"].startswith("TLS"), status


def test_resolves_over_tls(tls, tmp_path, homes):
    c = tls["certs"]
    mhome = homes / "tlsuser"
    mhome.mkdir()
    os.chown(mhome, UID, GID)
    admin = db.Directory(configmod.as_admin(configmod.load(str(tls["root"]))))
    try:
        add_mailbox(admin, "tlsuser", mhome, uid=UID, gid=GID, replace=True)
    finally:
        admin.close()
    home = qmail_home(tmp_path, tls, ca=c["ca"], verify="yes")
    with qmailsql.connect(str(home), admin=False) as q:
        assert q.getpw(b"tlsuser-x") == Delivery(b"tlsuser", UID, GID, os.fsencode(mhome),
                                                  b"-", b"x")


def test_user_that_requires_ssl_is_refused_without_it(tls, tmp_path):
    home = qmail_home(tmp_path, tls)  # no ssl_* keys: plain text
    with pytest.raises(db.DirectoryUnavailable) as e:
        cipher(home)
    assert "Access denied" in str(e.value) or "1045" in str(e.value)


def test_x509_user_needs_the_client_certificate(tls, tmp_path):
    c = tls["certs"]
    with_cert = qmail_home(tmp_path / "a", tls, user=X509_USER, ca=c["ca"],
                           cert=c["client_cert"], key=c["client_key"])
    assert cipher(with_cert)["Ssl_cipher"]
    without = qmail_home(tmp_path / "b", tls, user=X509_USER, ca=c["ca"])
    with pytest.raises(db.DirectoryUnavailable):
        cipher(without)


def test_wrong_ca_is_refused(tls, tmp_path):
    home = qmail_home(tmp_path, tls, ca=tls["other"]["ca"], verify="yes")
    with pytest.raises(db.DirectoryUnavailable) as e:
        cipher(home)
    assert "127.0.0.1:%d" % tls["port"] in str(e.value)
    with qmailsql.connect(str(home), admin=False) as q:
        with pytest.raises(Refusal) as r:
            q.getpw(b"anyone")
        assert r.value.code == 111


def test_wrong_ca_is_exit_111_from_the_command(tls, tmp_path):
    home = qmail_home(tmp_path, tls, ca=tls["other"]["ca"], verify="yes")
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "anyone"],
                       capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILSQL_QMAIL_DIR=str(home)))
    assert r.returncode == 111, r.stderr
    assert r.stdout == b""
    assert b"Traceback" not in r.stderr
    assert r.stderr.startswith(b"qmailsql: ") and r.stderr.count(b"\n") == 1


def test_verify_is_the_default_with_a_ca(tls, tmp_path):
    home = qmail_home(tmp_path, tls, ca=tls["other"]["ca"])  # no ssl_verify line
    with pytest.raises(db.DirectoryUnavailable):
        cipher(home)


def test_verify_no_without_ca_encrypts_without_checking(tls, tmp_path):
    assert cipher(qmail_home(tmp_path, tls, verify="no"))["Ssl_cipher"]


def test_a_given_ca_is_always_checked(tls, tmp_path):
    """ssl_verify no drops the host-name check only: a CA, once named, must sign."""
    home = qmail_home(tmp_path, tls, ca=tls["other"]["ca"], verify="no")
    with pytest.raises(db.DirectoryUnavailable):
        cipher(home)


def test_server_name_is_checked(tls, tmp_path):
    """A certificate from the right CA but for another host is refused with verify."""
    c = tls["certs"]
    elsewhere = sb.make_certs(tmp_path / "elsewhere", hosts=("db.invalid",), ca=c)
    saved = {k: Path(c[k]).read_bytes() for k in ("cert", "key")}
    try:
        for k in ("cert", "key"):
            Path(c[k]).write_bytes(Path(elsewhere[k]).read_bytes())
        sb.root_sql(tls["paths"], [("FLUSH SSL", ())])
        home = qmail_home(tmp_path / "v", tls, ca=c["ca"], verify="yes")
        with pytest.raises(db.DirectoryUnavailable):
            cipher(home)
        assert cipher(qmail_home(tmp_path / "n", tls, ca=c["ca"], verify="no"))["Ssl_cipher"]
    finally:
        for k, data in saved.items():
            Path(c[k]).write_bytes(data)
        sb.root_sql(tls["paths"], [("FLUSH SSL", ())])
    assert cipher(qmail_home(tmp_path / "ok", tls, ca=c["ca"], verify="yes"))["Ssl_cipher"]


def test_unix_socket_is_used_without_tls(tls, tmp_path):
    """TLS keys apply to TCP servers; the local socket needs (and gets) none."""
    cfg = configmod.load(str(tls["root"]))
    home = qmail_home(tmp_path, tls, user=cfg.login, server=str(tls["paths"].db_socket),
                      ca=tls["other"]["ca"], verify="yes")
    (home / "control" / "sqlserver").write_text(
        (home / "control" / "sqlserver").read_text().replace(
            "password %s" % tls["password"], "password %s" % cfg.password))
    assert cipher(home)["Ssl_cipher"] == ""


def test_connect_args_map_sqlserver_keys_to_mysqlclient(tmp_path):
    cfg = configmod.from_mapping({"server": ["db.example:3307", "/run/mysqld.sock"],
                                  "login": "q", "ssl_ca": "/ca", "ssl_cert": "/c",
                                  "ssl_key": "/k", "ssl_verify": "yes"})
    tcp = [s for s in cfg.servers if not s.socket][0]
    sock = [s for s in cfg.servers if s.socket][0]
    args = db.connect_args(cfg, tcp)
    assert args["ssl"] == {"ca": "/ca", "cert": "/c", "key": "/k"}
    assert args["ssl_mode"] == "VERIFY_IDENTITY"
    assert (args["host"], args["port"]) == ("db.example", 3307)
    assert "ssl" not in db.connect_args(cfg, sock)
    cfg.ssl["verify"] = False
    assert db.connect_args(cfg, tcp)["ssl_mode"] == "REQUIRED"
