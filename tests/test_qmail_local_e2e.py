"""The FAQ's scenarios end to end: compiled qmail-getpw and qmail-local against a real
qmailsqld and MariaDB, with a recording stand-in for the stock qmail-local.

Each delivery is done as qmail-lspawn does it: run qmail-getpw LOCAL, then
`qmail-local -- user homedir local dash ext domain sender aliasempty` from its answer.
The stand-in (env QMAILSQL_QMAIL_LOCAL) records the exact argv and environment it
gets; there is no stock qmail-local on the test machine, so what stock qmail-local
would do with them is asserted as lines (`./Maildir/`, `&address`, ...).
"""
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import qmailsql
from qmailsql import sandbox as sb

UID, GID = 800, 100
SENDER = "sender@example.net"
ALIASEMPTY = "./Maildir/"

RECORDER_C = r"""
#include <stdio.h>
#include <string.h>
extern char **environ;
int main(int argc, char **argv)
{
  FILE *f = fopen(OUT ".argv", "w"), *g = fopen(OUT ".env", "w");
  char **e;
  int i;
  if (!f || !g) return 99;
  for (i = 1; i < argc; i++) fwrite(argv[i], 1, strlen(argv[i]) + 1, f);
  for (e = environ; *e; e++) fwrite(*e, 1, strlen(*e) + 1, g);
  fclose(f);
  fclose(g);
  return 0;
}
"""


@pytest.fixture(scope="module")
def standin():
    d = Path(tempfile.mkdtemp(prefix="qsl", dir="/tmp"))
    os.chmod(d, 0o755)
    (d / "rec.c").write_text(RECORDER_C)
    out = d / "record"
    r = subprocess.run(["cc", "-O2", '-DOUT="%s"' % out, "-o", str(d / "qmail-local.orig"),
                        str(d / "rec.c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    class S:
        path = str(d / "qmail-local.orig")

        @staticmethod
        def clear():
            for suffix in (".argv", ".env"):
                try:
                    os.unlink(str(out) + suffix)
                except FileNotFoundError:
                    pass

        @staticmethod
        def record():
            """(argv, env) the stand-in got, or None when it did not run."""
            try:
                argv = Path(str(out) + ".argv").read_bytes()
            except FileNotFoundError:
                return None
            env = Path(str(out) + ".env").read_bytes()
            return argv.split(b"\0")[:-1], sorted(env.split(b"\0")[:-1])
    yield S
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def helpers():
    from qmailsql.helpers import helper_path
    return {n: str(helper_path(n)) for n in ("qmail-getpw", "qmail-local")}


def flush(socket_path):
    from qmailsql.hotpath import encode_frame
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(socket_path))
    s.sendall(encode_frame([b"flush"]))
    assert s.recv(100).startswith(b"2:0\0")
    s.close()


class World:
    """Rows, homes and deliveries on one sandbox."""

    def __init__(self, q, root, homes, helpers, standin):
        self.q, self.root, self.homes = q, root, homes
        self.helpers, self.standin = helpers, standin
        self.socket = str(sb.Paths(root).daemon_socket)
        self.env = {"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": self.socket,
                    "QMAILSQL_QMAIL_LOCAL": standin.path}

    def sql(self, statement, params=()):
        return self.q.directory.query(statement, params, write=True)

    def mailbox(self, name):
        home = self.homes / name
        home.mkdir()
        os.chown(home, UID, GID)
        self.sql("INSERT INTO mailbox (username, uid, gid, home, password, password_type) "
                 "VALUES (%s,%s,%s,%s,'x','Password')", (name, UID, GID, str(home)))
        return str(home)

    def alias(self, username, alias, au, ah):
        self.sql("INSERT INTO alias (username, alias, alias_username, alias_host) VALUES "
                 "(%s,%s,%s,%s)", (username, alias, au, ah))

    def virtual(self, username, ext, vu, vh):
        self.sql("INSERT INTO virtual (username, ext, virtual_username, virtual_host) VALUES "
                 "(%s,%s,%s,%s)", (username, ext, vu, vh))

    def getpw(self, local):
        r = subprocess.run([self.helpers["qmail-getpw"], local], capture_output=True,
                           env={"PATH": "/usr/bin:/bin", "QMAILSQL_SOCKET": self.socket},
                           timeout=60)
        assert r.returncode == 0, r.stderr
        fields = r.stdout.split(b"\0")
        assert len(fields) == 7 and fields[6] == b"", r.stdout
        return [f.decode() for f in fields[:6]]

    def deliver(self, local, domain):
        """qmail-lspawn's two steps. Returns (getpw fields, local result, record)."""
        user, uid, gid, home, dash, ext = self.getpw(local)
        assert (uid, gid) == (str(UID), str(GID))
        self.standin.clear()
        argv = ["--", user, home, local, dash, ext, domain, SENDER, ALIASEMPTY]
        r = subprocess.run([self.helpers["qmail-local"]] + argv, capture_output=True,
                           env=self.env, timeout=60)
        return (user, home, dash, ext), r, self.standin.record()

    def stock_env(self):
        return sorted(("%s=%s" % kv).encode() for kv in self.env.items())


def expect(world, rec, user, home, local, dash, ext, domain, aliasempty):
    assert rec is not None, "the stock qmail-local (stand-in) did not run"
    argv, env = rec
    assert argv == [a.encode() for a in ("--", user, home, local, dash, ext, domain, SENDER,
                                         aliasempty)]
    assert env == world.stock_env()


@pytest.fixture
def world(db, sandbox, homes, helpers, standin):
    assert sb.Paths(sandbox).daemon_socket.exists(), "the sandbox has no running qmailsqld"
    return World(db, sandbox, homes, helpers, standin)


# ------------------------------------------------------------------ FAQ scenarios

def test_faq_mailbox_delivery(world):
    """alias table: `iain / home/iain/Mailbox`."""
    home = world.mailbox("iain")
    world.alias("iain", "", "/", "home/iain/Mailbox")
    got, r, rec = world.deliver("iain", "example.org")
    assert got == ("iain", home, "", "")
    assert r.returncode == 0, r.stderr
    expect(world, rec, "iain", home, "iain", "", "", "example.org", "/home/iain/Mailbox\n")


def test_faq_slowlaris(world):
    home = world.mailbox("iain")
    world.mailbox("iain-sanity")
    world.alias("iain", "slowlaris", ".", "/Maildir/")
    got, r, rec = world.deliver("iain-slowlaris", "example.org")
    assert got == ("iain", home, "-", "slowlaris")
    expect(world, rec, "iain", home, "iain-slowlaris", "", "", "example.org", "./Maildir/\n")
    # iain-sanity is a user of its own, with no rows: stock qmail-local, argv unchanged
    got, r, rec = world.deliver("iain-sanity", "example.org")
    assert got[:1] == ("iain-sanity",)
    expect(world, rec, "iain-sanity", got[1], "iain-sanity", "", "", "example.org", ALIASEMPTY)


def test_faq_virtual_catchall(world):
    """virtual `virtual @ <blank> virtual.com` + alias `virtual @ . /Maildir/`."""
    home = world.mailbox("virtual")
    world.virtual("virtual", "@", "", "virtual.com")
    world.alias("virtual", "@", ".", "/Maildir/")
    for who in ("anyone", "Someone.Else"):
        local = "virtual.com-" + who
        got, r, rec = world.deliver(local, "virtual.com")
        assert got == ("virtual", home, "-", "@")
        assert r.returncode == 0, r.stderr
        expect(world, rec, "virtual", home, local, "", "", "virtual.com", "./Maildir/\n")


def test_faq_forward_old_method(world):
    """Before 1.1.3: a real `forward` user whose alias row forwards."""
    home = world.mailbox("forward")
    world.virtual("forward", "", "user", "virtual.com")
    world.alias("forward", "", "address", "external.com")
    got, r, rec = world.deliver("virtual.com-user", "virtual.com")
    assert got == ("forward", home, "", "")
    expect(world, rec, "forward", home, "virtual.com-user", "", "", "virtual.com",
           "&address@external.com\n")


def test_faq_silly_domain(world):
    """sales@sillydomain.com is delivered; other@sillydomain.com goes to the alias user
    (stock qmail-local then bounces it: dash '-', no .qmail-default, no rows)."""
    shome = world.mailbox("sales")
    ahome = world.mailbox("alias")
    world.virtual("sales", "", "sales", "sillydomain.com")
    world.mailbox("other")   # a local user of that name must not get it
    got, r, rec = world.deliver("sillydomain.com-sales", "sillydomain.com")
    assert got == ("sales", shome, "", "")
    expect(world, rec, "sales", shome, "sillydomain.com-sales", "", "", "sillydomain.com",
           ALIASEMPTY)
    got, r, rec = world.deliver("sillydomain.com-other", "sillydomain.com")
    assert got == ("alias", ahome, "-", "sillydomain.com-other")
    expect(world, rec, "alias", ahome, "sillydomain.com-other", "-", "sillydomain.com-other",
           "sillydomain.com", ALIASEMPTY)


def test_alias_user_default_catches_unknown_virtual(world):
    ahome = world.mailbox("alias")
    world.virtual("sales", "", "sales", "sillydomain.com")
    world.alias("alias", "sillydomain.com-default", ".", "/Maildir/")
    got, r, rec = world.deliver("sillydomain.com-other", "sillydomain.com")
    expect(world, rec, "alias", ahome, "sillydomain.com-other", "", "", "sillydomain.com",
           "./Maildir/\n")


def test_blank_alias_row_is_deferred_not_eaten(world):
    world.mailbox("u")
    world.alias("u", "", "", "")
    got, r, rec = world.deliver("u", "example.org")
    assert r.returncode == 111
    assert b"both alias_username and alias_host blank" in r.stderr
    assert rec is None


def test_no_rows_stock_argv_unchanged(world):
    home = world.mailbox("plain")
    got, r, rec = world.deliver("plain-some-ext", "example.org")
    assert got == ("plain", home, "-", "some-ext")
    assert r.returncode == 0
    expect(world, rec, "plain", home, "plain-some-ext", "-", "some-ext", "example.org",
           ALIASEMPTY)


def test_program_line_carries_the_extension(world):
    home = world.mailbox("u")
    world.alias("u", "list-default", "|", "/usr/bin/handle")
    got, r, rec = world.deliver("u-list-Join", "example.org")
    assert got == ("u", home, "-", "list-Join")
    expect(world, rec, "u", home, "u-list-Join", "", "", "example.org",
           "|EXT='list-Join'; EXT2='Join'; EXT3=''; EXT4=''; DEFAULT='Join'; "
           "export EXT EXT2 EXT3 EXT4 DEFAULT; /usr/bin/handle\n")


def test_dot_qmail_file_shadowing_defers(world):
    home = world.mailbox("u")
    world.alias("u", "", ".", "/Maildir/")
    Path(home, ".qmail").write_text("./Other/\n")
    got, r, rec = world.deliver("u", "example.org")
    assert r.returncode == 111 and rec is None


# ------------------------------------------------------------------ funky + magic

@pytest.fixture(scope="module")
def special(helpers):
    """A second sandbox whose control/sqlserver says funky_queries and magic_forwarding."""
    root = Path(tempfile.mkdtemp(prefix="qsf-", dir="/tmp"))
    sb.up(str(root), daemon=False)
    paths = sb.Paths(root)
    with open(paths.sqlserver, "a") as f:
        f.write("funky_queries yes\nmagic_forwarding yes\n")
    sb.start_daemon(paths)
    yield root
    sb.down(str(root))


@pytest.fixture
def sworld(special, homes, helpers, standin):
    with qmailsql.connect(str(special)) as q:
        assert q.config.funky_queries and q.config.magic_forwarding
        for t in ("mailbox", "alias", "virtual", "rcpthosts"):
            q.directory.query("DELETE FROM `%s`" % t, write=True)
        flush(sb.Paths(special).daemon_socket)
        yield World(q, special, homes, helpers, standin)


def test_magic_forwarding(sworld):
    """virtual `forward popaccount@hotmail.com user virtual.com` with MAGIC_FORWARDING."""
    ahome = sworld.mailbox("alias")
    sworld.virtual("forward", "popaccount@hotmail.com", "user", "virtual.com")
    sworld.alias("alias", "default", ".", "/Maildir/")   # must not take the forward
    got, r, rec = sworld.deliver("virtual.com-user", "virtual.com")
    assert got == ("alias", ahome, "-", "virtual.com-user")
    assert r.returncode == 0, r.stderr
    expect(sworld, rec, "alias", ahome, "virtual.com-user", "", "", "virtual.com",
           "&popaccount@hotmail.com\n")
    # the alias user's own extension of the same name is not a forward
    got, r, rec = sworld.deliver("alias-virtual.com-user", "example.org")
    assert got == ("alias", ahome, "-", "virtual.com-user")
    expect(sworld, rec, "alias", ahome, "alias-virtual.com-user", "", "", "example.org",
           "./Maildir/\n")


def test_funky_catchall_and_faq_update(sworld):
    home = sworld.mailbox("virtual")
    sworld.mailbox("sales")
    sworld.virtual("virtual", "@", "", "virtual.com")
    sworld.virtual("sales", "", "sales-%", "virtual.com")
    sworld.alias("virtual", "@", ".", "/Maildir/")
    got, r, rec = sworld.deliver("virtual.com-joe", "virtual.com")
    assert got == ("virtual", home, "-", "@")
    expect(sworld, rec, "virtual", home, "virtual.com-joe", "", "", "virtual.com",
           "./Maildir/\n")
    assert sworld.getpw("virtual.com-sales-eu")[0] == "sales"
    # the FAQ's recipe: update virtual set virtual_username='%' where virtual_username=''
    sworld.sql("update virtual set virtual_username='%%' where virtual_username=''")
    flush(sworld.socket)
    got2, r, rec2 = sworld.deliver("virtual.com-joe", "virtual.com")
    assert got2 == got and rec2 == rec
    assert sworld.getpw("virtual.com-sales-eu")[0] == "sales"
