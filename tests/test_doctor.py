"""`qmailsql doctor` (SPEC section 7): one test per check.

Each test plants one fault, checks that the doctor reports it together with its fix,
removes the fault and checks that the finding is gone. Faults in rows and homes use
the shared sandbox (`db`); faults in control/sqlserver use a copy of the sandbox's
qmail home (same DB, own control files); stopping the DB or the daemon happens in a
private sandbox of this module.
"""
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import add_alias, add_mailbox, add_virtual, newu

from conftest import run_as
from qmailsql.core import cdb, schema
from qmailsql.admin import doctor, sync
from qmailsql.admin.doctor import database
from qmailsql.sandbox import host as sb
from qmailsql.core.helpers import helper_path

UID, GID = 800, 100
FAKE_STOCK_LOCAL = b"#!/bin/sh\n# stands in for stock qmail-local in these tests\nexit 0\n"


def run(root):
    return doctor.run(str(root), limit=None, progress=doctor.Progress(enabled=False))


def found(report, check, text=None):
    return [f for f in report.findings
            if f.check == check and (text is None or text in f.what or text in f.fix)]


@pytest.fixture
def homes():
    """Homes under a world-searchable directory (pytest's tmp_path sits below a 0700
    directory, which the searchability check would rightly report)."""
    d = Path(tempfile.mkdtemp(prefix="qsdoc-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_home(path, uid=UID, gid=GID, maildir=True):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    if maildir:
        for sub in ("Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
            os.chown(os.path.join(path, sub), uid, gid)
    return str(path)


def sql(q, statement, params=None):
    return q.directory.query(statement, params, write=True)


@pytest.fixture
def sqlserver_lines(sandbox):
    """Append lines to the shared sandbox's control/sqlserver for one test."""
    path = sandbox / "control" / "sqlserver"
    saved = path.read_bytes()

    def add(*lines):
        path.write_bytes(saved + b"".join(l.encode() + b"\n" for l in lines))
    yield add
    path.write_bytes(saved)


@pytest.fixture
def qdir(sandbox):
    """A qmail home of its own (control/, bin/) whose sqlserver reaches the shared DB."""
    d = Path(tempfile.mkdtemp(prefix="qsq-", dir="/tmp"))
    os.chmod(d, 0o755)
    (d / "control").mkdir()
    (d / "bin").mkdir()
    shutil.copy2(sandbox / "control" / "sqlserver", d / "control" / "sqlserver")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ control/sqlserver

def test_sqlserver_missing(qdir):
    text = (qdir / "control" / "sqlserver").read_bytes()
    (qdir / "control" / "sqlserver").unlink()
    r = run(qdir)
    [f] = found(r, "sqlserver-missing")
    assert str(qdir / "control" / "sqlserver") in f.what and "chmod 640" in f.fix
    assert not found(r, "db-unreachable")  # nothing to connect with: no DB checks
    (qdir / "control" / "sqlserver").write_bytes(text)
    os.chmod(qdir / "control" / "sqlserver", 0o640)
    r = run(qdir)
    assert not found(r, "sqlserver-missing")
    assert r.rows.get("mailbox") is not None  # the DB was scanned this time


def test_sqlserver_world_readable(qdir):
    path = qdir / "control" / "sqlserver"
    os.chmod(path, 0o644)
    [f] = found(run(qdir), "sqlserver-world-readable")
    assert "every local user" in f.what
    assert f.fix == "chgrp qmailsql %s; chmod 640 %s" % (path, path)
    os.chmod(path, 0o640)
    assert not found(run(qdir), "sqlserver-world-readable")


def test_password_file_world_readable(qdir):
    path = qdir / "control" / "sqlserver"
    lines = path.read_text().split("\n")
    secret = [l.split()[1] for l in lines if l.startswith("password")][0]
    pwfile = qdir / "control" / "sqlserver.password"
    pwfile.write_text(secret + "\n")
    os.chmod(pwfile, 0o644)
    path.write_text("\n".join("password_file %s" % pwfile if l.startswith("password") else l
                              for l in lines))
    r = run(qdir)
    [f] = found(r, "sqlserver-world-readable")
    assert f.what.startswith("password_file %s" % pwfile)
    assert r.rows.get("mailbox") is not None  # the password from the file worked
    os.chmod(pwfile, 0o640)
    assert not found(run(qdir), "sqlserver-world-readable")
    path.write_text(path.read_text() + "\npassword %s\n" % secret)
    [f] = found(run(qdir), "sqlserver-invalid")
    assert "both `password` and `password_file`" in f.what


def test_sqlserver_world_readable_without_password_is_fine(qdir):
    path = qdir / "control" / "sqlserver"
    path.write_text("server /nonexistent/socket\nlogin nobody\n")
    os.chmod(path, 0o644)
    assert not found(run(qdir), "sqlserver-world-readable")


def test_sqlserver_invalid(qdir):
    path = qdir / "control" / "sqlserver"
    good = path.read_bytes()
    path.write_bytes(good + b"pasword oops\n")
    [f] = found(run(qdir), "sqlserver-invalid")
    assert "pasword" in f.what and str(path) in f.fix
    path.write_bytes(good)
    assert not found(run(qdir), "sqlserver-invalid")


def _nobody():
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the doctor as nobody")
def test_sqlserver_unreadable_by_current_user(qdir):
    uid = _nobody()
    path = qdir / "control" / "sqlserver"
    os.chmod(qdir / "control", 0o755)
    path.write_text("server /nonexistent/socket\nlogin qmailsql\n")
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)

    def as_nobody():
        """The doctor's findings, computed in a child process running as nobody."""
        return run_as(uid, 65534, lambda: [f.__dict__ for f in run(qdir).findings])

    hits = [f for f in as_nobody() if f["check"] == "sqlserver-unreadable"]
    assert len(hits) == 1 and "not readable by uid %d" % uid in hits[0]["what"]
    assert "chmod 640" in hits[0]["fix"]
    os.chmod(path, 0o644)  # no password in it: readable by all is fine
    assert not [f for f in as_nobody() if f["check"].startswith("sqlserver")]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the doctor as nobody")
def test_every_probe_the_doctor_may_not_make_is_a_finding(qdir, sandbox):
    """Run as a user who may not enter the package (a checkout under /root, mode 700)
    nor parts of the qmail home, the doctor reports what it could not examine."""
    uid = _nobody()
    private = Path(tempfile.mkdtemp(prefix="qsp-", dir="/tmp"))  # mode 0700, root's
    try:
        (private / "libexec").mkdir()
        for d in ("users", "run"):
            (qdir / d).mkdir(mode=0o700)
        (qdir / "users" / "assign").write_text("=jdoe:jdoe:800:100:/home/jdoe:::\n.\n")
        (qdir / "control" / "locals").write_text("example.org\n")
        os.chmod(qdir / "control" / "locals", 0o600)
        os.chmod(qdir / "bin", 0o700)
        os.chmod(qdir / "control" / "sqlserver", 0o644)  # so that the DB checks run too
        for d in (sandbox, sb.Paths(sandbox).mysql):  # and nobody reaches the DB's socket
            os.chmod(d, 0o755)
        env = {"QMAILSQL_SOCKET": str(qdir / "run" / "qmailsqld.sock")}

        run(qdir)  # as root first: every module the doctor imports is loaded before the fork

        def doctor_as_nobody():
            from qmailsql.core import helpers
            helpers.LIBEXEC = private / "libexec"
            os.environ.update(env)
            return [f.__dict__ for f in run(qdir).findings]
        findings = run_as(uid, 65534, doctor_as_nobody)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    blind = {f["what"].split(" cannot examine ")[1].split(":")[0]
             for f in findings if f["check"] == "doctor-no-access"}
    assert {env["QMAILSQL_SOCKET"], str(qdir / "users" / "assign"),
            str(qdir / "control" / "locals")} <= blind, findings
    missing = [f["what"] for f in findings if f["check"] == "helper-missing"]
    assert missing and all("cannot be reached by uid %d" % uid in w for w in missing), missing


# ------------------------------------------------------------------ DB servers, schema

def test_each_server_checked_separately(qdir):
    path = qdir / "control" / "sqlserver"
    good = path.read_bytes()
    path.write_bytes(good + b"server /nonexistent/qmailsql-doctor.sock\n")
    r = run(qdir)
    [f] = found(r, "db-unreachable")
    assert "/nonexistent/qmailsql-doctor.sock" in f.what and "mysql -S" in f.fix
    assert r.rows.get("mailbox") is not None  # the good server still answered
    path.write_bytes(good)
    assert not found(run(qdir), "db-unreachable")


def test_login_refused(qdir):
    path = qdir / "control" / "sqlserver"
    good = path.read_text()
    bad = "\n".join("password  wrong" if l.startswith("password") else l
                    for l in good.split("\n"))
    path.write_text(bad)
    r = run(qdir)
    [f] = found(r, "db-login-refused")
    assert "refuses login 'qmailsql'" in f.what
    assert f.fix.startswith("qmailsql --qmail-dir %s grant " % qdir)
    path.write_text(good)
    assert not found(run(qdir), "db-login-refused")


def test_schema_userlen(sandbox, db, sqlserver_lines):
    sqlserver_lines("userlen 64")
    r = run(sandbox)
    hits = found(r, "schema-userlen")
    assert {f.what.split(" ")[0] for f in hits} == {"mailbox.username", "alias.username",
                                                     "alias.alias", "virtual.username",
                                                     "virtual.virtual_username"}
    assert all(f.fix == "qmailsql migrate --userlen 64" for f in hits)
    sqlserver_lines("userlen 32")
    assert not found(run(sandbox), "schema-userlen")


def test_schema_missing_table(sandbox, db):
    sql(db, "RENAME TABLE rcpthosts TO rcpthosts_doctor_test")
    try:
        [f] = found(run(sandbox), "schema-missing-table")
        assert "rcpthosts" in f.what and f.fix.startswith("qmailsql initdb")
    finally:
        sql(db, "RENAME TABLE rcpthosts_doctor_test TO rcpthosts")
    assert not found(run(sandbox), "schema-missing-table")


def test_schema_missing_service_bars_column(sandbox, db):
    sql(db, "ALTER TABLE mailbox DROP COLUMN deny_services")
    try:
        [f] = found(run(sandbox), "schema-missing-column")
        assert "mailbox has no column deny_services" in f.what
        assert f.fix == "qmailsql migrate"
    finally:
        sql(db, "ALTER TABLE mailbox ADD COLUMN deny_services SET('pop3','imap','smtp') "
                "NOT NULL DEFAULT '' AFTER suspended")
    assert not found(run(sandbox), "schema-missing-column")


def column_definition(q, table, column):
    return sql(q, "SELECT column_type, is_nullable, column_default, extra FROM "
                  "information_schema.columns WHERE table_schema = DATABASE() "
                  "AND table_name = %s AND column_name = %s", (table, column))


def table_layout(q, table):
    """SHOW CREATE TABLE without the AUTO_INCREMENT counter (rows come and go)."""
    return re.sub(r" AUTO_INCREMENT=\d+", "", sql(q, "SHOW CREATE TABLE `%s`" % table)[0][1])


@pytest.mark.parametrize("table, column", [("mailbox", "password_type"), ("alias", "id")])
def test_schema_missing_column_of_an_old_layout_fix_makes_initdbs_column(sandbox, db, table,
                                                                         column):
    """A column an old qmail-mysql table lacks: the fix adds it as initdb defines it
    (password_type with its default Crypt-Password, not ENUM's first value Password;
    an id as the primary key)."""
    want, layout = column_definition(db, table, column), table_layout(db, table)
    sql(db, "ALTER TABLE `%s` DROP COLUMN %s" % (table, column))
    try:
        [f] = found(run(sandbox), "schema-missing-column")
        assert "table %s has no column %s (an old qmail-mysql layout?)" % (table, column) \
            in f.what
        sql(db, f.fix)
        assert column_definition(db, table, column) == want
        assert not found(run(sandbox), "schema-missing-column")
    finally:
        # back where initdb puts it (the fix adds it at the end) for the other tests
        defined = schema.TABLES[table]
        if not column_definition(db, table, column):
            sql(db, database.add_column_fix(defined, defined.column(column), 32))
        sql(db, "ALTER TABLE `%s` MODIFY %s%s" % (table, defined.column(column).sql(32),
                                                  defined.place(defined.column(column))))
    assert table_layout(db, table) == layout


# ------------------------------------------------------------------ mailbox rows and homes

def test_home_missing(sandbox, db, homes):
    add_mailbox(db, "ann", homes / "ann")
    [f] = found(run(sandbox), "home-missing")
    assert "'ann'" in f.what and str(homes / "ann") in f.what
    assert f.fix.startswith("mkdir -p %s" % (homes / "ann")) and "chown -R 800:100" in f.fix
    make_home(homes / "ann")
    assert not found(run(sandbox), "home-missing")


def test_home_owner_and_group(sandbox, db, homes):
    add_mailbox(db, "bob", make_home(homes / "bob", uid=801, gid=GID))
    r = run(sandbox)
    [f] = found(r, "home-owner")
    assert "owned by uid 801, not the row's uid 800" in f.what
    assert f.fix.startswith("chown -R 800:100 %s" % (homes / "bob"))
    os.chown(homes / "bob", UID, 101)
    r = run(sandbox)
    assert not found(r, "home-owner")
    [g] = found(r, "home-group")
    assert "group 101, not the row's gid 100" in g.what and g.fix.startswith("chgrp -R 100")
    os.chown(homes / "bob", UID, GID)
    assert not found(run(sandbox), "home-group")


def test_path_not_searchable(sandbox, db, homes):
    parent = homes / "mail"
    parent.mkdir()
    os.chmod(parent, 0o700)  # root's, like the FAQ's /home/mail gone wrong
    add_mailbox(db, "dmp", make_home(parent / "dmp"))
    add_mailbox(db, "dmp2", make_home(parent / "dmp2"))
    [f] = found(run(sandbox), "path-not-searchable")
    assert f.what.startswith("%s (drwx------ root:" % parent)
    assert "uid 800 gid 100" in f.what and "and 1 more mailbox" in f.what
    assert "no $HOME/Maildir" in f.what
    assert f.fix == "chmod o+x %s" % parent
    os.chmod(parent, 0o711)  # the FAQ's drwx--x--x
    assert not found(run(sandbox), "path-not-searchable")


def test_maildir_not_searchable(sandbox, db, homes):
    home = make_home(homes / "eve")
    add_mailbox(db, "eve", home)
    os.chmod(os.path.join(home, "Maildir"), 0o600)
    [f] = found(run(sandbox), "path-not-searchable")
    assert f.what.startswith(os.path.join(home, "Maildir"))
    assert f.fix == "chmod u+x %s" % os.path.join(home, "Maildir")
    os.chmod(os.path.join(home, "Maildir"), 0o700)
    assert not found(run(sandbox), "path-not-searchable")


def test_maildir_missing_and_owner(sandbox, db, homes):
    home = make_home(homes / "fay", maildir=False)
    add_mailbox(db, "fay", home)
    [f] = found(run(sandbox), "maildir-missing")
    assert "maildirmake %s/Maildir" % home in f.fix
    os.mkdir(os.path.join(home, "Maildir"))  # made by root: wrong owner
    r = run(sandbox)
    assert not found(r, "maildir-missing")
    [g] = found(r, "maildir-owner")
    assert g.fix == "chown -R 800:100 %s/Maildir" % home
    os.chown(os.path.join(home, "Maildir"), UID, GID)
    assert not found(run(sandbox), "maildir-owner")


def test_home_world_writable(sandbox, db, homes):
    home = make_home(homes / "gus")
    add_mailbox(db, "gus", home)
    os.chmod(home, 0o777)
    [f] = found(run(sandbox), "home-writable")
    assert "Uh-oh: home directory is writable" in f.what and f.fix == "chmod o-w %s" % home
    os.chmod(home, 0o700)
    assert not found(run(sandbox), "home-writable")


def test_uid_zero(sandbox, db, homes):
    add_mailbox(db, "toor", make_home(homes / "toor", uid=0, gid=0), uid=0, gid=0)
    [f] = found(run(sandbox), "uid-zero")
    assert "'toor' has uid 0" in f.what and "WHERE username='toor'" in f.fix
    sql(db, "UPDATE mailbox SET uid=%s, gid=%s WHERE username=%s", (UID, GID, "toor"))
    os.chown(homes / "toor", UID, GID)
    assert not found(run(sandbox), "uid-zero")


def test_username_case(sandbox, db, homes):
    sql(db, "ALTER TABLE mailbox MODIFY username VARCHAR(32) NOT NULL COLLATE utf8mb4_bin")
    try:
        home = make_home(homes / "iain")
        add_mailbox(db, "iain", home)
        add_mailbox(db, "Iain", home)
        [f] = found(run(sandbox), "username-case")
        assert "'iain' and 'Iain' differ only in case" in f.what
        assert "takes 'iain'; 'Iain' never gets mail" in f.what
        assert "DELETE FROM mailbox WHERE username='Iain' COLLATE utf8mb4_bin;" in f.fix
        sql(db, "DELETE FROM mailbox WHERE username=%s COLLATE utf8mb4_bin", ("Iain",))
        assert not found(run(sandbox), "username-case")
    finally:
        sql(db, "DELETE FROM mailbox")
        sql(db, "ALTER TABLE mailbox MODIFY username VARCHAR(32) NOT NULL "
                "COLLATE utf8mb4_general_ci")


def test_username_too_long(sandbox, db, homes):
    name = "x" * 32
    add_mailbox(db, name, make_home(homes / "long"))
    [f] = found(run(sandbox), "username-too-long")
    assert "not shorter than userlen 32" in f.what and "userlen 33" in f.fix
    sql(db, "UPDATE mailbox SET username=%s WHERE username=%s", ("x" * 31, name))
    assert not found(run(sandbox), "username-too-long")


def test_password_type(sandbox, db, homes):
    add_mailbox(db, "hal", make_home(homes / "hal"), password="$1$short", ptype="Crypt-Password")
    [f] = found(run(sandbox), "password-type")
    assert "'hal'" in f.what and "qmailsql passwd hal" in f.fix
    from qmailsql.core import passwords
    ptype, stored = passwords.hash_password("md5-crypt", b"pw")
    sql(db, "UPDATE mailbox SET password=%s, password_type=%s WHERE username='hal'",
        (stored, ptype))
    assert not found(run(sandbox), "password-type")


def test_mailbox_misconfigured(sandbox, db):
    add_mailbox(db, "rel", "relative/home")
    [f] = found(run(sandbox), "mailbox-misconfigured")
    assert "'rel'" in f.what and "absolute home" in f.what
    sql(db, "DELETE FROM mailbox WHERE username='rel'")
    assert not found(run(sandbox), "mailbox-misconfigured")


# ------------------------------------------------------------------ alias rows

def test_alias_blank(sandbox, db):
    add_alias(db, "virtual", "@", "", "")
    [(rid,)] = sql(db, "SELECT id FROM alias")
    [f] = found(run(sandbox), "alias-blank")
    assert "both alias_username and alias_host blank" in f.what
    assert f.fix.startswith("DELETE FROM alias WHERE id=%d;" % rid)
    assert "UPDATE alias SET alias_username='.', alias_host='/Maildir/' WHERE id=%d;" % rid \
        in f.fix
    sql(db, "UPDATE alias SET alias_username='.', alias_host='/Maildir/' WHERE id=%s", (rid,))
    assert not found(run(sandbox), "alias-blank")


def test_alias_rows_shadowed_by_dot_qmail_files(sandbox, db, homes):
    """Rows and a dot-qmail file stock qmail-local would read instead: the wrapper
    defers those deliveries (111); the doctor names the file and what to do. Here
    ~/.qmail-default next to rows for iain-fwd matters only because ~/.qmail-fwd-owner
    makes the wrapper hand stock qmail-local the address's own extension."""
    home = make_home(homes / "iain")
    add_mailbox(db, "iain", home)
    add_alias(db, "iain", "fwd", "elsewhere", "example.net")
    add_alias(db, "iain", "", ".", "/Maildir/")
    assert not found(run(sandbox), "alias-shadowed")
    Path(home, ".qmail-default").write_text("./Maildir/\n")
    assert not found(run(sandbox), "alias-shadowed")  # rows at fwd: .qmail-default unread
    Path(home, ".qmail-fwd-owner").write_text("&owner@example.net\n")
    [f] = found(run(sandbox), "alias-shadowed")
    assert "iain-fwd" in f.what and home + "/.qmail-default" in f.what
    assert ".qmail-fwd-owner" in f.what
    assert "qmailsql alias" in f.fix and "DELETE FROM alias" in f.fix
    Path(home, ".qmail").write_text("./Other/\n")  # and the plain address's rows
    fs = found(run(sandbox), "alias-shadowed")
    assert {f.what.split(" ")[3] for f in fs} == {"iain", "iain-fwd"}, [f.what for f in fs]
    os.unlink(Path(home, ".qmail"))
    os.unlink(Path(home, ".qmail-fwd-owner"))
    assert not found(run(sandbox), "alias-shadowed")


def test_alias_misconfigured(sandbox, db):
    add_alias(db, "iain", "x", ".", "")
    [f] = found(run(sandbox), "alias-misconfigured")
    assert "needs the rest of the delivery instruction" in f.what
    sql(db, "UPDATE alias SET alias_host='/Maildir/'")
    assert not found(run(sandbox), "alias-misconfigured")


def test_alias_delivery_character_not_alone(sandbox, db):
    add_alias(db, "iain", "slowlaris", "./Maildir/", "")
    [(rid,)] = sql(db, "SELECT id FROM alias")
    [f] = found(run(sandbox), "alias-misconfigured")
    assert "'./Maildir/' in alias_username" in f.what and "must stand alone" in f.what
    assert f.fix == "UPDATE alias SET alias_username='.', alias_host='/Maildir/' WHERE id=%d;" \
        % rid
    sql(db, "UPDATE alias SET alias_username='.', alias_host='/Maildir/' WHERE id=%s", (rid,))
    assert not found(run(sandbox), "alias-misconfigured")


def test_blank_mailbox_username(sandbox, db):
    add_mailbox(db, "", "/nonexistent")
    [f] = found(run(sandbox), "mailbox-misconfigured")
    assert "blank username" in f.what and f.fix == "DELETE FROM mailbox WHERE username='';"
    sql(db, f.fix)
    assert not found(run(sandbox), "mailbox-misconfigured")


# ------------------------------------------------------------------ virtual rows

def test_funky_queries_catchall(sandbox, db, sqlserver_lines):
    add_virtual(db, "virtual", "@", "", "virtual.com")
    assert not found(run(sandbox), "virtual-funky-catchall")  # fine without funky_queries
    sqlserver_lines("funky_queries yes")
    [f] = found(run(sandbox), "virtual-funky-catchall")
    assert "virtual.com" in f.what
    assert f.fix == "update virtual set virtual_username='%' where virtual_username='';"
    sql(db, f.fix)  # the FAQ's statement, exactly as printed (no parameters in it)
    assert not found(run(sandbox), "virtual-funky-catchall")


def test_magic_forward_loop(sandbox, db, sqlserver_lines):
    sqlserver_lines("magic_forwarding yes")
    for vu, host, ext in (("a", "x.example", "b@y.example"), ("b", "y.example", "a@x.example")):
        add_virtual(db, "forward", ext, vu, host)
    [f] = found(run(sandbox), "virtual-forward-loop")
    assert "a@x.example -> b@y.example -> a@x.example" in f.what
    assert f.fix.startswith("point one of them elsewhere")
    sql(db, "UPDATE virtual SET ext='someone@elsewhere.example' WHERE virtual_username='b'")
    assert not found(run(sandbox), "virtual-forward-loop")


def test_user_named_forward_with_magic_forwarding(sandbox, db, homes, sqlserver_lines):
    add_mailbox(db, "forward", make_home(homes / "forward"))
    assert not found(run(sandbox), "virtual-forward-user")
    sqlserver_lines("magic_forwarding yes")
    [f] = found(run(sandbox), "virtual-forward-user")
    assert "DO NOT create a user named forward" in f.what
    sql(db, "DELETE FROM mailbox WHERE username='forward'")
    assert not found(run(sandbox), "virtual-forward-user")


def test_virtual_target_missing(sandbox, db, homes):
    add_virtual(db, "nosuchuser", "", "sales", "shop.example")
    [f] = found(run(sandbox), "virtual-target-missing")
    assert "sales@shop.example" in f.what and "'nosuchuser'" in f.what
    add_mailbox(db, "nosuchuser", make_home(homes / "nsu"))
    assert not found(run(sandbox), "virtual-target-missing")


def test_virtual_blank_username(sandbox, db):
    add_virtual(db, "", "", "x", "blank.example")
    [f] = found(run(sandbox), "virtual-blank-username")
    assert "x@blank.example" in f.what
    sql(db, "DELETE FROM virtual")
    assert not found(run(sandbox), "virtual-blank-username")


# ------------------------------------------------------------------ control files

@pytest.fixture
def control_files(sandbox):
    names = ("virtualdomains", "rcpthosts", "morercpthosts", "morercpthosts.cdb", "locals")
    saved = {}
    for n in names:
        p = sandbox / "control" / n
        saved[n] = p.read_bytes() if p.exists() else None
    yield sandbox / "control"
    for n, data in saved.items():
        p = sandbox / "control" / n
        if data is None:
            if p.exists():
                p.unlink()
        else:
            p.write_bytes(data)


def test_control_files_stale(sandbox, db, control_files):
    add_virtual(db, "joe", "", "joe", "stale.example")
    hits = found(run(sandbox), "control-stale")
    assert {f.what.split(" ")[0] for f in hits} == {"control/virtualdomains",
                                                    "control/rcpthosts"}
    assert any("lacks stale.example:stale.example" in f.what for f in hits)
    assert all(f.fix.endswith("sync") for f in hits)
    sync.sync(str(sandbox), db.directory, reload=False, out=lambda m: None)
    assert not found(run(sandbox), "control-stale")
    sql(db, "DELETE FROM virtual")
    hits = found(run(sandbox), "control-stale")
    assert any("still has stale.example" in f.what for f in hits)


def test_virtual_domain_in_control_locals(sandbox, db, control_files):
    add_virtual(db, "joe", "", "joe", "loc.example")
    (control_files / "locals").write_text("localhost\nLoc.Example\n")
    [f] = found(run(sandbox), "control-locals")
    assert f.what.startswith("loc.example is a virtual domain") and "remove the line" in f.fix
    (control_files / "locals").write_text("localhost\n")
    assert not found(run(sandbox), "control-locals")


# ------------------------------------------------------------------ users/cdb

@pytest.fixture
def users_dir(sandbox):
    d = sandbox / "users"
    d.mkdir(exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_users_cdb_shadows_db(sandbox, db, homes, users_dir):
    add_mailbox(db, "joe", make_home(homes / "joe"))
    add_mailbox(db, "kim", make_home(homes / "kim"))
    (users_dir / "cdb").write_bytes(newu([(False, "joe", ["joe", "507", "100", "/home/joe",
                                                           "", ""]),
                                           (True, "joe-", ["joe", "507", "100", "/home/joe",
                                                           "-", ""])]))
    [f] = found(run(sandbox), "users-cdb-shadow")
    assert "users/cdb entry =joe:joe:507:100:/home/joe:::" in f.what
    assert "DB mailbox 'joe'" in f.what and "qmail-newu" in f.fix
    (users_dir / "cdb").write_bytes(newu([(False, "somebody", ["s", "507", "100", "/x", "",
                                                               ""])]))
    assert not found(run(sandbox), "users-cdb-shadow")
    # a catch-all `+:` takes every DB mailbox: one finding that says how many
    (users_dir / "cdb").write_bytes(newu([(True, "", ["alias", "7790", "2108", "/a", "-",
                                                      ""])]))
    [f] = found(run(sandbox), "users-cdb-shadow")
    assert "and 1 more" in f.what


def test_users_cdb_entries_that_bypass_db_accounts(sandbox, db, homes, users_dir):
    """users/cdb entries whose account is not the DB's although the DB has something for
    that name (alias rows, or the mailbox with another uid or home): qmail-local then
    delivers as stock qmail would and the DB's rows are skipped."""
    kim = make_home(homes / "kim")
    add_mailbox(db, "kim", kim)
    add_alias(db, "jdoe", "", "jd", "example.net")
    add_alias(db, "kim", "x", ".", "/Maildir/")
    entries = [(False, "jdoe", ["jdoe", "801", "101", "/home/x", "", ""]),
               (True, "boss-", ["kim", str(UID), str(GID), "/elsewhere", "-", ""]),
               (False, "boss", ["kim", str(UID), str(GID), kim, "", ""]),
               (False, "other", ["other", "802", "102", "/home/other", "", ""])]
    (users_dir / "cdb").write_bytes(newu(entries))
    fs = found(run(sandbox), "users-cdb-bypass")
    assert len(fs) == 2, [f.what for f in fs]
    [jdoe] = [f for f in fs if "jdoe" in f.what]
    [kim_f] = [f for f in fs if "jdoe" not in f.what]
    assert "=jdoe:jdoe:801:101:/home/x:::" in jdoe.what and "1 alias row" in jdoe.what
    assert "not a DB account" in jdoe.what
    assert "+boss-:kim:%d:%d:/elsewhere:-::" % (UID, GID) in kim_f.what
    assert kim in kim_f.what and "1 alias row" in kim_f.what
    for f in fs:
        assert f.severity == "error"
        assert "qmailsql import assign" in f.fix and "DELETE FROM alias" in f.fix
    (users_dir / "cdb").write_bytes(newu(entries[2:]))  # the DB's own account, a stranger
    assert not found(run(sandbox), "users-cdb-bypass")


def test_users_assign_text_shadows_db(sandbox, db, homes, users_dir):
    add_mailbox(db, "joe", make_home(homes / "joe"))
    (users_dir / "assign").write_text("=joe:joe:507:100:/home/joe:::\n.\n")
    [f] = found(run(sandbox), "users-cdb-shadow")
    assert f.what.startswith("users/assign entry =joe:") and "once qmail-newu" in f.what
    (users_dir / "assign").write_text(".\n")
    assert not found(run(sandbox), "users-cdb-shadow")


# ------------------------------------------------------------------ helpers in QMAIL/bin

def install(qdir):
    from qmailsql import cli
    assert cli.main(["install", "--qmail-dir", str(qdir)]) == 0


def test_helpers_missing_then_installed(qdir, capsys):
    r = run(qdir)
    assert {f.what.split(" ")[0] for f in found(r, "helper-missing")} == {
        str(qdir / "bin" / "qmail-getpw"), str(qdir / "bin" / "qmail-local")}
    assert all(f.fix == "qmailsql install --qmail-dir %s" % qdir
               for f in found(r, "helper-missing"))
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)  # qmail's own
    os.chmod(qdir / "bin" / "qmail-local", 0o755)
    install(qdir)
    r = run(qdir)
    assert not found(r, "helper-missing") and not found(r, "qmail-local-orig")
    assert not found(r, "helper-overwritten") and not found(r, "helper-outdated")


def test_helper_overwritten_by_qmail_reinstall(qdir, capsys):
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)
    install(qdir)
    # `make setup check` in a qmail tree copies the stock programs over ours
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL + b"# newer\n")
    (qdir / "bin" / "qmail-getpw").write_bytes(b"#!/bin/sh\n# stock qmail-getpw\n")
    r = run(qdir)
    hits = found(r, "helper-overwritten")
    assert {f.what.split(" ")[0] for f in hits} == {str(qdir / "bin" / "qmail-getpw"),
                                                    str(qdir / "bin" / "qmail-local")}
    fix = "mv %s %s && qmailsql install --qmail-dir %s" % (
        qdir / "bin" / "qmail-local", qdir / "bin" / "qmail-local.orig", qdir)
    assert [f.fix for f in hits] == [fix, fix]  # one command repairs both
    p = subprocess.run(fix.replace("qmailsql install", "%s -m qmailsql install"
                                   % sys.executable), shell=True,
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    r = run(qdir)
    assert not found(r, "helper-overwritten") and not found(r, "qmail-local-orig")
    assert (qdir / "bin" / "qmail-local.orig").read_bytes().endswith(b"# newer\n")


def test_helper_outdated(qdir, capsys):
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)
    install(qdir)
    (qdir / "bin" / "qmail-getpw").write_bytes(b"\x7fELF an older build QMAILSQL_SOCKET ...")
    [f] = found(run(qdir), "helper-outdated")
    assert "older qmailsql helper" in f.what and f.fix.startswith("qmailsql install")
    install(qdir)
    assert not found(run(qdir), "helper-outdated")


def test_qmail_local_orig(qdir, capsys):
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)
    install(qdir)
    orig = qdir / "bin" / "qmail-local.orig"
    orig.unlink()
    [f] = found(run(qdir), "qmail-local-orig")
    assert "is missing" in f.what and str(orig) in f.fix
    shutil.copy2(helper_path("qmail-local"), orig)  # the wrapper would run itself
    [f] = found(run(qdir), "qmail-local-orig")
    assert "would run itself" in f.what
    orig.write_bytes(FAKE_STOCK_LOCAL)
    os.chmod(orig, 0o755)
    assert not found(run(qdir), "qmail-local-orig")


def test_helpers_built_for_another_qmail_dir(qdir, monkeypatch, capsys):
    from qmailsql.core.config import compiled_qmail_dir
    assert os.path.realpath(compiled_qmail_dir()) != os.path.realpath(qdir)
    (qdir / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)
    install(qdir)
    monkeypatch.delenv("QMAILSQL_SOCKET", raising=False)
    [f] = found(run(qdir), "helper-qmail-dir")
    assert "built with conf-qmail %s" % compiled_qmail_dir() in f.what
    assert "QMAILSQL_SOCKET" in f.fix
    monkeypatch.setenv("QMAILSQL_SOCKET", str(qdir / "qmailsql" / "qmailsqld.sock"))
    assert not found(run(qdir), "helper-qmail-dir")


# ------------------------------------------------------------------ the daemon

def test_daemon_not_running(qdir, monkeypatch):
    sock = qdir / "qmailsqld.sock"
    monkeypatch.setenv("QMAILSQL_SOCKET", str(sock))
    [f] = found(run(qdir), "daemon-not-running")
    assert "no socket %s" % sock in f.what and "qmailsql daemon" in f.fix
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # a stale socket: nobody listens
    s.close()
    [f] = found(run(qdir), "daemon-not-running")
    assert "connect to" in f.what


def test_daemon_not_answering(qdir, monkeypatch):
    sock = qdir / "mute.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(5)
    accepted = []

    def mute():
        try:
            c, _ = srv.accept()
            accepted.append(c)  # read nothing, answer nothing
        except OSError:
            pass
    t = threading.Thread(target=mute, daemon=True)
    t.start()
    monkeypatch.setenv("QMAILSQL_SOCKET", str(sock))
    monkeypatch.setattr(doctor.daemon, "PING_TIMEOUT", 0.5)
    try:
        [f] = found(run(qdir), "daemon-not-answering")
        assert "did not answer `ping`" in f.what
    finally:
        srv.close()
        for c in accepted:
            c.close()


def test_real_daemon_answers(sandbox, db):
    r = run(sandbox)
    assert not found(r, "daemon-not-running") and not found(r, "daemon-not-answering")


# ------------------------------------------------------------------ the alias user

def test_alias_user_missing(sandbox, db, homes):
    if doctor.passwd_exists("alias"):
        pytest.skip("this machine has an /etc/passwd alias user")
    [f] = found(run(sandbox), "alias-user-missing")
    assert "useradd" in f.fix and "INSERT INTO mailbox" in f.fix
    add_mailbox(db, "alias", make_home(homes / "alias"), password="")
    assert not found(run(sandbox), "alias-user-missing")


# ------------------------------------------------------------------ a private sandbox

@pytest.fixture(scope="module")
def private():
    """A sandbox of this module's own, made healthy: alias user, helpers installed over a
    stand-in stock qmail-local, nothing else in the tables."""
    root = Path(tempfile.mkdtemp(prefix="qsp-", dir="/tmp"))
    env = sb.up(str(root))
    try:
        os.chmod(root, 0o755)
        (root / "bin" / "qmail-local").write_bytes(FAKE_STOCK_LOCAL)
        os.chmod(root / "bin" / "qmail-local", 0o755)
        from qmailsql import cli
        assert cli.main(["install", "--qmail-dir", str(root)]) == 0
        home = make_home(root / "alias")
        import qmailsql
        with qmailsql.connect(str(root)) as q:
            add_mailbox(q, "alias", home, password="")
        yield root, env
    finally:
        sb.down(str(root))
        shutil.rmtree(root, ignore_errors=True)


def doctor_cli(root, env, *extra):
    return subprocess.run([sys.executable, "-m", "qmailsql", "doctor", "--qmail-dir", str(root)]
                          + list(extra), capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env))


def test_clean_sandbox_is_healthy(private, monkeypatch):
    root, env = private
    monkeypatch.setenv("QMAILSQL_SOCKET", env["QMAILSQL_SOCKET"])
    r = run(root)
    assert r.healthy, r.findings
    p = doctor_cli(root, env, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == []
    assert "doctor: 0 findings" in p.stderr and "1 mailbox" in p.stderr
    p = doctor_cli(root, env)
    assert p.returncode == 0 and p.stdout.startswith("doctor: 0 findings (none)")


def test_cli_exit_1_and_json_fields(private, monkeypatch):
    root, env = private
    path = root / "control" / "sqlserver"
    os.chmod(path, 0o644)
    try:
        p = doctor_cli(root, env, "--json")
        assert p.returncode == 1
        out = json.loads(p.stdout)
        assert [set(f) for f in out] == [{"check", "severity", "what", "fix"}]
        assert out[0]["check"] == "sqlserver-world-readable"
        p = doctor_cli(root, env)
        lines = p.stdout.split("\n")
        assert lines[0].startswith("ERROR [sqlserver-world-readable] ")
        assert lines[1].startswith("    fix: chgrp qmailsql ")
    finally:
        os.chmod(path, 0o640)


def test_db_down(private, monkeypatch):
    root, env = private
    monkeypatch.setenv("QMAILSQL_SOCKET", env["QMAILSQL_SOCKET"])
    paths = sb.Paths(root)
    sb.stop_db(paths)
    try:
        r = run(root)
        [f] = found(r, "db-unreachable")
        assert str(paths.db_socket) in f.what and "mail waits" in f.what
        assert "start MariaDB" in f.fix
    finally:
        sb.start_db(paths)
    assert run(root).healthy


def test_daemon_stopped(private, monkeypatch):
    root, env = private
    monkeypatch.setenv("QMAILSQL_SOCKET", env["QMAILSQL_SOCKET"])
    paths = sb.Paths(root)
    sb.stop_daemon(paths)
    try:
        [f] = found(run(root), "daemon-not-running")
        assert "qmailsql daemon" in f.fix
    finally:
        sb.start_daemon(paths)
    assert run(root).healthy


# ------------------------------------------------------------------ output and limits

def test_findings_capped_per_check_but_counted(sandbox, db, homes):
    for i in range(5):
        add_mailbox(db, "nohome%d" % i, homes / ("nohome%d" % i))
    r = doctor.run(str(sandbox), limit=2, progress=doctor.Progress(enabled=False))
    assert r.counts["home-missing"] == 5 and len(found(r, "home-missing")) == 2
    more = [f for f in r.capped() if f.check == "home-missing" and "3 more" in f.what]
    assert len(more) == 1
    assert "home-missing 5" in r.summary() and "mailbox rows" in r.summary()


def test_progress_only_on_a_terminal():
    import io
    buf = io.StringIO()
    p = doctor.Progress(stream=buf)
    p.update("mailbox", 10, 100, 0.0, force=True)
    assert buf.getvalue() == ""  # StringIO is not a terminal
    p = doctor.Progress(stream=buf, enabled=True)
    p.update("mailbox", 10, 100, 0.0, force=True)
    assert "mailbox 10/100 rows" in buf.getvalue() and "rows/s" in buf.getvalue()
