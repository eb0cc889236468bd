"""`qmailsql import` (users/assign, passwd, vpopmail): after an import, qmail-getpw gives
the answers the old system gave, and the same logins work."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import add_mailbox

from qmailsql.core import aliases, auth, cdb, passwords
from qmailsql import cli
from qmailsql.admin import importers as im
from qmailsql.sandbox import host as sb
from qmailsql.core.resolve import Delivery

ALIAS_UID, ALIAS_GID = 7790, 2108
VPOP_UID = 8900


@pytest.fixture
def homes():
    d = Path(tempfile.mkdtemp(prefix="qsimp-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mkhome(path, uid, gid):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    return str(path)


def counts(q):
    return {t: q.directory.query("SELECT COUNT(*) FROM `%s`" % t, write=True)[0][0]
            for t in ("mailbox", "alias", "virtual")}


def login(q, name, password):
    """True if NAME/PASSWORD logs in through checkpassword's logic."""
    try:
        auth.authenticate(q.directory, q.config, name, password, limiter=auth.Limiter())
        return True
    except auth.LoginRefused:
        return False


def cli_import(sandbox, *args):
    return cli.main(["import"] + list(args) + ["--qmail-dir", str(sandbox)])


# ------------------------------------------------------------------ users/assign semantics

QMAIL_USERS_EXAMPLE = b"""+:alias:7790:2108:/var/qmail/alias:-::
+joe-:joe:507:100:/home/joe:-::
=joe:joe:507:100:/home/joe:::
.
"""


def test_users_table_follows_qmail_users_5():
    entries, problems = im.parse_assign(QMAIL_USERS_EXAMPLE)
    assert problems == []
    t = im.UsersTable(entries)
    assert t.lookup("joe") == ("joe", "507", "100", "/home/joe", "", "")
    assert t.lookup("joe-direct") == ("joe", "507", "100", "/home/joe", "-", "direct")
    assert t.lookup("JOE-Direct") == ("joe", "507", "100", "/home/joe", "-", "Direct")
    assert t.lookup("bill") == ("alias", "7790", "2108", "/var/qmail/alias", "-", "bill")


def test_users_table_from_cdb_matches_assign():
    """A users/cdb built as qmail-newu builds it answers like the assign text."""
    entries, _ = im.parse_assign(QMAIL_USERS_EXAMPLE + b"")
    pairs, wild = [], ""
    for e in entries:
        key = b"!" + e.local.lower().encode() + (b"" if e.wild else b"\0")
        if e.wild and e.local and e.local[-1] not in wild:
            wild += e.local[-1]
        pairs.append((key, "\0".join(e.fields()).encode()))
    pairs.append((b"", wild.encode()))
    from_cdb = im.UsersTable.from_cdb(cdb.Reader(cdb.make(pairs)).items())
    text = im.UsersTable(entries)
    for local in ("joe", "joe-x", "joe-", "bill", "jo", "joex"):
        assert from_cdb.lookup(local) == text.lookup(local)


def test_parse_assign_reports_bad_format():
    entries, problems = im.parse_assign(b"=a:a:1:1:/a:::\nno colon here\n=b:b:1\n")
    assert [e.local for e in entries] == ["a"]
    msgs = [m for _, m in problems]
    assert any("no ':'" in m for m in msgs) and any("6 colon-terminated" in m for m in msgs)
    assert any("no final line '.'" in m for m in msgs)


# ------------------------------------------------------------------ import assign

N_USERS = 20


def make_assign_world(homes):
    """users/assign, passwd and shadow texts; the plain passwords; the homes made."""
    h = homes
    alias_home = mkhome(h / "alias", ALIAS_UID, ALIAS_GID)
    lines, passwd, shadow, plain = [], [], [], {}
    for i in range(1, N_USERS + 1):
        name, uid = "user%02d" % i, 2000 + i
        home = mkhome(h / name, uid, uid)
        lines.append("=%s:%s:%d:%d:%s:::" % (name, name, uid, uid, home))
        lines.append("+%s-:%s:%d:%d:%s:-::" % (name, name, uid, uid, home))
        pw = "pw-%s-'\\%%" % name
        scheme = "sha512-crypt" if i % 5 == 0 else "md5-crypt"
        plain[name] = pw
        passwd.append("%s:x:%d:%d:User %d:%s:/bin/sh" % (name, uid, uid, i, home))
        shadow.append("%s:%s:19000:0:99999:7:::" % (name, passwords.hash_password(
            scheme, pw.encode())[1]))
    u1, u2, u3, u4, u5 = (str(h / n) for n in ("user01", "user02", "user03", "user04",
                                                 "user05"))
    (h / "user03" / ".qmail-work").write_text("./Maildir/\n# to the boss too\n&boss@example.org\n")
    lines += [
        "=joe.shmoe:user01:2001:2001:%s:::" % u1,          # an address that is not a user
        "=user02-work:user02:2002:2002:%s:-:work:" % u2,   # what mailbox user02 gives anyway
        "=postmaster:alias:%d:%d:%s:-:postmaster:" % (ALIAS_UID, ALIAS_GID, alias_home),
        "+mlist-:alias:%d:%d:%s:-:mlist-:" % (ALIAS_UID, ALIAS_GID, alias_home),
        "=sales:user03:2003:2003:%s:-:work:" % u3,         # ~user03/.qmail-work: copied
        "=helpdesk:user04:2004:2004:%s:-:support:" % u4,   # no such file: a forward
        "+foo-:user05:2005:2005:%s:-:bar-:" % u5,          # cannot be expressed
        "=toor:root:0:0:/root:::",                          # uid 0
        "+:alias:%d:%d:%s:-::" % (ALIAS_UID, ALIAS_GID, alias_home),
    ]
    carol = mkhome(h / "carol", 2100, 2100)
    passwd += ["daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",   # below --min-uid
               "carol:x:2100:2100:Carol:%s:/bin/sh" % carol,         # only in passwd
               "locked:x:2101:2101:Locked:%s:/bin/sh" % mkhome(h / "locked", 2101, 2101)]
    plain["carol"] = "carols secret"
    plain["locked"] = "locked secret"
    shadow += ["carol:%s:19000::::::" % passwords.hash_password("md5-crypt", b"carols secret")[1],
               "locked:!%s:19000::::::" % passwords.hash_password("md5-crypt",
                                                                  b"locked secret")[1],
               "daemon:*:19000::::::"]
    assign = "\n".join(lines) + "\n.\n"
    return assign, "\n".join(passwd) + "\n", "\n".join(shadow) + "\n", plain


def probes(assign):
    entries, _ = im.parse_assign(assign.encode())
    out = []
    for e in entries:
        if e.local in ("sales", "helpdesk", "toor", "foo-"):
            continue  # alias rows, or not importable: checked by themselves
        if e.wild:
            out += [e.local + "abc", e.local + "x-Y"] if e.local else ["nobody-here", "Bill"]
        else:
            out.append(e.local)
    return out


def test_import_assign_dry_run_then_apply(sandbox, db, homes, capsys):
    assign, passwd, shadow, plain = make_assign_world(homes)
    files = {}
    for name, text in (("assign", assign), ("passwd", passwd), ("shadow", shadow)):
        files[name] = homes / name
        files[name].write_text(text)
    # the hashes as the old system stored them verify the old passwords
    old_hashes = dict(l.split(":")[:2] for l in shadow.split("\n") if l)
    for name, pw in plain.items():
        assert passwords.verify("Crypt-Password", old_hashes[name].lstrip("!"), pw.encode())

    args = [str(files["assign"]), "--passwd", str(files["passwd"]), "--shadow",
            str(files["shadow"])]
    assert cli_import(sandbox, "assign", *args) == 1  # 1: some lines not importable
    out = capsys.readouterr().out
    assert "+ mailbox user01  uid 2001 gid 2001 home %s" % (homes / "user01") in out
    assert "dry run: nothing written" in out
    assert counts(db) == {"mailbox": 0, "alias": 0, "virtual": 0}
    assert "+foo-:user05:2005:2005" in out and "cannot be expressed" in out
    assert "+ alias sales '' -> &boss@example.org" in out
    assert "+ alias alias 'helpdesk' -> &user04-support" in out
    assert "=toor:root:0:0" in out and "uid 0" in out
    assert "daemon (uid 1) is outside --min-uid" in out

    assert cli_import(sandbox, "assign", *args, "--apply") == 1
    out = capsys.readouterr().out
    assert "applied" in out
    # user01..20, alias, joe.shmoe, carol, locked, sales
    assert counts(db) == {"mailbox": N_USERS + 5, "alias": 3, "virtual": 0}

    table = im.UsersTable(im.parse_assign(assign.encode())[0])
    for local in probes(assign):
        want = table.lookup(local)
        got = db.getpw(local.encode())
        assert (str(got.uid), str(got.gid), got.home.decode(), got.dash.decode(),
                got.ext.decode()) == want[1:], local
        if local != "joe.shmoe":
            assert got.user.decode() == want[0], local
    assert "qmail-getpw now answers user 'joe.shmoe' instead of 'user01'" in out
    # =sales:user03:...:-:work: delivers ~user03/.qmail-work's lines, as user03 in its home
    d = db.getpw(b"sales")
    assert d == Delivery(b"sales", 2003, 2003, os.fsencode(homes / "user03"), b"", b"")
    assert aliases.delivery_lines(db.directory, db.config, d.user, d.home, b"sales", d.dash,
                                  d.ext, b"example.org") == b"./Maildir/\n&boss@example.org\n"
    # =helpdesk:user04:...:-:support: (no ~user04/.qmail-support here): forwarded
    d = db.getpw(b"helpdesk")
    assert (d.user, d.dash, d.ext) == (b"alias", b"-", b"helpdesk")
    assert aliases.delivery_lines(db.directory, db.config, d.user, d.home, b"helpdesk", d.dash,
                                  d.ext, b"example.org") == b"&user04-support\n"

    # the same logins as before: right passwords in, wrong ones and the locked one out
    for name, pw in plain.items():
        assert login(db, name, pw) == (name != "locked"), name
        assert not login(db, name, pw + "x")

    # importing again changes nothing
    assert cli_import(sandbox, "assign", *args, "--apply") == 1
    out = capsys.readouterr().out
    assert "mailbox 0 new, %d unchanged, 0 conflicts" % (N_USERS + 5) in out
    assert "alias 0 new, 3 unchanged" in out


def test_import_assign_conflict_kept_unless_replace(sandbox, db, homes, capsys):
    home = mkhome(homes / "ann", 2201, 2201)
    other = mkhome(homes / "ann2", 2202, 2202)
    add_mailbox(db, "ann", other, uid=2202, gid=2202)
    f = homes / "assign"
    f.write_text("=ann:ann:2201:2201:%s:::\n.\n" % home)
    assert cli_import(sandbox, "assign", str(f), "--apply") == 0
    assert "mailbox 0 new, 0 unchanged, 1 conflict" in capsys.readouterr().out
    assert db.getpw(b"ann").uid == 2202
    assert cli_import(sandbox, "assign", str(f), "--apply", "--replace") == 0
    assert db.getpw(b"ann").uid == 2201


# ------------------------------------------------------------------ the SQL dump parser

def test_dump_parser_literals():
    text = r"""-- comment
# another
/*!40101 SET NAMES utf8 */;
CREATE TABLE IF NOT EXISTS `t` (
  `a` varchar(10) NOT NULL DEFAULT 'x;y',
  b int,
  PRIMARY KEY (`a`), KEY `k` (b)
);
INSERT INTO `t` VALUES ('it''s \'q\' \\ \n\t\0 %\% \_', -3),("dq \"x\"", NULL),
  (0x41424344, 2.5), (_binary 'bin', 1e3), (X'4142', b'101');
INSERT IGNORE INTO db.t (b, a) VALUES (7, 'cols');
DELIMITER ;;
CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.a = 'x;'; END ;;
DELIMITER ;
INSERT INTO t VALUES ('after', 0);
"""
    tables = im.parse_dump(text)
    assert tables["t"]["columns"] == ["a", "b"]
    assert tables["t"]["rows"] == [
        {"a": "it's 'q' \\ \n\t\0 %\\% \\_", "b": -3}, {"a": 'dq "x"', "b": None},
        {"a": "ABCD", "b": 2.5}, {"a": "bin", "b": 1000.0}, {"a": "AB", "b": 5},
        {"a": "cols", "b": 7}, {"a": "after", "b": 0}]


@pytest.mark.parametrize("bad", ["INSERT INTO t VALUES ('unterminated);",
                                 "INSERT INTO t VALUES (1+1);",
                                 "INSERT INTO nocols VALUES (1);",
                                 "INSERT INTO t SET a=1;"])
def test_dump_parser_refuses(bad):
    with pytest.raises(im.DumpError):
        im.parse_dump("CREATE TABLE t (a int);\n" + bad)


# ------------------------------------------------------------------ import vpopmail

def make_vpopmail_world(homes):
    """A mysqldump of a vpopmail DB, the plain passwords, and the homes it names."""
    base = homes / "vpopmail" / "domains"
    users, plain = [], {}
    for i in range(1, 16):
        users.append(("u%02d" % i, "example.com", base / "example.com" / ("u%02d" % i)))
    for i in range(1, 11):
        users.append(("v%02d" % i, "shop-two.example", base / "shop-two.example" / "0" /
                      ("v%02d" % i)))
    users.append(("info", "example.com", base / "example.com" / "info"))
    users.append(("nopop", "example.com", base / "example.com" / "nopop"))
    users.append(("clear", "example.com", base / "example.com" / "clear"))
    for d in (base, base / "example.com", base / "shop-two.example",
              base / "shop-two.example" / "0"):
        mkhome(d, VPOP_UID, VPOP_UID)
    rows = []
    for k, (name, domain, home) in enumerate(users):
        mkhome(home, VPOP_UID, VPOP_UID)
        pw = "%s's pw \\ %d" % (name, k)
        plain["%s@%s" % (name, domain)] = pw
        stored = passwords.hash_password("sha512-crypt" if k % 7 == 0 else "md5-crypt",
                                         pw.encode())[1]
        flags, clear = 0, ""
        if name == "nopop":
            flags = 2   # NO_POP
        if name == "clear":
            stored, clear = "", pw  # only pw_clear_passwd
        rows.append("(%s,%s,%s,0,%d,%s,%s,%s,%s)" % (
            q(name), q(domain), q(stored), flags, q("Gecos of %s, O'Neil" % name), q(str(home)),
            q("NOQUOTA" if k % 3 else "10000000S"), q(clear) if clear else "NULL"))
    dump = """-- MySQL dump 10.13  Distrib 5.5.19, for linux2.6 (i686)
/*!40101 SET NAMES utf8 */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
DROP TABLE IF EXISTS `vpopmail`;
CREATE TABLE `vpopmail` (
  `pw_name` varchar(64) NOT NULL,
  `pw_domain` varchar(96) NOT NULL,
  `pw_passwd` varchar(128) DEFAULT NULL,
  `pw_uid` int(11) DEFAULT NULL,
  `pw_gid` int(11) DEFAULT NULL,
  `pw_gecos` varchar(64) DEFAULT NULL,
  `pw_dir` varchar(160) DEFAULT NULL,
  `pw_shell` varchar(20) DEFAULT NULL,
  `pw_clear_passwd` varchar(16) DEFAULT NULL,
  PRIMARY KEY (`pw_name`,`pw_domain`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
LOCK TABLES `vpopmail` WRITE;
/*!40000 ALTER TABLE `vpopmail` DISABLE KEYS */;
INSERT INTO `vpopmail` VALUES %s;
INSERT INTO `vpopmail` VALUES %s;
/*!40000 ALTER TABLE `vpopmail` ENABLE KEYS */;
UNLOCK TABLES;
DROP TABLE IF EXISTS `valias`;
CREATE TABLE `valias` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `alias` varchar(32) NOT NULL,
  `domain` varchar(96) NOT NULL,
  `valias_line` text NOT NULL,
  PRIMARY KEY (`id`),
  KEY `alias` (`alias`,`domain`)
) ENGINE=MyISAM AUTO_INCREMENT=7 DEFAULT CHARSET=latin1;
INSERT INTO `valias` VALUES (1,'sales','example.com','&a@elsewhere.org'),(2,'sales','example.com','b@elsewhere.org'),(3,'info','example.com','./Maildir/'),(4,'info','example.com','&copy@elsewhere.org'),(5,'prog','shop-two.example','|/usr/bin/true'),(6,'sales','example.com','# a comment line');
DROP TABLE IF EXISTS `aliasdomains`;
CREATE TABLE `aliasdomains` (
  `alias` varchar(100) NOT NULL,
  `domain` varchar(100) NOT NULL,
  PRIMARY KEY (`alias`)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
INSERT INTO `aliasdomains` VALUES ('alias.example','example.com');
""" % (",".join(rows[:10]), ",".join(rows[10:]))
    return dump, users, plain


def q(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vpop_args(homes, *extra):
    return ["--uid", str(VPOP_UID), "--gid", str(VPOP_UID)] + list(extra)


def test_import_vpopmail_dump(sandbox, db, homes, capsys):
    dump, users, plain = make_vpopmail_world(homes)
    f = homes / "vpopmail.sql"
    f.write_text(dump)
    assert cli_import(sandbox, "vpopmail", str(f), *vpop_args(homes)) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out
    assert counts(db) == {"mailbox": 0, "alias": 0, "virtual": 0}
    assert "+ mailbox example.com-u01  uid 8900 gid 8900" in out
    assert "1 users have vpopmail's NO_POP flag" in out
    assert "qmailsql keeps no quotas" in out

    assert cli_import(sandbox, "vpopmail", str(f), *vpop_args(homes), "--apply") == 0
    out = capsys.readouterr().out
    assert "next: qmailsql sync" in out
    for name, domain, home in users:
        mbox = "%s-%s" % (domain, name)
        assert db.getpw(mbox.encode()) == Delivery(mbox.encode(), VPOP_UID, VPOP_UID,
                                                   str(home).encode(), b"", b"")
    # the alias domain reaches the same mailboxes
    assert db.getpw(b"alias.example-u03").home == str(users[2][2]).encode()
    # valias for an address with no mailbox: the domain's row, ext = the alias
    dom = homes / "vpopmail" / "domains" / "example.com"
    d = db.getpw(b"example.com-sales")
    assert d == Delivery(b"example.com", VPOP_UID, VPOP_UID, str(dom).encode(), b"-", b"sales")
    lines = aliases.delivery_lines(db.directory, db.config, d.user, d.home,
                                   b"example.com-sales", d.dash, d.ext, b"example.com")
    assert lines == b"&a@elsewhere.org\n&b@elsewhere.org\n"
    # valias for an address that has a mailbox: that mailbox's own .qmail lines
    d = db.getpw(b"example.com-info")
    assert aliases.delivery_lines(db.directory, db.config, d.user, d.home, b"example.com-info",
                                  d.dash, d.ext, b"example.com") == \
        b"./Maildir/\n&copy@elsewhere.org\n"
    d = db.getpw(b"shop-two.example-prog")
    assert d.user == b"shop-two.example" and d.ext == b"prog"
    assert b"/usr/bin/true" in aliases.delivery_lines(
        db.directory, db.config, d.user, d.home, b"shop-two.example-prog", d.dash, d.ext,
        b"shop-two.example")
    # the same logins: user@domain with the old password; NO_POP stays out
    for address, pw in plain.items():
        assert login(db, address, pw) == (not address.startswith("nopop@")), address
        assert not login(db, address, pw + "!")
    # again: nothing new
    assert cli_import(sandbox, "vpopmail", str(f), *vpop_args(homes), "--apply") == 0
    assert " 0 new" in capsys.readouterr().out.split("import vpopmail")[1].split(";")[0]


def test_import_vpopmail_from_db_matches_dump(sandbox, db, homes, capsys):
    dump, users, plain = make_vpopmail_world(homes)
    f = homes / "vpopmail.sql"
    f.write_text(dump)
    assert cli_import(sandbox, "vpopmail", str(f), *vpop_args(homes)) == 0
    from_dump = capsys.readouterr().out.strip().split("\n")
    # the same tables in a scratch database of the sandbox's MariaDB
    paths = sb.Paths(sandbox)
    tables = im.parse_dump(dump)
    stmts = [("DROP DATABASE IF EXISTS vpoptest", ()), ("CREATE DATABASE vpoptest", ()),
             ("CREATE TABLE vpoptest.vpopmail (pw_name VARCHAR(64) NOT NULL, pw_domain "
              "VARCHAR(96) NOT NULL, pw_passwd VARCHAR(128), pw_uid INT, pw_gid INT, pw_gecos "
              "VARCHAR(64), pw_dir VARCHAR(160), pw_shell VARCHAR(20), pw_clear_passwd "
              "VARCHAR(16), PRIMARY KEY (pw_name, pw_domain))", ()),
             ("CREATE TABLE vpoptest.valias (id INT AUTO_INCREMENT PRIMARY KEY, alias "
              "VARCHAR(32) NOT NULL, domain VARCHAR(96) NOT NULL, valias_line TEXT NOT NULL)",
              ()),
             ("CREATE TABLE vpoptest.aliasdomains (alias VARCHAR(100) PRIMARY KEY, domain "
              "VARCHAR(100) NOT NULL)", ())]
    for name in ("vpopmail", "valias", "aliasdomains"):
        cols = tables[name]["columns"]
        for row in tables[name]["rows"]:
            stmts.append(("INSERT INTO vpoptest.%s (%s) VALUES (%s)" % (
                name, ",".join(cols), ",".join(["%s"] * len(cols))),
                [row[c] for c in cols]))
    sb.root_sql(paths, stmts)
    try:
        password = sb.root_password(paths)
        conf = homes / "vpopmail.mysql"
        conf.write_text("# read|update\n%s|0|root|%s|vpoptest\n" % (paths.db_socket, password))
        assert cli_import(sandbox, "vpopmail", "--from-db", "--vpopmail-mysql", str(conf),
                          *vpop_args(homes)) == 0
        from_db = capsys.readouterr().out.strip().split("\n")
        assert sorted(from_db) == sorted(from_dump)  # rows come in another order
        assert counts(db) == {"mailbox": 0, "alias": 0, "virtual": 0}
    finally:
        sb.root_sql(paths, [("DROP DATABASE IF EXISTS vpoptest", ())])


def test_import_vpopmail_names_too_long(sandbox, db, homes, capsys):
    home = mkhome(homes / "d" / "a-very-long-domain-name.example" / "someone", VPOP_UID,
                  VPOP_UID)
    f = homes / "v.sql"
    f.write_text("INSERT INTO vpopmail VALUES ('someone','a-very-long-domain-name.example',"
                 "'',0,0,'',%s,'',NULL);" % q(home))
    assert cli_import(sandbox, "vpopmail", str(f), *vpop_args(homes), "--apply") == 1
    out = capsys.readouterr().out
    assert "not shorter than userlen 32" in out and "migrate --userlen 40" in out
    assert counts(db)["mailbox"] == 0
