"""What the bench scripts share: compiling their C programs, a throw-away sandbox,
mailbox homes, bulk rows, and the CPU time a process has used.

The scripts import the installed qmailsql package (run them with the Python it is
installed in, e.g. .venv/bin/python); this directory is on sys.path because the
script being run lives here.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qmailsql.sandbox import host as sandbox

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cc(out, sources, extra=(), static=False):
    """Compile SOURCES into OUT with -O2 (static when asked and possible)."""
    cmd = ["cc", "-O2", "-o", str(out)] + [str(s) for s in sources] + list(extra)
    if static:
        r = subprocess.run(cmd + ["-static"], capture_output=True, text=True)
        if r.returncode == 0:
            return
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit("bench: compiling %s failed:\n%s" % (" ".join(map(str, sources)),
                                                               r.stderr))


@contextlib.contextmanager
def scratch(prefix="qsbench-"):
    """A short /tmp directory that every uid may search, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def sandbox_up(prefix="qsb-", before_up=None):
    """A sandbox (private MariaDB + qmailsqld) in a short /tmp directory that every uid
    may search; its environment is put into os.environ. BEFORE_UP(paths) runs first
    (e.g. to start the server with other options). Torn down and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)  # helpers run as other uids: qmailp, the mailbox's
    try:
        if before_up:
            before_up(sandbox.Paths(root))
        env = sandbox.up(str(root))
        os.environ.update(env)
        yield root, env
    finally:
        try:
            sandbox.down(str(root))
        except Exception as e:  # still remove what we made
            sys.stderr.write("bench: sandbox down: %s\n" % e)
        shutil.rmtree(root, ignore_errors=True)


def second_home(root, home, db=None, extra=""):
    """Another qmail home HOME on the MariaDB of the sandbox ROOT, for a qmailsqld of
    its own: control/sqlserver as ROOT's, naming database DB instead (when given) and
    with the EXTRA lines (e.g. "cache_ttl 0\n"), and the helpers in HOME/bin. Start
    its daemon with sandbox.start_daemon(paths), stop it with sandbox.stop_daemon(paths).
    Returns its sandbox.Paths."""
    paths = sandbox.Paths(home)
    paths.control.mkdir(parents=True)
    (paths.root / sandbox.MARKER).touch()
    lines = sandbox.Paths(root).sqlserver.read_text().split("\n")
    if db:
        lines = ["db        %s" % db if line.split()[:1] == ["db"] else line for line in lines]
    fd = os.open(paths.sqlserver, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + extra)
    sandbox.install_helpers(paths)
    return paths


def pid_of(pidfile):
    return int(Path(pidfile).read_text().strip())


def cpu_seconds(pid):
    """User + system CPU seconds process PID has used so far, all its threads
    included (/proc/PID/stat, clock-tick resolution)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def owner_ids(i, base_uid):
    """(uid, gid) of the Ith bench mailbox: its own uid as root, else ours."""
    if os.geteuid() == 0:
        return base_uid + i, base_uid + i
    return os.getuid(), os.getgid()


def make_homes(top, count, base_uid):
    """COUNT homes with a Maildir under TOP/home, each owned by its own uid (as root);
    [(uid, gid, home)]."""
    out = []
    os.makedirs(os.path.join(top, "home"), exist_ok=True)
    for d in (top, os.path.join(top, "home")):
        os.chmod(d, 0o755)
    for i in range(count):
        uid, gid = owner_ids(i, base_uid)
        home = os.path.join(top, "home", "h%d" % i)
        for sub in ("", "/Maildir", "/Maildir/new", "/Maildir/cur", "/Maildir/tmp"):
            os.makedirs(home + sub, exist_ok=True)
            os.chown(home + sub, uid, gid)
        os.chmod(home, 0o700)
        out.append((uid, gid, home))
    return out


def insert_rows(conn, table, columns, rows, batch=5000, progress=None):
    """Insert ROWS (an iterable of tuples of COLUMNS) into TABLE with multi-row
    parameterised INSERTs of BATCH rows, committing after each. PROGRESS(n) is called
    with the running count after each batch. Returns the number of rows."""
    sql = "INSERT INTO `%s` (%s) VALUES " % (table, ", ".join(columns))
    one = "(" + ",".join(["%s"] * len(columns)) + ")"
    cur = conn.cursor()
    done = 0
    chunk = []

    def flush():
        nonlocal done
        cur.execute(sql + ",".join([one] * len(chunk)), [v for row in chunk for v in row])
        conn.commit()
        done += len(chunk)
        chunk.clear()
        if progress:
            progress(done)
    for row in rows:
        chunk.append(row)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    return done


def timed_calls(call, items):
    """[ms] of CALL(item) for each of ITEMS, in order."""
    out = []
    for item in items:
        t0 = time.perf_counter_ns()
        call(item)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out
