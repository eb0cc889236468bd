"""`qmailsql demo`: the FAQ's example tables in a sandbox, run through the real helpers."""
import os
import shutil
import subprocess
import tempfile

from qmailsql.admin import tables as admin
from qmailsql.core import config as configmod, db
from qmailsql.sandbox import host as sandbox

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
    """The FAQ's Solaris example through the admin API (rows replaced if present)."""
    mailbox, alias = faq_rows(home_root)
    for name, _, _, home, password, ptype, _ in mailbox:
        admin.add_mailbox(directory, name, uid, gid, home, password, ptype, replace=True)
        make_home(home, uid, gid)
    for user, ext, au, ah in alias:
        admin.del_alias(directory, user, ext)
        admin.add_alias(directory, user, ext, au, ah)


def load_virtual_catchall(directory, home_root, uid=FAQ_UID, gid=FAQ_GID):
    """The FAQ's virtual catch-all (virtual @ '' virtual.com + alias virtual @ . /Maildir/)
    and an alias user, so unknown addresses bounce instead of waiting."""
    for name in ("virtual", "alias"):
        home = os.path.join(home_root, name)
        admin.add_mailbox(directory, name, uid, gid, home, replace=True)
        make_home(home, uid, gid)
    admin.del_virtual(directory, "", "virtual.com")
    admin.add_virtual(directory, "", "virtual.com", "virtual", "@")
    admin.del_alias(directory, "virtual", "@")
    admin.add_alias(directory, "virtual", "@", ".", "/Maildir/")


def show(fields):
    parts = fields.split(b"\0")[:6]
    names = ("user", "uid", "gid", "home", "dash", "ext")
    return "  ".join("%s=%s" % (n, p.decode("utf-8", "replace") or "''")
                     for n, p in zip(names, parts))


STAND_IN = """#!/bin/sh
# stands in for qmail's stock qmail-local: reports how the wrapper ran it
printf '%s\\0' "$@"
"""


def write_stand_in(root):
    """ROOT/qmail-local.stand-in: prints its argv NUL-separated (for QMAILSQL_QMAIL_LOCAL)."""
    path = os.path.join(root, "qmail-local.stand-in")
    with open(path, "w") as f:
        f.write(STAND_IN)
    os.chmod(path, 0o755)
    return path


def show_argv(data):
    args = data.split(b"\0")[:-1]
    return "      stock qmail-local " + " ".join(
        repr(a.decode("utf-8", "replace")) for a in args)


def run(out=print):
    root = tempfile.mkdtemp(prefix="qsdemo-", dir="/tmp")
    try:
        return _run(root, out)
    finally:  # on every way out, a failed `sandbox up` included: nothing left behind
        try:
            sandbox.down(root)
        except sandbox.SandboxError:  # up() failed before it made ROOT a sandbox
            pass
        shutil.rmtree(root, ignore_errors=True)
        out("\nsandbox down, %s removed" % root)


def _run(root, out):
    paths = sandbox.Paths(root)
    out("sandbox: %s (private MariaDB on %s, qmailsqld on %s)"
        % (root, paths.db_socket, paths.daemon_socket))
    env = dict(os.environ, **sandbox.up(root))
    uid = FAQ_UID if os.geteuid() == 0 else os.getuid()
    gid = FAQ_GID if os.geteuid() == 0 else os.getgid()
    homes = os.path.join(root, "home", "mail")
    os.makedirs(homes, exist_ok=True)
    for d in (root, os.path.dirname(homes), homes):
        os.chmod(d, 0o711)  # the FAQ's POP3 pitfall: every level searchable by the uid
    directory = db.Directory(configmod.as_admin(configmod.load(root)))  # the admin's login
    try:
        load_faq(directory, homes, uid, gid)
        load_virtual_catchall(directory, homes, uid, gid)
    finally:
        directory.close()
    out("loaded the FAQ's tables (uid %d):" % uid)
    out("  mailbox: iain, iain-sanity, virtual, alias")
    out("  alias:   iain slowlaris . /Maildir/      virtual @ . /Maildir/")
    out("  virtual: virtual @ '' virtual.com   (the catch-all)")

    out("\nqmail-getpw (compiled, asks qmailsqld): where does mail go?")
    for local in ("iain", "iain-sanity", "iain-slowlaris", "virtual.com-anyone",
                  "nobody-here"):
        r = subprocess.run([str(paths.bin / "qmail-getpw"), local], capture_output=True,
                           env=env)
        answer = show(r.stdout) if r.returncode == 0 else r.stderr.decode().strip()
        out("  %-20s exit %-3d %s" % (local, r.returncode, answer))

    out("\nqmail-local (compiled wrapper): alias-table rows become dot-qmail lines")
    local_env = dict(env, QMAILSQL_QMAIL_LOCAL=write_stand_in(root))
    for user, local, ext in (("iain", "iain-slowlaris", "slowlaris"),
                             ("iain", "iain", ""), ("virtual", "virtual-@", "@")):
        home = os.path.join(homes, user)
        argv = [str(paths.bin / "qmail-local"), "--", user, home, local,
                "-" if ext else "", ext, "example.org", "sender@example.net", "./Maildir/"]
        r = subprocess.run(argv, capture_output=True, env=local_env)
        if r.returncode:
            out("  %s@example.org -> exit %d" % (local, r.returncode))
            out("      " + r.stderr.decode("utf-8", "replace").strip())
            continue
        unchanged = r.stdout.split(b"\0")[:-1] == [os.fsencode(a) for a in argv[1:]]
        out("  %s@example.org -> exit 0 (%s)" % (local, "no rows: argv unchanged" if unchanged
                                                 else "rows: lines passed as aliasempty"))
        out(show_argv(r.stdout))

    out("\ncheckpassword (compiled): POP3 login as iain")
    for password in (b"secret", b"wrong"):
        rfd, wfd = os.pipe()
        os.write(wfd, b"iain\0" + password + b"\0\0")
        os.close(wfd)
        r = subprocess.run([str(paths.bin / "checkpassword"), "/bin/sh", "-c",
                            'echo "      logged in: USER=$USER uid=$(id -u) '
                            'HOME=$HOME cwd=$(pwd)"'],
                           capture_output=True, env=env, pass_fds=(rfd,),
                           preexec_fn=lambda: os.dup2(rfd, 3))
        os.close(rfd)
        out("  password %-8r exit %d%s" % (password.decode(), r.returncode,
                                            " (refused)" if r.returncode == 1 else ""))
        if r.stdout or r.returncode not in (0, 1):
            out((r.stdout or r.stderr).decode().rstrip())
    return 0
