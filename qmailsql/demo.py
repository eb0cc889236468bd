"""`qmailsql demo`: the FAQ's example tables in a sandbox, run through the real helpers."""
import os
import subprocess
import sys
import tempfile

from qmailsql import sandbox

FAQ_UID, FAQ_GID = 800, 100


def faq_rows(home_root):
    """The FAQ's Solaris example: two mailboxes and one alias row, homes under HOME_ROOT."""
    mailbox = [("iain", FAQ_UID, FAQ_GID, os.path.join(home_root, "iain"), "secret",
                "Password", "N"),
               ("iain-sanity", FAQ_UID, FAQ_GID, os.path.join(home_root, "sanity"), "secret",
                "Password", "N")]
    alias = [("iain", "slowlaris", ".", "/Maildir/")]
    return mailbox, alias


def make_home(path, uid, gid):
    """A home with a Maildir, owned as qmail-getpw demands (uid must own the home)."""
    for sub in ("", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
        os.chown(os.path.join(path, sub), uid, gid)
    os.chmod(path, 0o700)


def load_faq(directory, home_root, uid=FAQ_UID, gid=FAQ_GID):
    mailbox, alias = faq_rows(home_root)
    for row in mailbox:
        row = (row[0], uid, gid) + row[3:]
        directory.query("REPLACE INTO mailbox (username, uid, gid, home, password, "
                        "password_type, suspended) VALUES (%s,%s,%s,%s,%s,%s,%s)", row,
                        write=True)
        make_home(row[3], uid, gid)
    for row in alias:
        directory.query("DELETE FROM alias WHERE username=%s AND alias=%s", row[:2], write=True)
        directory.query("INSERT INTO alias (username, alias, alias_username, alias_host) "
                        "VALUES (%s,%s,%s,%s)", row, write=True)


def show(fields):
    parts = fields.split(b"\0")[:6]
    names = ("user", "uid", "gid", "home", "dash", "ext")
    return "  ".join("%s=%s" % (n, p.decode("utf-8", "replace") or "''")
                     for n, p in zip(names, parts))


def run(out=print):
    import qmailsql
    root = tempfile.mkdtemp(prefix="qsdemo-", dir="/tmp")
    out("sandbox: %s (private MariaDB, socket %s)" % (root, sandbox.Paths(root).db_socket))
    env = sandbox.up(root)
    os.environ.update(env)
    try:
        uid = FAQ_UID if os.geteuid() == 0 else os.getuid()
        gid = FAQ_GID if os.geteuid() == 0 else os.getgid()
        with qmailsql.connect(root) as q:
            load_faq(q.directory, os.path.join(root, "home", "mail"), uid, gid)
        out("loaded the FAQ's tables:")
        out("  mailbox: iain (home .../iain), iain-sanity (home .../sanity), uid %d" % uid)
        out("  alias:   iain slowlaris . /Maildir/")
        helper = sandbox.Paths(root).bin / "qmail-getpw"
        via = str(helper) if helper.exists() and sandbox.daemon_available() else None
        out("asking %s:" % ("the compiled qmail-getpw through qmailsqld" if via
                            else "`qmailsql getpw` (direct)"))
        for local in ("iain", "iain-sanity", "iain-slowlaris", "nobody-here"):
            cmd = [via, local] if via else [sys.executable, "-m", "qmailsql", "getpw", local]
            r = subprocess.run(cmd, capture_output=True, env=dict(os.environ, **env))
            answer = show(r.stdout) if r.returncode == 0 else r.stderr.decode().strip()
            out("  qmail-getpw %-16s exit %-3d %s" % (local, r.returncode, answer))
        return 0
    finally:
        sandbox.down(root)
        out("sandbox down, %s removed" % root)
