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
from conftest import add_alias, add_mailbox, add_virtual, as_uid, newu, raw_as

import qmailsql
from qmailsql.sandbox import host as sb

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
    from qmailsql.core.helpers import helper_path
    return {n: str(helper_path(n)) for n in ("qmail-getpw", "qmail-local")}


def flush(socket_path):
    from qmailsql.core.hotpath import encode_frame
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
        return add_mailbox(self.q, name, self.homes / name, uid=UID, gid=GID, make_home=True)

    def alias(self, username, alias, au, ah):
        add_alias(self.q, username, alias, au, ah)

    def virtual(self, username, ext, vu, vh):
        add_virtual(self.q, username, ext, vu, vh)

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


# ------------------------------------------------------------------ envelope sender
# (issue 15 item 7) Stock qmail-local sends forwards (and sets NEWSENDER) from
# LOCAL-owner@HOST when ~/.qmail{dash}{ext}-owner exists, for the address's own dash
# and ext. A row delivery must keep that, or defer; never silently differ.

def safe(ext):
    """qmail-local's safeext: ASCII lower case, '.' -> ':'."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in ext).replace(".", ":")


def stock_reads(home, dash, ext):
    """The dot-qmail file stock qmail-local reads for DASH and EXT (its qmesearch
    order), or None: then it delivers its aliasempty argument."""
    sx = safe(ext)
    names = [".qmail" + dash + sx] + [".qmail" + dash + sx[:i] + "default"
                                      for i in range(len(sx), -1, -1)
                                      if i == 0 or sx[i - 1] == "-"]
    for name in names:
        if os.path.isfile(os.path.join(home, name)):
            return name
    return None


def stock_newsender(home, dash, ext, local, host, sender=SENDER):
    """The envelope sender stock qmail-local forwards with, for DASH and EXT."""
    if sender in ("", "#@[]"):
        return sender
    base = os.path.join(home, ".qmail" + dash + safe(ext))
    if not os.path.exists(base + "-owner"):
        return sender
    if os.path.exists(base + "-owner-default"):
        return local + "-owner-@" + host + "-@[]"
    return local + "-owner@" + host


def assert_stock_semantics(world, local, domain, lines, owner_files, sender=SENDER):
    """Deliver LOCAL with the rows' LINES; the stand-in's argv must make stock
    qmail-local deliver exactly LINES with the envelope sender it would use had the
    lines been in the address's own dot-qmail file."""
    (user, home, dash, ext), r, rec = deliver_from(world, local, domain, sender)
    for name in owner_files:
        assert os.path.exists(os.path.join(home, name))
    assert r.returncode == 0, r.stderr
    assert rec is not None, "the stock qmail-local (stand-in) did not run"
    argv = [a.decode() for a in rec[0]]
    assert argv[0] == "--" and argv[1:4] == [user, home, local] and argv[6:8] == [domain,
                                                                                  sender]
    got_dash, got_ext, aliasempty = argv[4], argv[5], argv[8]
    assert aliasempty == lines
    assert stock_reads(home, got_dash, got_ext) is None  # so it delivers LINES
    want = stock_newsender(home, dash, ext, local, domain, sender)
    assert stock_newsender(home, got_dash, got_ext, local, domain, sender) == want
    return want


def deliver_from(world, local, domain, sender):
    user, uid, gid, home, dash, ext = world.getpw(local)
    world.standin.clear()
    argv = ["--", user, home, local, dash, ext, domain, sender, ALIASEMPTY]
    r = subprocess.run([world.helpers["qmail-local"]] + argv, capture_output=True,
                       env=world.env, timeout=60)
    return (user, home, dash, ext), r, world.standin.record()


def owner_file(home, name, text="&owner@example.net\n"):
    Path(home, name).write_text(text)
    os.chmod(Path(home, name), 0o600)


def test_row_forward_keeps_the_ext_owner(world):
    """The issue's case: a forward row for iain-fwd with ~/.qmail-fwd-owner present goes
    out as iain-fwd-owner@..., as the same forward in ~/.qmail-fwd would."""
    home = world.mailbox("iain")
    world.alias("iain", "fwd", "elsewhere", "example.net")
    owner_file(home, ".qmail-fwd-owner")
    want = assert_stock_semantics(world, "iain-fwd", "example.org",
                                  "&elsewhere@example.net\n", [".qmail-fwd-owner"])
    assert want == "iain-fwd-owner@example.org"


def test_row_forward_ignores_the_plain_owner(world):
    """~/.qmail-owner is iain's own owner file, not iain-fwd's: stock keeps the sender."""
    home = world.mailbox("iain")
    world.alias("iain", "fwd", "elsewhere", "example.net")
    owner_file(home, ".qmail-owner")
    want = assert_stock_semantics(world, "iain-fwd", "example.org",
                                  "&elsewhere@example.net\n", [".qmail-owner"])
    assert want == SENDER


def test_row_forward_owner_default_is_verp(world):
    home = world.mailbox("iain")
    world.alias("iain", "list-default", "elsewhere", "example.net")
    owner_file(home, ".qmail-list-Join-owner".lower())
    owner_file(home, ".qmail-list-join-owner-default")
    want = assert_stock_semantics(world, "iain-list-Join", "example.org",
                                  "&elsewhere@example.net\n",
                                  [".qmail-list-join-owner", ".qmail-list-join-owner-default"])
    assert want == "iain-list-Join-owner-@example.org-@[]"


def test_plain_row_and_bounce_sender_keep_the_plain_argv(world):
    """The plain address's owner file is .qmail-owner either way, and stock ignores owner
    files for a bounce (empty sender): dash and ext stay empty."""
    home = world.mailbox("iain")
    world.alias("iain", "", "elsewhere", "example.net")
    world.alias("iain", "fwd", "elsewhere", "example.net")
    owner_file(home, ".qmail-owner")
    owner_file(home, ".qmail-fwd-owner")
    assert assert_stock_semantics(world, "iain", "example.org", "&elsewhere@example.net\n",
                                  []) == "iain-owner@example.org"
    assert assert_stock_semantics(world, "iain-fwd", "example.org", "&elsewhere@example.net\n",
                                  [], sender="") == ""


def test_owner_mix_with_a_shadowing_file_defers(world):
    """Owner files make the wrapper hand stock the address's own extension; then a
    dot-qmail file on that address's search path (here ~/.qmail-default) would be read
    instead of the rows: deferred with a message that says what to do."""
    home = world.mailbox("iain")
    world.alias("iain", "fwd", "elsewhere", "example.net")
    owner_file(home, ".qmail-fwd-owner")
    Path(home, ".qmail-default").write_text("./Maildir/\n")
    (user, home, dash, ext), r, rec = deliver_from(world, "iain-fwd", "example.org", SENDER)
    assert r.returncode == 111 and rec is None
    assert b".qmail-default exists and would override the alias-table rows" in r.stderr


# ------------------------------------------------------------------ users/cdb accounts
# (issue 15 item 1) qmail-lspawn asks users/cdb before qmail-getpw and runs our wrapper
# as the uid it names, with a user the DB may not know: delivered exactly as the stock
# qmail-local would (argv and environment unchanged), and no DB rows are given away.

ASSIGN_UID, ASSIGN_GID = 801, 101


@pytest.fixture
def lspawn(world, sandbox, standin):
    """Runs the wrapper as qmail-lspawn would for a users/cdb entry: as the entry's uid,
    with the entry's fields; homes in a directory that uid can reach."""
    paths = sb.Paths(sandbox)
    for d in (sandbox, paths.run):
        os.chmod(d, 0o755)
    os.chmod(os.path.dirname(standin.path), 0o777)  # the stand-in records as that uid
    users = Path(sandbox, "users")
    users.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="qsu", dir="/tmp"))
    os.chmod(base, 0o755)

    class L:
        @staticmethod
        def home(name, uid=ASSIGN_UID, gid=ASSIGN_GID):
            h = base / name
            h.mkdir()
            os.chown(h, uid, gid)
            return str(h)

        @staticmethod
        def newu(*entries):
            (users / "cdb").write_bytes(newu(entries))

        @staticmethod
        def run(user, uid, gid, home, local, dash, ext, domain="example.org"):
            world.standin.clear()
            argv = ["--", user, home, local, dash, ext, domain, SENDER, ALIASEMPTY]
            r = subprocess.run(as_uid(uid, gid) + [world.helpers["qmail-local"]] + argv,
                               capture_output=True, env=world.env, timeout=60, cwd="/")
            return argv, r, world.standin.record()
    yield L
    shutil.rmtree(users, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    flush(world.socket)


def assert_stock_unchanged(world, argv, r, rec):
    assert r.returncode == 0, r.stderr
    assert rec is not None, "the stock qmail-local (stand-in) did not run"
    assert rec[0] == [a.encode() for a in argv]
    assert rec[1] == world.stock_env()


def test_users_cdb_account_unknown_to_the_db_is_stock(world, lspawn):
    """The issue's case: `=jdoe:jdoe:801:101:/home/x:::`, jdoe neither in the DB nor in
    /etc/passwd."""
    home = lspawn.home("x")
    lspawn.newu((False, "jdoe", ["jdoe", str(ASSIGN_UID), str(ASSIGN_GID), home, "", ""]))
    assert_stock_unchanged(world, *lspawn.run("jdoe", ASSIGN_UID, ASSIGN_GID, home, "jdoe",
                                              "", ""))


def test_users_cdb_wildcard_account_with_an_extension_is_stock(world, lspawn):
    """`+jdoe-:jdoe:801:101:HOME:-::` for jdoe-Foo.Bar: no rows and no file, which asks
    local-confirm too; stock still gets its argv unchanged (and bounces as it would)."""
    home = lspawn.home("x")
    lspawn.newu((True, "jdoe-", ["jdoe", str(ASSIGN_UID), str(ASSIGN_GID), home, "-", ""]))
    assert_stock_unchanged(world, *lspawn.run("jdoe", ASSIGN_UID, ASSIGN_GID, home,
                                              "jdoe-Foo.Bar", "-", "Foo.Bar"))


def test_users_cdb_name_with_alias_rows_gets_no_rows(world, lspawn, sandbox):
    """A name with alias rows but no mailbox: its users/cdb account is not the DB's, so
    stock runs unchanged; and no unprivileged uid can read those rows by asking."""
    home = lspawn.home("x")
    world.alias("jdoe", "", "secret", "example.net")
    lspawn.newu((False, "jdoe", ["jdoe", str(ASSIGN_UID), str(ASSIGN_GID), home, "", ""]))
    assert_stock_unchanged(world, *lspawn.run("jdoe", ASSIGN_UID, ASSIGN_GID, home, "jdoe",
                                              "", ""))
    for uid, homedir, local in ((ASSIGN_UID, home, "jdoe-x"), (ASSIGN_UID, "/nonexistent",
                                                                "jdoe"),
                                (ASSIGN_UID + 1, home, "jdoe")):
        status, body = raw_as(uid, world.socket, [b"local", b"jdoe", homedir.encode(),
                                                  local.encode(), b"", b"", b"example.org"])
        assert status == 111 and b"secret" not in body, (uid, homedir, local, body)


def test_users_cdb_entry_for_a_db_user_elsewhere_is_stock(world, lspawn):
    """users/cdb names DB mailbox iain, but with another home: not the DB's account;
    stock, with no rows of iain's."""
    world.mailbox("iain")  # uid 800, its own home
    world.alias("iain", "", "secret", "example.net")
    home = lspawn.home("iain-elsewhere", UID, GID)
    lspawn.newu((False, "boss", ["iain", str(UID), str(GID), home, "", ""]))
    assert_stock_unchanged(world, *lspawn.run("iain", UID, GID, home, "boss", "", ""))


def test_db_account_run_by_users_cdb_keeps_its_rows(world, lspawn):
    """An entry that names the DB's own account (same uid and home) is the DB's: rows."""
    home = lspawn.home("iain", UID, GID)
    add_mailbox(world.q, "iain", home, uid=UID, gid=GID)
    world.alias("iain", "", ".", "/Maildir/")
    lspawn.newu((False, "boss", ["iain", str(UID), str(GID), home, "", ""]))
    argv, r, rec = lspawn.run("iain", UID, GID, home, "boss", "", "")
    assert r.returncode == 0, r.stderr
    assert rec[0][-1] == b"./Maildir/\n"
