"""A throw-away qmail home backed by a private MariaDB server (SPEC section 9).

DIR/control/sqlserver     the daemon's credentials (mode 0640)
DIR/bin/                  the compiled helpers
DIR/mysql/                private datadir, socket, pid file and error log
DIR/qmailsql/             the daemon's socket, pid file and log

The server runs with no TCP port unless asked, so it never clashes with a MariaDB
service already on the machine, and it is started directly, without systemd.
"""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from qmailsql import config as configmod
from qmailsql.helpers import LIBEXEC, NAMES

MARKER = ".qmailsql-sandbox"
DB_NAME = "qmail"
DB_USER = "qmailsql"
SOCKET_MAX = 107  # sun_path


class SandboxError(Exception):
    pass


def _which(*names):
    for name in names:
        for d in (os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/usr/bin",
                                                             "/usr/local/sbin"]):
            p = os.path.join(d, name)
            if d and os.access(p, os.X_OK):
                return p
    raise SandboxError("%s not found; install the MariaDB server: apt-get install "
                       "mariadb-server" % " or ".join(names))


class Paths:
    def __init__(self, root):
        self.root = Path(root).resolve()
        self.control = self.root / "control"
        self.sqlserver = self.control / "sqlserver"
        self.bin = self.root / "bin"
        self.mysql = self.root / "mysql"
        self.datadir = self.mysql / "data"
        self.db_socket = self.mysql / "mysqld.sock"
        self.db_pid = self.mysql / "mysqld.pid"
        self.db_log = self.mysql / "error.log"
        self.root_cnf = self.mysql / "root.cnf"
        self.run = self.root / "qmailsql"
        self.daemon_socket = self.run / "qmailsqld.sock"
        self.daemon_pid = self.run / "qmailsqld.pid"
        self.daemon_log = self.run / "qmailsqld.log"


def _pid_alive(pidfile):
    try:
        pid = int(Path(pidfile).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SandboxError("timed out after %ds waiting for %s" % (timeout, what))


def root_sql(paths, statements, password=None):
    """Run (sql, params) STATEMENTS as the sandbox's DB root (set-up only)."""
    import MySQLdb
    if password is None:
        password = dict(l.split("=", 1) for l in paths.root_cnf.read_text().split("\n")
                        if "=" in l).get("password", "")
    conn = MySQLdb.connect(unix_socket=str(paths.db_socket), user="root", passwd=password,
                           connect_timeout=10)
    try:
        cur = conn.cursor()
        for sql, params in statements:
            cur.execute(sql, params)
        return cur.fetchall()
    finally:
        conn.close()


def start_db(paths, port=None, extra_args=()):
    """Start the private mariadbd (initialising its datadir the first time)."""
    if len(str(paths.db_socket)) > SOCKET_MAX:
        raise SandboxError("sandbox path too long for a unix socket (%d > %d chars): "
                           "choose a shorter DIR" % (len(str(paths.db_socket)), SOCKET_MAX))
    if _pid_alive(paths.db_pid):
        return
    paths.mysql.mkdir(parents=True, exist_ok=True)
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    fresh = not (paths.datadir / "mysql").exists()
    if fresh:
        r = subprocess.run([_which("mariadb-install-db", "mysql_install_db"), "--no-defaults",
                            "--datadir=%s" % paths.datadir, "--auth-root-authentication-method=normal",
                            "--skip-test-db"] + as_root, capture_output=True, text=True)
        if r.returncode:
            raise SandboxError("mariadb-install-db failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    net = ["--port=%d" % port, "--bind-address=127.0.0.1"] if port else ["--skip-networking"]
    cmd = [_which("mariadbd", "mysqld"), "--no-defaults", "--datadir=%s" % paths.datadir,
           "--socket=%s" % paths.db_socket, "--pid-file=%s" % paths.db_pid,
           "--log-error=%s" % paths.db_log, "--innodb-buffer-pool-size=32M",
           "--innodb-log-file-size=16M", "--skip-log-bin", "--max-connections=200",
           "--character-set-server=utf8mb4"] + net + as_root + list(extra_args)
    with open(os.devnull, "rb") as null:
        subprocess.Popen(cmd, stdin=null, stdout=null, stderr=null, start_new_session=True)
    try:
        _wait(lambda: paths.db_socket.exists() and _pid_alive(paths.db_pid), 60,
              "mariadbd to start")
    except SandboxError:
        tail = paths.db_log.read_text()[-2000:] if paths.db_log.exists() else ""
        raise SandboxError("mariadbd did not start; its log says:\n" + tail)
    if fresh or not paths.root_cnf.exists():
        secret = secrets.token_hex(16)
        root_sql(paths, [("ALTER USER root@localhost IDENTIFIED BY %s", (secret,))], "")
        fd = os.open(paths.root_cnf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("[client]\nuser=root\npassword=%s\nsocket=%s\n"
                    % (secret, paths.db_socket))


def stop_db(paths, sig=signal.SIGTERM, timeout=60):
    """Stop (or with SIGKILL, kill) the private server and wait until it is gone."""
    pid = _pid_alive(paths.db_pid)
    if not pid:
        return
    os.kill(pid, sig)
    _wait(lambda: not _pid_alive(paths.db_pid) or _zombie_or_gone(pid), timeout,
          "mariadbd to stop")
    if sig == signal.SIGKILL:
        try:
            paths.db_pid.unlink()
        except FileNotFoundError:
            pass


def _zombie_or_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] == "Z"
    except (OSError, IndexError):
        return True


def write_sqlserver(paths, password, server=None):
    paths.control.mkdir(parents=True, exist_ok=True)
    text = ("# written by `qmailsql sandbox up`\n"
            "server    %s\n"
            "login     %s\n"
            "password  %s\n"
            "db        %s\n"
            "connect_timeout 2\n"
            "read_timeout    5\n" % (server or paths.db_socket, DB_USER, password, DB_NAME))
    tmp = paths.sqlserver.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, paths.sqlserver)


def create_db(paths):
    """The qmail database and the daemon's DB user; returns that user's password."""
    password = secrets.token_hex(12)
    statements = [("CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4" % DB_NAME, ())]
    for host in ("localhost", "127.0.0.1"):
        statements += [
            ("CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s", (DB_USER, host, password)),
            ("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON `%s`.* "
             "TO %%s@%%s" % DB_NAME, (DB_USER, host)),
        ]
    root_sql(paths, statements)
    return password


def install_helpers(paths):
    """Copy the built helpers into DIR/bin (the ones that are built so far)."""
    paths.bin.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        src = LIBEXEC / name
        if src.exists():
            shutil.copy2(src, paths.bin / name)


def start_daemon(paths):
    if _pid_alive(paths.daemon_pid):
        return
    paths.run.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QMAILSQL_QMAIL_DIR=str(paths.root),
               QMAILSQL_SOCKET=str(paths.daemon_socket))
    log = open(paths.daemon_log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "qmailsql", "daemon",
                             "--pidfile", str(paths.daemon_pid)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            start_new_session=True)
    log.close()

    def ready():
        if proc.poll() is not None:
            raise SandboxError("qmailsqld exited with %s; its log %s says:\n%s" % (
                proc.returncode, paths.daemon_log, paths.daemon_log.read_text()[-2000:]))
        return paths.daemon_socket.exists() and _pid_alive(paths.daemon_pid)
    _wait(ready, 30, "qmailsqld to listen on %s" % paths.daemon_socket)


def stop_daemon(paths, sig=signal.SIGTERM):
    pid = _pid_alive(paths.daemon_pid)
    if pid:
        os.kill(pid, sig)
        _wait(lambda: _zombie_or_gone(pid), 30, "qmailsqld to stop")


def daemon_available():
    try:
        import qmailsql.daemon  # noqa: F401
        return True
    except ImportError:
        return False


def up(root, port=None, daemon=True, userlen=32):
    """Bring the sandbox up (idempotent). Returns the environment to export."""
    paths = Paths(root)
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / MARKER).touch()
    start_db(paths, port=port)
    if not paths.sqlserver.exists():
        write_sqlserver(paths, create_db(paths))
    from qmailsql import db, schema
    cfg = configmod.load(str(paths.root))
    directory = db.Directory(cfg)
    try:
        schema.initdb(directory, userlen)
    finally:
        directory.close()
    install_helpers(paths)
    if daemon and daemon_available():
        start_daemon(paths)
    return env(paths)


def env(paths):
    return {"QMAILSQL_QMAIL_DIR": str(paths.root), "QMAILSQL_SOCKET": str(paths.daemon_socket)}


def down(root, remove=True):
    """Stop the daemon and the server; remove DIR if it is a sandbox."""
    paths = Paths(root)
    if not (paths.root / MARKER).exists():
        raise SandboxError("%s is not a qmailsql sandbox (no %s); refusing to touch it"
                           % (paths.root, MARKER))
    stop_daemon(paths)
    stop_db(paths)
    if remove:
        shutil.rmtree(paths.root, ignore_errors=True)
