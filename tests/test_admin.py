"""Admin API and commands: mailbox, alias, virtual, rcpthost (and the daemon flush)."""
import dataclasses
import os
import socket
import subprocess
import sys
import threading

import pytest

from qmailsql.admin import tables as admin
from qmailsql.core import passwords
from qmailsql.core import db as dbmod


def qs(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "qmailsql"] + list(args), input=stdin,
                          capture_output=True, env=env or dict(os.environ), timeout=60)


class FlushPeer:
    """A unix socket that answers `0\\0` to each frame and records what it got."""

    def __init__(self, path):
        self.path = str(path)
        self.got = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b","):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    data += chunk
                self.got.append(data)
                conn.sendall(b"2:0\0,")

    def close(self):
        self.sock.close()


@pytest.fixture
def peer(tmp_path):
    p = FlushPeer(tmp_path / "d.sock")
    yield p
    p.close()


def env_with(peer_path):
    return dict(os.environ, QMAILSQL_SOCKET=str(peer_path))


# ------------------------------------------------------------------ parsing

@pytest.mark.parametrize("line,cols", [
    ("./Maildir/", (".", "/Maildir/")), ("/home/iain/Mailbox", ("/", "home/iain/Mailbox")),
    ("|/usr/bin/prog -x", ("|", "/usr/bin/prog -x")), ("&bob@example.org", ("bob",
                                                                             "example.org")),
    ("bob@example.org", ("bob", "example.org")), ("bob", ("bob", "")),
    ("a@b@c.org", ("a@b", "c.org")),
])
def test_parse_line(line, cols):
    assert admin.parse_line(line) == cols


@pytest.mark.parametrize("line", ["", ".", "|", "/", "# note", "&", "@host", "a\nb"])
def test_parse_line_refuses(line):
    with pytest.raises(admin.AdminError):
        admin.parse_line(line)


def test_parse_address():
    assert admin.parse_address("Sales@SillyDomain.com") == ("Sales", "sillydomain.com")
    assert admin.parse_address("@virtual.com") == ("", "virtual.com")
    for bad in ("nohost", "a@", "a@bad host", "a@x:y"):
        with pytest.raises(admin.AdminError):
            admin.parse_address(bad)


# ------------------------------------------------------------------ API

def test_add_alias_refuses_rows_that_defer(db):
    for au, ah in (("", ""), ("|", ""), ("", "host.org")):
        with pytest.raises(admin.AdminError):
            admin.add_alias(db.directory, "u", "", au, ah)
    assert admin.list_aliases(db.directory) == ()


def test_add_virtual_refuses_forward_loop(db):
    d = dbmod.Directory(dataclasses.replace(db.config, magic_forwarding=True))
    try:
        admin.add_virtual(d, "a", "x.com", "forward", "b@x.com")
        admin.add_virtual(d, "b", "x.com", "forward", "c@x.com")
        with pytest.raises(admin.AdminError) as e:
            admin.add_virtual(d, "c", "x.com", "forward", "A@X.com")
        assert "loop" in str(e.value) and "a@x.com" in str(e.value)
        with pytest.raises(admin.AdminError):
            admin.add_virtual(d, "self", "x.com", "forward", "self@x.com")
        admin.add_virtual(d, "c", "x.com", "forward", "out@far.org")
        with pytest.raises(admin.AdminError):
            admin.add_virtual(d, "C", "X.com", "someone")   # the address exists already
        assert len(admin.list_virtual(d)) == 3
    finally:
        d.close()


def test_flush_unreachable_warns(db, tmp_path, monkeypatch):
    cfg = dataclasses.replace(db.config)
    said = []
    monkeypatch.setenv("QMAILSQL_SOCKET", str(tmp_path / "none.sock"))
    assert admin.flush_daemon(cfg, said.append) is False
    assert "daemon not reachable" in said[0] and "none.sock" in said[0]


# ------------------------------------------------------------------ commands

def test_mailbox_commands(db, peer):
    env = env_with(peer.path)
    r = qs("mailbox", "add", "iain", "--uid", "800", "--gid", "100", "--home",
           "/home/mail/iain", "--password-type", "plain", stdin=b"s3cret\n", env=env)
    assert r.returncode == 0, r.stderr
    assert peer.got == [b"6:flush\0,"]
    rows = db.directory.query("SELECT username, uid, gid, home, password, password_type, "
                              "suspended FROM mailbox", write=True)
    assert rows == (("iain", 800, 100, "/home/mail/iain", "s3cret", "Password", "N"),)
    r = qs("mailbox", "add", "bob", "--uid", "801", "--gid", "100", "--home", "/h/bob",
           "--password-stdin", stdin=b"pw\n", env=env)
    assert r.returncode == 0, r.stderr
    kind, stored = db.directory.query("SELECT password_type, password FROM mailbox WHERE "
                                      "username='bob'", write=True)[0]
    assert kind == "Crypt-Password" and passwords.verify(kind, stored, b"pw")
    r = qs("mailbox", "add", "iain", "--uid", "800", "--gid", "100", "--home", "/x", env=env)
    assert r.returncode == 100 and b"exists" in r.stderr
    for bad in (["Iain", "--uid", "800"], ["root2", "--uid", "0"], ["rel", "--uid", "800"]):
        home = "relative" if bad[0] == "rel" else "/h"
        r = qs("mailbox", "add", bad[0], bad[1], bad[2], "--gid", "1", "--home", home, env=env)
        assert r.returncode == 100, (bad, r.stderr)
    r = qs("mailbox", "list", env=env)
    assert r.stdout.decode().splitlines()[1:] == [
        "bob\t801\t100\t/h/bob\tCrypt-Password\tN\t", "iain\t800\t100\t/home/mail/iain\t"
        "Password\tN\t"]
    r = qs("mailbox", "del", "iain", env=env)
    assert r.returncode == 0
    r = qs("mailbox", "del", "iain", env=env)
    assert r.returncode == 100
    assert len(peer.got) == 3


def test_mailbox_set_bars_services_and_suspends(db, peer):
    env = env_with(peer.path)
    r = qs("mailbox", "add", "iain", "--uid", "800", "--gid", "100", "--home", "/h/iain",
           env=env)
    assert r.returncode == 0, r.stderr

    def state():
        return db.directory.query("SELECT deny_services, suspended FROM mailbox WHERE "
                                  "username='iain'", write=True)[0]
    r = qs("mailbox", "set", "iain", "--deny", "pop3,IMAP", env=env)
    assert r.returncode == 0, r.stderr
    assert b"barred from pop3,imap" in r.stdout and state() == ("pop3,imap", "N")
    r = qs("mailbox", "set", "iain", "--allow", "imap", "--deny", "smtp", "--suspend", env=env)
    assert r.returncode == 0, r.stderr
    assert state() == ("pop3,smtp", "Y")
    r = qs("mailbox", "set", "iain", "--allow", "all", "--unsuspend", env=env)
    assert r.returncode == 0 and state() == ("", "N")
    assert peer.got == [b"6:flush\0,"] * 4  # every change dropped the daemon's cache
    for bad, why in ((["--deny", "ftp"], b"unknown service 'ftp'"), ([], b"nothing to change"),
                     (["--deny", "pop3", "--allow", "pop3"], b"both name pop3")):
        r = qs("mailbox", "set", "iain", *bad, env=env)
        assert r.returncode == 100 and why in r.stderr, (bad, r.stderr)
    r = qs("mailbox", "set", "nobody", "--deny", "pop3", env=env)
    assert r.returncode == 100 and b"no mailbox 'nobody'" in r.stderr
    assert state() == ("", "N") and len(peer.got) == 4


def test_alias_commands(db, peer):
    env = env_with(peer.path)
    for args in (["iain", "/home/iain/Mailbox"], ["iain", "./Maildir/", "--ext", "slowlaris"],
                 ["virtual", "./Maildir/", "--ext", "@"], ["forward", "address@external.com"],
                 ["u", "|/usr/bin/prog 'x'", "--ext", "list-default"]):
        r = qs("alias", "add", *args, env=env)
        assert r.returncode == 0, r.stderr
    assert db.directory.query("SELECT username, alias, alias_username, alias_host FROM alias "
                              "ORDER BY id", write=True) == (
        ("iain", "", "/", "home/iain/Mailbox"), ("iain", "slowlaris", ".", "/Maildir/"),
        ("virtual", "@", ".", "/Maildir/"), ("forward", "", "address", "external.com"),
        ("u", "list-default", "|", "/usr/bin/prog 'x'"))
    r = qs("alias", "add", "iain", "|", env=env)
    assert r.returncode == 100 and b"alone" in r.stderr
    r = qs("alias", "list", "iain", env=env)
    assert r.stdout.decode().splitlines() == [
        "username\talias\talias_username\talias_host", "iain\t\t/\thome/iain/Mailbox",
        "iain\tslowlaris\t.\t/Maildir/"]
    r = qs("alias", "del", "iain", "--ext", "slowlaris", env=env)
    assert r.returncode == 0 and b"1 alias row" in r.stdout
    r = qs("alias", "del", "iain", "./nothere/", env=env)
    assert r.returncode == 100
    assert len(peer.got) == 6


def test_virtual_and_rcpthost_commands(db, peer):
    env = env_with(peer.path)
    r = qs("virtual", "add", "@virtual.com", "--user", "virtual", "--ext", "@", env=env)
    assert r.returncode == 0, r.stderr
    assert b"qmailsql sync" in r.stdout
    r = qs("virtual", "add", "Sales@SillyDomain.com", "--user", "sales", env=env)
    assert r.returncode == 0, r.stderr
    r = qs("virtual", "add", "x@virtual.com", "--forward", "a@b.org", env=env)
    assert r.returncode == 100 and b"magic_forwarding" in r.stderr
    r = qs("virtual", "add", "x@virtual.com", env=env)
    assert r.returncode == 100
    assert db.directory.query("SELECT username, ext, virtual_username, virtual_host FROM "
                              "virtual ORDER BY id", write=True) == (
        ("virtual", "@", "", "virtual.com"), ("sales", "", "Sales", "sillydomain.com"))
    r = qs("virtual", "list", "virtual.com", env=env)
    assert r.stdout.decode().splitlines()[1:] == ["\tvirtual.com\tvirtual\t@"]
    r = qs("virtual", "del", "sales@sillydomain.com", env=env)
    assert r.returncode == 0
    r = qs("rcpthost", "add", "Example.ORG", env=env)
    assert r.returncode == 0
    r = qs("rcpthost", "list", env=env)
    assert r.stdout.decode().splitlines() == ["host", "example.org"]
    r = qs("rcpthost", "del", "example.org", env=env)
    assert r.returncode == 0
    r = qs("rcpthost", "del", "example.org", env=env)
    assert r.returncode == 100
    assert len(peer.got) == 5   # two adds, del, rcpthost add and del


def test_write_with_daemon_down_still_succeeds(db, tmp_path):
    r = qs("rcpthost", "add", "a.org", env=env_with(tmp_path / "nobody.sock"))
    assert r.returncode == 0
    assert b"daemon not reachable" in r.stderr
    assert db.directory.query("SELECT host FROM rcpthosts", write=True) == (("a.org",),)
