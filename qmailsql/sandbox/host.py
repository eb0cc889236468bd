"""A throw-away qmail home backed by a private MariaDB server (SPEC section 9).

DIR/control/sqlserver     the daemon's least-privilege login (mode 0640)
DIR/mysql/root.cnf        the administrator's option file (the server's root), which
                          qmailsql.connect(DIR) and the admin commands use here as they
                          would use ~/.my.cnf on a host
DIR/bin/                  the compiled helpers
DIR/mysql/                private datadir, socket, pid file and error log
DIR/qmailsql/             the daemon's socket, pid file and log

The server runs with no TCP port unless asked, so it never clashes with a MariaDB
service already on the machine, and it is started directly, without systemd.

Replication and TLS, for the tests and for trying a multi-host set-up on one machine:

    up(P, port=free_port(), log_bin=True, daemon=False)   # a primary with a binary log
    up_replica(P, R)                 # R: a second mariadbd replicating P (GTID), read_only,
                                     # R/control/sqlserver lists R first, write_server P
    up(D, port=free_port(), ssl=make_certs(D / "tls"))   # TLS (see test_tls.py)

Each server's start options are kept in DIR/mysql/options.json, so restart_db() brings a
stopped (or killed) server back exactly as it was, replication included.
"""
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import MySQLdb

from qmailsql.core import config as configmod, db, dovecot as dovecot_config, schema
from qmailsql.core.config import SANDBOX_MARKER as MARKER, admin_option_file  # noqa: F401 (sb.*)
from qmailsql.core.helpers import LIBEXEC, NAMES, PACKAGE_DIR, SCRIPTS

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
        self.db_options = self.mysql / "options.json"
        self.binlog = self.mysql / "binlog"
        self.run = self.root / "qmailsql"
        self.daemon_socket = self.run / "qmailsqld.sock"
        self.daemon_pid = self.run / "qmailsqld.pid"
        self.daemon_log = self.run / "qmailsqld.log"


def _pid_alive(pidfile):
    """The pid in PIDFILE if that process runs (a zombie, killed but not reaped, does not)."""
    try:
        pid = int(Path(pidfile).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    if _zombie_or_gone(pid):
        return None
    return pid


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SandboxError("timed out after %ds waiting for %s" % (timeout, what))


def root_connect(paths, password=None, **kwargs):
    """A MySQLdb connection as the sandbox's DB root, over its socket (set-up, tests)."""
    if password is None:
        password = root_password(paths)
    return MySQLdb.connect(unix_socket=str(paths.db_socket), user="root", passwd=password,
                           connect_timeout=10, **kwargs)


def root_sql(paths, statements, password=None):
    """Run (sql, params) STATEMENTS as the sandbox's DB root (set-up only)."""
    conn = root_connect(paths, password, autocommit=True)
    try:
        cur = conn.cursor()
        for sql, params in statements:
            cur.execute(sql, params)
        return cur.fetchall()
    finally:
        conn.close()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_options(paths):
    """The options the server in PATHS was last started with ({} if never)."""
    try:
        return json.loads(paths.db_options.read_text())
    except (OSError, ValueError):
        return {}


def start_db(paths, port=None, extra_args=(), server_id=None, log_bin=False, read_only=False,
             ssl=None):
    """Start the private mariadbd (initialising its datadir the first time).

    PORT: also listen on 127.0.0.1:PORT (else no networking at all). SERVER_ID and
    LOG_BIN: what a replication primary needs (binary log in DIR/mysql/binlog, row
    format, GTIDs). READ_ONLY: read_only=1, as on a replica (only accounts with SUPER,
    and the replication thread, may write). SSL: {'ca', 'cert', 'key'} file paths.
    The options are recorded for restart_db().
    """
    if len(str(paths.db_socket)) > SOCKET_MAX:
        raise SandboxError("sandbox path too long for a unix socket (%d > %d chars): "
                           "choose a shorter DIR" % (len(str(paths.db_socket)), SOCKET_MAX))
    if _pid_alive(paths.db_pid):
        return
    paths.mysql.mkdir(parents=True, exist_ok=True)
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    fresh = not (paths.datadir / "mysql").exists()
    # a private tmpdir: bootstraps running side by side collide on /tmp's temp tables
    tmpdir = paths.mysql / "tmp"
    tmpdir.mkdir(exist_ok=True)
    if fresh:
        r = subprocess.run([_which("mariadb-install-db", "mysql_install_db"), "--no-defaults",
                            "--datadir=%s" % paths.datadir, "--tmpdir=%s" % tmpdir,
                            "--auth-root-authentication-method=normal",
                            # --force: no host-name look-up first (a host with no /etc/hosts
                            # entry for its name, or none for localhost, is refused without)
                            "--skip-test-db", "--force"] + as_root, capture_output=True, text=True,
                           timeout=300)
        if r.returncode:
            raise SandboxError("mariadb-install-db failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    net = ["--port=%d" % port, "--bind-address=127.0.0.1"] if port else ["--skip-networking"]
    repl = []
    if server_id is not None:
        repl.append("--server-id=%d" % server_id)
    if log_bin:
        paths.binlog.mkdir(exist_ok=True)
        repl += ["--log-bin=%s" % (paths.binlog / "mysql-bin"), "--binlog-format=ROW"]
    else:
        repl.append("--skip-log-bin")
    if read_only:
        repl.append("--read-only=1")
    tls = []
    if ssl:
        tls = ["--ssl-%s=%s" % (k, ssl[k]) for k in ("ca", "cert", "key") if ssl.get(k)]
    cmd = [_which("mariadbd", "mysqld"), "--no-defaults", "--datadir=%s" % paths.datadir,
           "--socket=%s" % paths.db_socket, "--pid-file=%s" % paths.db_pid,
           "--log-error=%s" % paths.db_log, "--tmpdir=%s" % tmpdir,
           "--innodb-buffer-pool-size=32M",
           "--innodb-log-file-size=16M", "--max-connections=200",
           "--character-set-server=utf8mb4"] + repl + net + tls + as_root + list(extra_args)
    paths.db_options.write_text(json.dumps({
        "port": port, "extra_args": list(extra_args), "server_id": server_id,
        "log_bin": bool(log_bin), "read_only": bool(read_only), "ssl": ssl or None}))
    try:  # a killed server leaves its socket behind; readiness is its reappearance
        paths.db_socket.unlink()
    except FileNotFoundError:
        pass
    with open(os.devnull, "rb") as null:
        subprocess.Popen(cmd, stdin=null, stdout=null, stderr=null, start_new_session=True)
    try:
        _wait(lambda: paths.db_socket.exists() and _pid_alive(paths.db_pid), 60,
              "mariadbd to start")
    except SandboxError:
        tail = paths.db_log.read_text()[-2000:] if paths.db_log.exists() else ""
        raise SandboxError("mariadbd did not start; its log says:\n" + tail)
    if fresh or not paths.root_cnf.exists():
        # every root account (localhost, 127.0.0.1, ::1, the host name) gets the password
        secret = secrets.token_hex(16)
        hosts = root_sql(paths, [("SELECT host FROM mysql.user WHERE user = 'root'", ())], "")
        root_sql(paths, [("ALTER USER root@%s IDENTIFIED BY %s", (host, secret))
                         for (host,) in hosts], "")
        write_root_cnf(paths, secret)


def write_root_cnf(paths, secret):
    fd = os.open(paths.root_cnf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[client]\nuser=root\npassword=%s\nsocket=%s\n" % (secret, paths.db_socket))


def root_password(paths):
    return dict(l.split("=", 1) for l in paths.root_cnf.read_text().split("\n")
                if "=" in l).get("password", "")


def restart_db(paths):
    """Start a stopped or killed server again with the options it last ran with."""
    opts = db_options(paths)
    start_db(paths, port=opts.get("port"), extra_args=opts.get("extra_args", ()),
             server_id=opts.get("server_id"), log_bin=opts.get("log_bin", False),
             read_only=opts.get("read_only", False), ssl=opts.get("ssl"))


def stop_db(paths, sig=signal.SIGTERM, timeout=60):
    """Stop (or with SIGKILL, kill) the private server and wait until it is gone."""
    pid = _pid_alive(paths.db_pid)
    if not pid:
        return
    os.kill(pid, sig)
    _wait(lambda: _zombie_or_gone(pid), timeout, "mariadbd to stop")
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


def write_sqlserver(paths, password, server=None, write_server=None, extra="", login=DB_USER):
    """DIR/control/sqlserver (mode 0640). SERVER: one server or a list, tried in order."""
    paths.control.mkdir(parents=True, exist_ok=True)
    servers = server if isinstance(server, (list, tuple)) else [server or paths.db_socket]
    text = ("# written by `qmailsql sandbox up`\n"
            + "".join("server    %s\n" % s for s in servers)
            + ("write_server %s\n" % write_server if write_server else "")
            + "login     %s\n"
              "password  %s\n"
              "db        %s\n"
              "connect_timeout 2\n"
              "read_timeout    5\n" % (login, password, DB_NAME)
            + extra)
    tmp = paths.sqlserver.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, paths.sqlserver)


def create_schema(paths, userlen=32, hosts=("localhost", "127.0.0.1")):
    """What `qmailsql initdb` and `qmailsql grant` do on a host, as the sandbox's DB
    root: the database, the tables, and control/sqlserver's login with exactly the
    daemon's grants (from HOSTS: the socket, and TCP on 127.0.0.1)."""
    daemon_cfg = configmod.load(str(paths.root))
    admin = configmod.as_admin(daemon_cfg, str(paths.root_cnf))
    schema.create_database(admin)
    directory = db.Directory(admin)
    try:
        schema.initdb(directory, userlen)
        schema.grant_daemon(directory, daemon_cfg.db, daemon_cfg.login, daemon_cfg.password,
                            hosts)
    finally:
        directory.close()


def install_helpers(paths):
    """Copy the built helpers into DIR/bin (the ones that are built so far)."""
    paths.bin.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        src = LIBEXEC / name
        if src.exists():
            shutil.copy2(src, paths.bin / name)
    # where `qmailsql dovecot-config` looks for it
    shutil.copy2(SCRIPTS[dovecot_config.SCRIPT], paths.bin / dovecot_config.INSTALLED_SCRIPT)


def package_parent():
    """The directory this qmailsql package is imported from: a child `python -m
    qmailsql` run from a neutral cwd then gets the very same package (installed or
    built in place), never a source tree that happens to be its cwd."""
    return str(PACKAGE_DIR.parent)


def start_daemon(paths, extra_env=None):
    """Start the sandbox's qmailsqld (EXTRA_ENV added to its environment)."""
    if _pid_alive(paths.daemon_pid):
        return
    paths.run.mkdir(parents=True, exist_ok=True)
    for stale in (paths.daemon_socket, paths.daemon_pid):  # left by a killed daemon
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
    env = dict(os.environ, QMAILSQL_QMAIL_DIR=str(paths.root),
               QMAILSQL_SOCKET=str(paths.daemon_socket), PYTHONPATH=package_parent(),
               **(extra_env or {}))
    # the log names users, addresses and rows: not for other local users to read
    fd = os.open(paths.daemon_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    log = os.fdopen(fd, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "qmailsql", "daemon",
                             "--pidfile", str(paths.daemon_pid)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            cwd=str(paths.root), start_new_session=True)
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


def up(root, port=None, daemon=True, userlen=32, log_bin=False, server_id=None, ssl=None):
    """Bring the sandbox up (idempotent). Returns the environment to export.

    PORT, LOG_BIN, SERVER_ID, SSL: as for start_db(); LOG_BIN without SERVER_ID uses
    server_id 1. With a PORT, control/sqlserver names the server by its unix socket
    all the same (the socket is tried first anyway).
    """
    paths = Paths(root)
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / MARKER).touch()
    if log_bin and server_id is None:
        server_id = 1
    try:
        start_db(paths, port=port, server_id=server_id, log_bin=log_bin, ssl=ssl)
        if not paths.sqlserver.exists():
            write_sqlserver(paths, secrets.token_hex(12))
        create_schema(paths, userlen)
        install_helpers(paths)
        if daemon:
            start_daemon(paths)
    except BaseException:
        # leave nothing running behind a failed `up`; DIR stays, with its logs
        for stop in (stop_daemon, stop_db):
            try:
                stop(paths)
            except (OSError, SandboxError):
                pass
        raise
    return env(paths)


REPL_USER = "qmailsql_repl"
# files of a datadir that belong to that server alone, not to a copy of its data
_NOT_COPIED = ("master.info", "relay-log.info", "multi-master.info", "*relay-bin*",
               "*.pid", "*.sock", "*.err")


def up_replica(primary_root, replica_root, port=None, daemon=False, server_id=None):
    """A second private mariadbd in REPLICA_ROOT, a real GTID replica of PRIMARY_ROOT's.

    The primary must be a running sandbox. It is stopped for a moment: its datadir is
    copied as the replica's starting point (a cold copy: same tables, rows and users),
    and it is started again with a binary log and a TCP port if it had none (replication
    needs both). A replication user is created on the primary, and the replica runs
    CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos, START SLAVE, with read_only=1, on
    PORT (default: a free one) and SERVER_ID (default: its port). Its
    control/sqlserver lists the replica first, then the primary, and names the
    primary as write_server. Idempotent: a replica already set up is just started.
    Returns the replica's environment (as up()).
    """
    primary, replica = Paths(primary_root), Paths(replica_root)
    if not (primary.root / MARKER).exists() or not primary.sqlserver.exists():
        raise SandboxError("%s is not a sandbox that is up: run up() on it first" % primary.root)
    replica.root.mkdir(parents=True, exist_ok=True)
    (replica.root / MARKER).touch()
    if (replica.datadir / "mysql").exists() and db_options(replica).get("read_only"):
        restart_db(replica)
    else:
        popts = db_options(primary)
        pport = popts.get("port") or free_port()
        pid = popts.get("server_id") or 1
        stop_db(primary)
        if replica.mysql.exists():
            shutil.rmtree(replica.mysql)
        replica.mysql.mkdir(parents=True)
        shutil.copytree(primary.datadir, replica.datadir,
                        ignore=shutil.ignore_patterns(*_NOT_COPIED))
        start_db(primary, port=pport, extra_args=popts.get("extra_args", ()), server_id=pid,
                 log_bin=True, ssl=popts.get("ssl"))
        write_root_cnf(replica, root_password(primary))
        port = port or free_port()
        if server_id is None:
            server_id = port if port != pid else port + 1
        start_db(replica, port=port, server_id=server_id, read_only=True)
        # the copy holds everything up to the primary's binlog position at its restart
        gtid = root_sql(primary, [("SELECT @@GLOBAL.gtid_binlog_pos", ())])[0][0]
        repl_password = secrets.token_hex(12)
        root_sql(primary, [
            ("CREATE OR REPLACE USER %s@'127.0.0.1' IDENTIFIED BY %s", (REPL_USER, repl_password)),
            ("GRANT REPLICATION SLAVE ON *.* TO %s@'127.0.0.1'", (REPL_USER,)),
        ])
        root_sql(replica, [
            ("STOP SLAVE", ()),
            ("SET GLOBAL gtid_slave_pos = %s", (gtid,)),
            ("CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
             "MASTER_PASSWORD=%s, MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
             ("127.0.0.1", pport, REPL_USER, repl_password)),
            ("START SLAVE", ()),
        ])
        cfg = configmod.load(str(primary.root))
        write_sqlserver(replica, cfg.password, server=["127.0.0.1:%d" % port,
                                                       "127.0.0.1:%d" % pport],
                        write_server="127.0.0.1:%d" % pport, login=cfg.login)
    wait_replicating(replica)
    install_helpers(replica)
    if daemon:
        start_daemon(replica)
    return env(replica)


def replica_status(paths):
    """SHOW SLAVE STATUS of the server in PATHS as a dict ({} if it is no replica)."""
    conn = root_connect(paths)
    try:
        cur = conn.cursor(MySQLdb.cursors.DictCursor)
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()


def wait_replicating(paths, timeout=60):
    """Wait until both replication threads of the replica in PATHS run."""
    last = {}

    def running():
        last.update(replica_status(paths))
        return last.get("Slave_IO_Running") == "Yes" and last.get("Slave_SQL_Running") == "Yes"
    try:
        _wait(running, timeout, "replication to run")
    except SandboxError:
        raise SandboxError("replica %s is not replicating: IO %s (%s), SQL %s (%s)" % (
            paths.root, last.get("Slave_IO_Running"), last.get("Last_IO_Error"),
            last.get("Slave_SQL_Running"), last.get("Last_SQL_Error")))


def wait_caught_up(primary_paths, replica_paths, timeout=60):
    """Wait until the replica has applied everything the primary has logged so far."""
    gtid = root_sql(primary_paths, [("SELECT @@GLOBAL.gtid_binlog_pos", ())])[0][0]
    got = root_sql(replica_paths, [("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, timeout))])
    if got[0][0] != 0:
        raise SandboxError("replica %s did not reach the primary's position %s within %ds"
                           % (replica_paths.root, gtid, timeout))


def stop_replication(paths):
    """STOP SLAVE on the replica in PATHS: it keeps answering, with old data."""
    root_sql(paths, [("STOP SLAVE", ())])


def start_replication(paths):
    root_sql(paths, [("START SLAVE", ())])
    wait_replicating(paths)


def make_certs(directory, name="qmailsql test", hosts=("127.0.0.1", "localhost"), ca=None):
    """A throw-away CA and a server and a client certificate from it, made with openssl.

    Returns {'ca', 'cert', 'key', 'client_cert', 'client_key', 'ca_key'} file paths;
    {'ca', 'cert', 'key'} is what start_db(ssl=...) wants. HOSTS go into the server
    certificate's subjectAltName (IP addresses as IP entries). CA: an earlier result
    whose CA signs the new certificates (default: a new CA).
    """
    openssl = shutil.which("openssl")
    if not openssl:
        raise SandboxError("openssl not found; install it: apt-get install openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {k: str(d / f) for k, f in (("ca", "ca.pem"), ("ca_key", "ca.key"),
                                        ("cert", "server.pem"), ("key", "server.key"),
                                        ("client_cert", "client.pem"),
                                        ("client_key", "client.key"))}
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args):
        r = subprocess.run([openssl] + list(args), capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise SandboxError("openssl %s failed: %s" % (args[0], r.stderr[-1000:]))
    if ca:
        for k in ("ca", "ca_key"):
            shutil.copyfile(ca[k], files[k])
    else:
        run("req", "-x509", *newkey, "-keyout", files["ca_key"], "-out", files["ca"],
            "-days", "2", "-subj", "/CN=%s CA" % name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    san = ",".join(("IP:%s" if h.replace(".", "").isdigit() or ":" in h else "DNS:%s") % h
                   for h in hosts)
    for who, cn, ext in (("", hosts[0], "subjectAltName=%s\nextendedKeyUsage=serverAuth\n"
                          % san),
                         ("client_", "qmailsql", "extendedKeyUsage=clientAuth\n")):
        key, cert = files[who + "key"], files[who + "cert"]
        csr, extfile = cert + ".csr", cert + ".ext"
        Path(extfile).write_text("basicConstraints=CA:FALSE\n" + ext)
        run("req", "-new", *newkey, "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn)
        run("x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca_key"],
            "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extfile)
    for k in ("key", "client_key", "ca_key"):
        os.chmod(files[k], 0o600)
    return files


def dovecot_binary():
    """Dovecot's master program, or SandboxError saying what to install."""
    for path in (shutil.which("dovecot"), "/usr/sbin/dovecot"):
        if path and os.access(path, os.X_OK):
            return path
    raise SandboxError("dovecot not found; install it: apt-get install dovecot-core")


@contextlib.contextmanager
def dovecot(conf, ready, timeout=30):
    """A private Dovecot, `dovecot -F -c CONF`, running while the block runs (CONF names
    its own base_dir, state_dir and log, so a system Dovecot is neither used nor
    disturbed). READY() says when it serves; its stdout and stderr go to CONF.out.
    SandboxError, with that output, if it exits or is not ready within TIMEOUT s."""
    out = str(conf) + ".out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([dovecot_binary(), "-F", "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                raise SandboxError("dovecot exited with %s" % proc.returncode)
            return ready()
        try:
            _wait(up, timeout, "dovecot -c %s to serve" % conf)
        except SandboxError as e:
            with open(out, "rb") as f:
                raise SandboxError("%s; %s says:\n%s" % (
                    e, out, f.read()[-4000:].decode("utf-8", "replace"))) from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


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
