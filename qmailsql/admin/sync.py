"""`qmailsql sync`: qmail's control files from the DB (SPEC section 7).

  control/virtualdomains    `host:host` for every virtual host (qmail-send then hands
                            u@host to qmail-getpw as `host-u`, see qmailsql.core.virtual)
  control/rcpthosts         the rcpthosts table plus the virtual hosts, lower-case,
                            sorted, unique; at most 50 hosts (qmail-smtpd's advice in
                            rcpthosts(5)) ...
  control/morercpthosts     ... the rest here,
  control/morercpthosts.cdb and its cdb, as qmail-newmrh would build it.

The DB's entries go between two marker comment lines (qmail's control files skip lines
starting with '#'); every other line of an existing file is kept where it is, so the
hosts an administrator listed by hand (the machine's own name, say) survive the first
sync. A hand-written virtualdomains line for a host the DB now provides is commented
out (and reported), so the two can never disagree.

Every file is written atomically (temporary file, fsync, rename) and only when its
content changes. When control/virtualdomains changed, qmail-send is told to reread it
(SIGHUP to $QMAILSQL_QMAIL_SEND_PID, else `svc -h` on a supervised qmail-send);
qmail-smtpd reads rcpthosts and morercpthosts.cdb at every connection by itself.
"""
import os
import shutil
import signal
import subprocess

from qmailsql.core import cdb

BEGIN = "# BEGIN qmailsql sync: entries from the DB (change them with `qmailsql virtual` / `qmailsql rcpthost`, then `qmailsql sync`)"
END = "# END qmailsql sync"
RCPTHOSTS_MAX = 50
SERVICE_DIRS = ("/service/qmail-send", "/etc/service/qmail-send", "/var/service/qmail-send")
BAD_HOST_CHARS = set(" \t\r\n\0:#@/\\,;")


class SyncError(Exception):
    pass


def check_host(host, where):
    """HOST lower-cased and stripped, or SyncError saying what is wrong with it."""
    h = (host or "").strip().lower()
    if not h or any(c in BAD_HOST_CHARS for c in h):
        raise SyncError("%s host %r cannot go into a qmail control file (blank, or contains "
                        "white space or one of : # @ / \\ , ;); fix the row: %s"
                        % (where, host, "UPDATE virtual SET virtual_host='...' WHERE "
                           "virtual_host=%r" % host if where == "virtual" else
                           "DELETE FROM rcpthosts WHERE host=%r" % host))
    return h


def db_hosts(directory):
    """(virtual hosts, all accepted hosts): sorted, unique, lower-case."""
    problems = []
    virtual = set()
    for (h,) in directory.query("SELECT DISTINCT virtual_host FROM virtual"):
        try:
            virtual.add(check_host(h, "virtual"))
        except SyncError as e:
            problems.append(str(e))
    extra = set()
    for (h,) in directory.query("SELECT host FROM rcpthosts"):
        try:
            extra.add(check_host(h, "rcpthosts"))
        except SyncError as e:
            problems.append(str(e))
    if problems:
        raise SyncError("; ".join(problems))
    return sorted(virtual), sorted(virtual | extra)


def read_if_exists(path):
    """PATH's bytes, or None when there is no such file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _split(text):
    """(lines before the block, lines after it, found) of TEXT (str or None)."""
    if not text:
        return [], [], False
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    try:
        b = lines.index(BEGIN)
        e = lines.index(END, b)
    except ValueError:
        return lines, [], False
    return lines[:b], lines[e + 1:], True


def _hostlines(lines):
    """Hosts of the lines that qmail reads (not blank, not comments), lower-cased."""
    return [l.strip().lower() for l in lines if l.strip() and not l.startswith("#")]


def _render(before, block, after):
    return "\n".join(before + [BEGIN] + block + [END] + after) + "\n"


def _decode(data):
    return None if data is None else data.decode("utf-8", "surrogateescape")


def _encode(text):
    return text.encode("utf-8", "surrogateescape")


class Plan:
    """What sync would write: [(name, path, new bytes, old bytes)] and notes."""

    def __init__(self):
        self.files = []
        self.notes = []

    def add(self, name, path, new, old):
        self.files.append((name, path, new, old))

    def changed(self):
        return [(n, p, new) for n, p, new, old in self.files if new != old]


def plan(qmail_dir, directory):
    control = os.path.join(qmail_dir, "control")
    virtual, accepted = db_hosts(directory)
    p = Plan()

    # virtualdomains
    path = os.path.join(control, "virtualdomains")
    old = read_if_exists(path)
    before, after, _ = _split(_decode(old))
    mine = set(virtual)

    def keep(line):
        if line.startswith("#") or ":" not in line:
            return line
        key = line.split(":", 1)[0].strip().lower()
        if key in mine:
            p.notes.append("control/virtualdomains: hand-written line %r commented out: the "
                           "DB now provides %s" % (line, key))
            return "# replaced by qmailsql sync: " + line
        return line
    before, after = [keep(l) for l in before], [keep(l) for l in after]
    p.add("virtualdomains", path, _encode(_render(before, ["%s:%s" % (h, h) for h in virtual],
                                                  after)), old)

    # rcpthosts and morercpthosts
    rpath = os.path.join(control, "rcpthosts")
    mpath = os.path.join(control, "morercpthosts")
    cpath = mpath + ".cdb"
    rold, mold = read_if_exists(rpath), read_if_exists(mpath)
    rbefore, rafter, _ = _split(_decode(rold))
    mbefore, mafter, _ = _split(_decode(mold))
    by_hand = set(_hostlines(rbefore + rafter)) | set(_hostlines(mbefore + mafter))
    todo = [h for h in accepted if h not in by_hand]
    room = max(0, RCPTHOSTS_MAX - len(set(_hostlines(rbefore + rafter))))
    first, rest = todo[:room], todo[room:]
    p.add("rcpthosts", rpath, _encode(_render(rbefore, first, rafter)), rold)
    if rest or mold is not None:
        mnew = _encode(_render(mbefore, rest, mafter))
        p.add("morercpthosts", mpath, mnew, mold)
        p.add("morercpthosts.cdb", cpath, cdb.make(newmrh_pairs(mnew)), read_if_exists(cpath))
        if rest:
            p.notes.append("more than %d accepted hosts: %d go into control/morercpthosts(.cdb)"
                           % (RCPTHOSTS_MAX, len(rest)))
    return p


def newmrh_pairs(data):
    """The (key, b"") pairs qmail-newmrh makes of control/morercpthosts DATA: each line
    lower-cased, trailing blanks cut, '#' lines and empty lines skipped."""
    out = []
    for line in data.split(b"\n"):
        line = line.lower().rstrip(b" \t\n")
        if line and not line.startswith(b"#"):
            out.append((line, b""))
    return out


def reload_qmail_send():
    """Ask qmail-send to reread virtualdomains; returns a sentence saying what was done."""
    pid = os.environ.get("QMAILSQL_QMAIL_SEND_PID", "").strip()
    if pid:
        try:
            os.kill(int(pid), signal.SIGHUP)
        except (ValueError, OSError) as e:
            raise SyncError("cannot send SIGHUP to qmail-send pid %r ($QMAILSQL_QMAIL_SEND_PID):"
                            " %s" % (pid, getattr(e, "strerror", None) or e))
        return "sent SIGHUP to qmail-send (pid %s)" % pid
    svc = shutil.which("svc")
    for d in SERVICE_DIRS:
        if svc and os.path.isdir(d):
            r = subprocess.run([svc, "-h", d], capture_output=True, text=True)
            if r.returncode:
                raise SyncError("`svc -h %s` failed: %s" % (d, r.stderr.strip()))
            return "ran svc -h %s (qmail-send rereads control/virtualdomains)" % d
    return ("could not find qmail-send to reload (no $QMAILSQL_QMAIL_SEND_PID, no supervised "
            "%s): run `svc -h /service/qmail-send` or `kill -HUP` qmail-send yourself"
            % SERVICE_DIRS[0])


def sync(qmail_dir, directory, reload=True, out=print):
    """Write the control files; returns the list of file names changed."""
    control = os.path.join(qmail_dir, "control")
    if not os.path.isdir(control):
        raise SyncError("%s is not a directory: is %s the qmail home? (--qmail-dir)"
                        % (control, qmail_dir))
    p = plan(qmail_dir, directory)
    for note in p.notes:
        out(note)
    changed = []
    for name, path, new, old in p.files:
        if new == old:
            out("control/%s: unchanged" % name)
            continue
        try:
            cdb.atomic_write(path, new, 0o644)
        except OSError as e:
            raise SyncError("cannot write %s: %s" % (path, e.strerror or e))
        changed.append(name)
        out("control/%s: written" % name)
    if "virtualdomains" in changed:
        if reload:
            out(reload_qmail_send())
        else:
            out("--no-reload: qmail-send still uses the old control/virtualdomains until it "
                "gets a SIGHUP (svc -h /service/qmail-send)")
    else:
        out("qmail-send: no reload needed (control/virtualdomains unchanged)")
    return changed


def stale(qmail_dir, directory):
    """Control files that differ from what `qmailsql sync` would write (for doctor)."""
    try:
        p = plan(qmail_dir, directory)
    except SyncError as e:
        return [str(e)]
    return ["control/%s is out of date with the DB; run `qmailsql sync`" % name
            for name, _, _ in p.changed()]
