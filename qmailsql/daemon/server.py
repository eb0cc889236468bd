"""qmailsqld: the one process that reads control/sqlserver and talks to the DB.

The compiled helpers (csrc/, protocol in csrc/PROTOCOL.md) ask it over a unix
socket. One thread runs an epoll loop: accept, read, frame, dispatch. Answers the
cache holds are sent inline; the rest go to a pool of DB worker threads (each with
its own persistent, failing-over db.Directory), `auth` to a separate small pool so
slow password hashes never delay deliveries. A worker sends its answer itself and
hands the connection back to the loop, so requests on one connection are answered
in order.

Who may ask (SO_PEERCRED): `getpw`, `auth` and `flush` only uid 0, the daemon's own
uid, qmailp's uid and the uids in $QMAILSQL_CLIENT_UIDS; `local` (qmail-local runs
as the mailbox's uid) also that account's own uid, for its own home, and the uid
users/cdb names for the delivery asked about (it is answered "no rows": the account
is not the DB's); Dovecot's `passdb`, `userdb` and `iterate` (qmailsql/core/dovecot.py) also Dovecot's own user
(`dovecot`) and the uids in $QMAILSQL_DOVECOT_UIDS, which may ask nothing else
(no getpw, no flush); `ping` anyone.

Hostile local clients (the socket is 0666) can cost a temporary failure, never a
stall: a uid not in that list may hold at most $QMAILSQL_MAX_CONN_PER_UID (128)
connections (the next is answered 111 and closed); a request must be complete
within $QMAILSQL_FRAME_TIMEOUT (10) seconds of its first byte; a connection idle
between requests is closed after IDLE_TIMEOUT; a request that waited in a worker
queue longer than $QMAILSQL_TASK_DEADLINE (55) seconds, more than the helpers wait
for an answer, is answered 111 without being worked on.

Logs go to stderr, one line per event, no timestamps (multilog adds them).
SIGTERM/SIGINT: stop accepting, finish what is in flight, remove socket and pidfile.
SIGHUP: re-read control/sqlserver (keep the old one if the new one is bad) and drop
the cache.
"""
import collections
import errno
import os
import pwd
import queue
import select
import signal
import socket
import stat
import struct
import threading
import time

from qmailsql.core import aliases, auth as authmod, config as configmod, db, dovecot, resolve
from qmailsql.core import users
from qmailsql.core.hotpath import (IMPLEMENTATION, ConfigError, ResponseCache, cache_times,
                              decode_frame, encode_response, split_fields)
from qmailsql.core.resolve import EXIT_TEMP, Refusal, shown

MAX_PAYLOAD = 65536           # csrc/PROTOCOL.md, both directions
RECV_SIZE = MAX_PAYLOAD + 16
DB_WORKERS = 4
AUTH_WORKERS = 2
CACHE_ENTRIES = 100000
STOP_GRACE = 15.0             # seconds to finish requests in flight on SIGTERM
IDLE_TIMEOUT = 60.0           # a connection silent this long (not waiting on us) is closed
DRAIN_TIMEOUT = 5.0           # after a malformed request: read and drop this long at most
STALE_SHORTCUT = 2.0          # after a DB failure, stale answers are given at once this long
ACCEPT_PAUSE = 0.1            # out of file descriptors: stop accepting this long
MAX_CONN_PER_UID = 128        # per unprivileged uid (privileged: no cap); above qmail's
                              # default conf-spawn of 120 concurrent local deliveries
FRAME_TIMEOUT = 10.0          # a request must be complete this long after its first byte
TASK_DEADLINE = 55.0          # queued longer than this: 111 unasked (the helpers wait 60s)
REFUSAL_LOG_EVERY = 10.0      # "too many connections" logged once per uid this often

# commands a peer not in the client uid list may send
OPEN_COMMANDS = frozenset([b"local", b"local-confirm", b"ping"])
# and Dovecot's auth user (dovecot_uids())
DOVECOT_PEER_COMMANDS = OPEN_COMMANDS | dovecot.COMMANDS
# request fields each command takes (auth: a 4th, the service, is optional, so a
# checkpassword built before service bars keeps working)
NARGS = {b"getpw": (1,), b"local": (6,), b"local-confirm": (6,), b"auth": (3, 4),
         b"ping": (0,), b"flush": (0,),
         b"passdb": (4,), b"userdb": (1,), b"iterate": (1,)}
AUTH_POOL = frozenset([b"auth", b"passdb"])  # password hashes: the auth workers' queue

PONG = encode_response(0, b"pong")
FLUSHED = encode_response(0, b"")
MALFORMED = encode_response(EXIT_TEMP, b"malformed request")
TOO_BUSY = encode_response(EXIT_TEMP, b"qmailsqld was too busy")
UCRED = struct.Struct("3i")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
DONTWAIT = socket.MSG_DONTWAIT
SOL_SOCKET = socket.SOL_SOCKET
SO_PEERCRED = socket.SO_PEERCRED


def log(message):
    """One line on stderr; a single write(2), so lines from threads never interleave."""
    data = ("qmailsqld: %s\n" % message).encode("utf-8", "backslashreplace")
    try:
        os.write(2, data)
    except OSError:
        pass


class StartError(Exception):
    """The daemon cannot start; the message says why (exit 111)."""


def _uids(environ, variable, users):
    """The uids of the system USERS that exist, and of the uids or user names listed,
    comma-separated, in VARIABLE."""
    uids = set()
    for user in users:
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
    for part in environ.get(variable, "").split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit():
            uids.add(int(part))
            continue
        try:
            uids.add(pwd.getpwnam(part).pw_uid)
        except KeyError:
            raise ConfigError(variable, 0, "%r is neither a uid nor a user name" % part)
    return uids


def client_uids(environ=None):
    """Uids that may ask getpw, auth and flush."""
    environ = os.environ if environ is None else environ
    return frozenset({0, os.getuid(), os.geteuid()} |
                     _uids(environ, "QMAILSQL_CLIENT_UIDS", ["qmailp"]))


def dovecot_uids(environ=None):
    """Uids that may ask Dovecot's commands (and nothing more): Dovecot's own
    unprivileged user, whose auth-worker processes run qmailsql's Lua script."""
    environ = os.environ if environ is None else environ
    return frozenset(_uids(environ, "QMAILSQL_DOVECOT_UIDS", ["dovecot"]))


def _env_int(name, default, low=1):
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(name, 0, "must be a whole number >= %d, not %r" % (low, text))
    return value


def probe(path, timeout=2.0):
    """True if something accepts connections on the unix socket PATH."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (BlockingIOError, socket.timeout):
        return True  # backlog full: someone is there, and busy
    finally:
        s.close()


def listen(path, backlog=1024):
    """A listening socket at PATH, mode 0666; a stale socket is replaced atomically."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, 0o755, exist_ok=True)
        except OSError as e:
            raise StartError("cannot create %s for the socket: %s" % (directory, e.strerror))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise StartError("cannot check %s: %s" % (path, e.strerror))
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError("%s exists and is not a socket; move it away" % path)
        try:
            alive = probe(path)
        except OSError as e:
            raise StartError("cannot check the socket %s: %s" % (path, e.strerror))
        if alive:
            raise StartError("another qmailsqld is already answering on %s; stop it first"
                             % path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = os.path.join(directory, ".qmailsqld.%d" % os.getpid())
    if len(tmp.encode()) > 107:
        tmp = None
    try:
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            os.chmod(tmp, 0o666)
            sock.listen(backlog)
            os.rename(tmp, path)  # atomic: clients never see the path missing
        else:
            if st is not None:
                os.unlink(path)
            sock.bind(path)
            os.chmod(path, 0o666)
            sock.listen(backlog)
    except OSError as e:
        sock.close()
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise StartError("cannot listen on %s: %s" % (path, e.strerror or e))
    sock.setblocking(False)
    return sock


def frame_size(buf):
    """Bytes the frame at the front of BUF takes in all, once its header is there; 0 while
    the header is incomplete or not a legal length (decode_frame then says why)."""
    colon = buf.find(b":", 0, 7)  # at most 6 digits
    if colon <= 0:
        return 0
    head = bytes(buf[:colon])
    if not head.isdigit() or int(head) > MAX_PAYLOAD:
        return 0
    return colon + int(head) + 2


class Conn:
    # buf: the start of a request not complete yet (a bytearray: appended to, not
    # copied; b"" when there is none); need: its whole size once the header is in
    # (0 = not known yet); started: when its first byte came, for FRAME_TIMEOUT
    __slots__ = ("sock", "fd", "uid", "pid", "privileged", "commands", "buf", "need",
                 "started", "out", "busy", "closed", "close_after", "draining", "events",
                 "last")

    def __init__(self, sock, uid, pid, privileged, commands=OPEN_COMMANDS):
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = uid
        self.pid = pid
        self.privileged = privileged
        self.commands = commands  # what it may ask when not privileged
        self.buf = b""
        self.need = 0
        self.started = 0.0
        self.out = b""
        self.busy = False
        self.closed = False
        self.close_after = False
        self.draining = False
        self.events = 0
        self.last = 0.0


class Task:
    __slots__ = ("conn", "payload", "key", "command", "args", "stale", "generation", "config",
                 "status", "body", "frame", "served_stale", "queued")

    def __init__(self, conn, payload, command, args, stale, generation, config):
        self.conn = conn
        self.payload = payload
        self.key = payload  # the cache key (peer-specific for unprivileged `local`)
        self.command = command
        self.args = args
        self.stale = stale
        self.generation = generation
        self.config = config
        self.status = EXIT_TEMP
        self.body = b""
        self.frame = b""
        self.served_stale = False
        self.queued = 0.0  # when it was put on a worker queue (monotonic)


class WorkerDirectory(db.Directory):
    """A worker's Directory: remembers the last DB failure (for stale answers) and,
    with --debug, logs every query."""

    debug = False
    last_error = None

    def query(self, sql, params=(), write=False):
        if self.debug:
            log("debug: query %s %r" % (" ".join(sql.split()), list(params)[:20]))
        try:
            return db.Directory.query(self, sql, params, write)
        except db.DirectoryUnavailable as e:
            self.last_error = e
            raise


class Worker:
    """One DB worker thread: its own Directory and Resolver, rebuilt on reload."""

    def __init__(self, daemon, tasks, name):
        self.daemon = daemon
        self.tasks = tasks
        self.name = name
        self.config = None
        self.directory = None
        self.resolver = None
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def setup(self, config):
        if self.directory is not None:
            self.directory.close()
        self.directory = WorkerDirectory(config, self.daemon.health, log)
        self.directory.debug = self.daemon.debug
        self.resolver = resolve.Resolver.for_directory(config, self.directory)
        self.config = config

    def run(self):
        self.setup(self.daemon.config)
        try:  # connect now, so the first delivery does not wait for it
            self.directory.query("SELECT 1")
        except db.DirectoryUnavailable:
            pass  # logged by the Directory; every request will try again
        while True:
            task = self.tasks.get()
            if task is None:
                break
            waited = time.monotonic() - task.queued
            if waited > self.daemon.task_deadline:
                # its client has given up by now (or soon will): answering it would
                # only delay the requests queued behind it
                log("%s %s: waited %.0fs in the queue; answered 111 without doing it" % (
                    task.command.decode("ascii"), shown(task.args[0]) if task.args else "",
                    waited))
                task.frame = TOO_BUSY
                self.daemon.reply(task)
                continue
            if task.config is not self.config:
                self.setup(task.config)
            try:
                self.handle(task)
            except Exception as e:  # a bug must not kill the worker; mail waits
                log("internal error in %s %s: %s: %s" % (task.command.decode("ascii",
                    "replace"), shown(task.args[0]) if task.args else "", type(e).__name__, e))
                task.status, task.body, task.frame = EXIT_TEMP, b"internal error in qmailsqld", b""
            if not task.frame:
                if len(task.body) > MAX_PAYLOAD - 4:  # the helpers refuse longer answers
                    log("%s %s: answer of %d bytes is too long for the protocol" % (
                        task.command.decode("ascii"), shown(task.args[0]), len(task.body)))
                    task.status, task.body = EXIT_TEMP, b"answer too long for the protocol"
                task.frame = encode_response(task.status, task.body)
            self.daemon.reply(task)
        if self.directory is not None:
            self.directory.close()

    def handle(self, task):
        command = task.command
        if command == b"getpw":
            self.getpw(task)
        elif command == b"local":
            self.local(task)
        elif command == b"local-confirm":
            self.local(task, confirm=True)
        elif command == b"auth":
            self.auth(task)
        elif command in dovecot.COMMANDS:
            self.dovecot_request(task)

    def getpw(self, task):
        local = task.args[0]
        self.directory.last_error = None
        try:
            delivery = self.resolver.getpw(local)
        except Refusal as r:
            db_error = self.directory.last_error
            if db_error is not None:
                self.daemon.db_failed_at = time.monotonic()
            if r.code == EXIT_TEMP and db_error is not None and task.stale is not None:
                log("stale answer for getpw %s: %s" % (shown(local), db_error))
                task.frame = task.stale
                task.served_stale = True
                task.status = 0
                return
            task.status, task.body = r.code, _bytes(r.message)
            if r.code == EXIT_TEMP:
                log("getpw %s: %s" % (shown(local), r.message))
            return
        task.status, task.body = 0, delivery.fields()
        self.daemon.db_failed_at = -1e9  # the DB answers again

    def local(self, task, confirm=False):
        """`local`, and `local-confirm`: the same, but no rows would be final (the
        wrapper found no dot-qmail file; stock qmail-local would bounce the mail)."""
        user, homedir, local, dash, ext, domain = task.args
        try:
            if not task.conn.privileged and not self.own_account(task.conn.uid, *task.args[:5]):
                task.status, task.body = 0, b""  # not the DB's account: stock, unchanged
                return
            body = aliases.delivery_lines(self.directory, self.config, user, homedir, local,
                                          dash, ext, domain, confirm)
        except Refusal as r:
            task.status, task.body = r.code, _bytes(r.message)
            log("local %s %s: %s" % (shown(user), shown(ext), r.message))
            return
        except db.DirectoryUnavailable as e:
            task.status, task.body = EXIT_TEMP, _bytes(str(e))
            log("local %s %s: %s" % (shown(user), shown(ext), e))
            return
        task.status, task.body = 0, _bytes(body or b"")

    def own_account(self, uid, user, homedir, local, dash, ext):
        """Whether the alias rows of USER may go to this unprivileged peer, UID.

        qmail-local runs as the account's uid: a peer may read the rows of its own
        account (USER's mailbox row or passwd entry, with that uid and HOMEDIR) and
        nobody else's. False: qmail-lspawn took this very delivery from users/cdb and it
        is not the DB's account, so the wrapper runs the stock qmail-local unchanged
        (no rows; the rows of a name go to no other account). Anything else is refused.
        A name known or unknown to the DB costs the same work (the answer is the same
        refusal): mailbox rows, /etc/passwd, users/cdb, and on a replica the same again
        on the write_server."""
        name = user.decode("utf-8", "replace")
        if self.is_owner(uid, name, homedir, self.directory):
            return True
        if self.daemon.users_cdb.delivers(local, user, uid, homedir, dash, ext):
            return False
        if self.directory.must_confirm() and self.is_owner(
                uid, name, homedir, self.directory.on_write_server()):
            return True  # a replica that lags behind a new account
        log("refused uid %d for local %s: not that account's uid and home" % (
            uid, shown(user)))
        raise Refusal(EXIT_TEMP, "qmailsqld refuses local requests from uid %d for "
                      "another account (%s)" % (uid, shown(user)))

    def is_owner(self, uid, name, homedir, directory):
        try:
            acct = self.resolver.account(name, directory.mailboxes([name]), same_cost=True)
        except Refusal as r:  # a misconfigured row: logged, never shown to the peer
            log("local %s from uid %d: %s" % (shown(name.encode("utf-8", "replace")), uid,
                                              r.message))
            return False
        return acct is not None and acct.uid == uid and os.fsencode(acct.home) == homedir

    def auth(self, task):
        login, password, remoteip = task.args[:3]
        service = task.args[3] if len(task.args) > 3 else b""
        task.args = (login, b"", remoteip)  # the password goes no further than this
        payload = authmod.response(self.directory, self.config, login, password, remoteip,
                                   log=log, service=service)  # the whole answer, logged there
        status, _, body = payload.partition(b"\0")
        task.status, task.body = int(status), body

    def dovecot_request(self, task):
        args = task.args
        if task.command == b"passdb":
            task.args = (args[0], b"") + tuple(args[2:])  # the password goes no further
        payload = dovecot.answer(task.command, args, self.resolver, self.directory,
                                 self.config, log)
        status, _, body = payload.partition(b"\0")
        task.status, task.body = int(status), body


def _bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return os.fsencode(value)
    return bytes(value)


class Daemon:
    def __init__(self, config, qmail_dir=None, debug=False, pidfile=None):
        self.config = config
        self.qmail_dir = qmail_dir
        self.debug = debug
        self.pidfile = pidfile
        self.allowed = client_uids()
        self.dovecot_uids = dovecot_uids()
        self.health = db.ServerHealth()
        # qmail-lspawn reads users/cdb relative to the qmail home
        self.users_cdb = users.UsersCdb(os.path.join(config.qmail_dir, "users", "cdb"),
                                            log)
        self.cache = ResponseCache(_env_int("QMAILSQL_CACHE_ENTRIES", CACHE_ENTRIES))
        self.n_db = _env_int("QMAILSQL_DB_WORKERS", DB_WORKERS)
        self.n_auth = _env_int("QMAILSQL_AUTH_WORKERS", AUTH_WORKERS)
        self.max_per_uid = _env_int("QMAILSQL_MAX_CONN_PER_UID", MAX_CONN_PER_UID)
        self.frame_timeout = _env_int("QMAILSQL_FRAME_TIMEOUT", FRAME_TIMEOUT)
        self.task_deadline = _env_int("QMAILSQL_TASK_DEADLINE", TASK_DEADLINE)
        self.per_uid = {}       # unprivileged uid -> open connections
        self.refusals = {}      # uid -> [when last logged, refused since without a log line]
        self.db_tasks = queue.SimpleQueue()
        self.auth_tasks = queue.SimpleQueue()
        self.done = collections.deque()
        self.conns = {}
        self.busy = 0
        self.stopping = False
        self.reload_wanted = False
        self.listener = None
        self.socket_path = None
        self.socket_ino = None
        self.accept_paused_until = 0.0
        self.db_failed_at = -1e9
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ep = select.epoll()
        self.workers = []

    # ---------------------------------------------------------------- set-up

    def start(self):
        self.socket_path = self.config.socket_path
        self.listener = listen(self.socket_path)
        self.socket_ino = os.stat(self.socket_path).st_ino
        self.ep.register(self.listener.fileno(), EPOLLIN)
        self.ep.register(self.wake_r, EPOLLIN)
        for i in range(self.n_db):
            self.workers.append(Worker(self, self.db_tasks, "db-%d" % i))
        for i in range(self.n_auth):
            self.workers.append(Worker(self, self.auth_tasks, "auth-%d" % i))
        log("start socket=%s servers=%s workers=%d+%d cache=%s pid=%d" % (
            self.socket_path, ",".join(str(s) for s in self.config.servers), self.n_db,
            self.n_auth, IMPLEMENTATION, os.getpid()))
        for w in self.workers:
            w.thread.start()
        if self.pidfile:
            write_pidfile(self.pidfile)

    def on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True
        self.wake()

    def wake(self):
        try:
            os.write(self.wake_w, b"\0")
        except OSError:
            pass  # pipe full: a wake-up is already pending

    def reload(self):
        self.reload_wanted = False
        try:
            new = configmod.load(self.qmail_dir)
        except ConfigError as e:
            log("reload failed, keeping the old configuration: %s" % e)
            return
        if new.socket_path != self.socket_path:
            log("reload: the socket path changed to %s; restart qmailsqld to move it"
                % new.socket_path)
        self.config = new
        self.cache.clear()
        log("reloaded %s servers=%s, cache dropped" % (new.path, ",".join(
            str(s) for s in new.servers)))

    # ---------------------------------------------------------------- event loop

    def run(self):
        ep = self.ep
        conns = self.conns
        lfd = self.listener.fileno() if self.listener else -1
        wake_r = self.wake_r
        next_sweep = time.monotonic() + 1.0
        stop_deadline = None
        while True:
            if self.reload_wanted:
                self.reload()
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + STOP_GRACE
                self.stop_listening()
                lfd = -1
            if stop_deadline is not None:
                if not self.busy and not any(c.out for c in conns.values()):
                    break
                if time.monotonic() > stop_deadline:
                    log("stop: gave up waiting for %d request(s) in flight" % self.busy)
                    break
            try:
                events = ep.poll(1.0)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == lfd:
                    self.accept()
                elif fd == wake_r:
                    self.drain_wake()
                else:
                    conn = conns.get(fd)
                    if conn is None:
                        continue
                    if ev & EPOLLOUT and conn.out:
                        self.flush_out(conn)
                    if ev & ~EPOLLOUT and not conn.closed and not conn.out:
                        self.read(conn)
                    self.rearm(conn)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                self.sweep(now)

    def accept(self):
        """One connection per event (level-triggered: more come on the next poll)."""
        if self.listener is None:
            return
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log("accept: %s; pausing for %.1fs" % (e.strerror, ACCEPT_PAUSE))
                self.ep.unregister(self.listener.fileno())
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE
            elif e.errno not in (errno.ECONNABORTED, errno.EPROTO):
                log("accept: %s" % e)
            return
        # the socket stays in blocking mode: every recv/send passes MSG_DONTWAIT
        try:
            pid, uid, _gid = UCRED.unpack(sock.getsockopt(SOL_SOCKET, SO_PEERCRED, UCRED.size))
        except OSError:
            sock.close()
            return
        privileged = uid in self.allowed
        if not privileged:
            n = self.per_uid.get(uid, 0)
            if n >= self.max_per_uid:
                self.refuse(sock, uid, pid, n)
                return
            self.per_uid[uid] = n + 1
        commands = DOVECOT_PEER_COMMANDS if uid in self.dovecot_uids else OPEN_COMMANDS
        conn = Conn(sock, uid, pid, privileged, commands)
        conn.last = time.monotonic()
        self.conns[conn.fd] = conn
        self.read(conn)  # the request is usually there already
        self.rearm(conn)

    def refuse(self, sock, uid, pid, n):
        """A connection over the per-uid cap: answer 111 and close it at once, so a
        flood holds no descriptors. (Closing a unix socket loses nothing already sent.)"""
        try:
            sock.send(encode_response(EXIT_TEMP, b"too many connections from uid %d" % uid),
                      DONTWAIT)
        except OSError:
            pass
        sock.close()
        now = time.monotonic()
        seen = self.refusals.get(uid)
        if seen is None or now - seen[0] >= REFUSAL_LOG_EVERY:
            more = " (and %d more since the last such line)" % seen[1] if seen and seen[1] \
                else ""
            log("refused a connection from uid %d pid %d: it has %d open, the limit is %d "
                "(QMAILSQL_MAX_CONN_PER_UID)%s" % (uid, pid, n, self.max_per_uid, more))
            self.refusals[uid] = [now, 0]
        else:
            seen[1] += 1

    def read(self, conn):
        try:
            data = conn.sock.recv(RECV_SIZE, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        now = conn.last = time.monotonic()
        if conn.close_after:
            return  # after a malformed request: dropped
        buf = conn.buf
        if not buf:
            conn.started = now  # the first byte of a request
            self.process(conn, data)
            return
        buf += data  # in place: a request sent a byte at a time costs no copies
        if not conn.need:
            conn.need = frame_size(buf)
        if conn.need and len(buf) < conn.need:
            return  # still incomplete
        conn.buf = b""
        self.process(conn, bytes(buf))

    def process(self, conn, buf):
        """Answer the complete requests at the front of BUF, in order; keep the rest."""
        done = False
        while buf:
            try:
                payload, used = decode_frame(buf, MAX_PAYLOAD)
            except ValueError as e:
                log("malformed request from uid %d pid %d: %s" % (conn.uid, conn.pid, e))
                self.send(conn, MALFORMED)
                conn.close_after = True
                buf = b""
                break
            if payload is None:
                break
            buf = buf[used:]
            done = True
            self.dispatch(conn, payload)
            if conn.busy or conn.closed or conn.close_after:
                break
        if not buf or conn.closed or conn.close_after:
            if conn.buf:
                conn.buf = b""
            conn.need = 0
            return
        if done:
            conn.started = time.monotonic()  # what is left is the next request
        conn.buf = bytearray(buf)
        conn.need = frame_size(buf)

    def dispatch(self, conn, payload):
        cache = self.cache
        if conn.privileged:
            frame = cache.get(payload, time.monotonic())
            if frame is not None:
                if self.debug:
                    self.debug_log(conn, payload, frame, "cache")
                self.send(conn, frame)
                return
        try:
            fields = split_fields(payload)
        except ValueError as e:
            log("malformed request from uid %d pid %d: %s" % (conn.uid, conn.pid, e))
            self.send(conn, MALFORMED)
            conn.close_after = True
            return
        command = fields[0]
        args = fields[1:]
        nargs = NARGS.get(command)
        if nargs is None:
            log("unknown command %s from uid %d" % (shown(command), conn.uid))
            self.send(conn, encode_response(100, b"unknown command " + _bytes(shown(command))))
            return
        if not conn.privileged and command not in conn.commands:
            cmd = command.decode("ascii")
            log("refused uid %d for %s (pid %d; allow it with %s)" % (
                conn.uid, cmd, conn.pid, "QMAILSQL_DOVECOT_UIDS" if command in
                dovecot.COMMANDS else "QMAILSQL_CLIENT_UIDS"))
            self.send(conn, encode_response(EXIT_TEMP, b"qmailsqld refuses %s requests from "
                                            b"uid %d" % (command, conn.uid)))
            return
        if len(args) not in nargs:
            log("%s request from uid %d with %d fields instead of %d" % (
                command.decode("ascii"), conn.uid, len(args), nargs[-1]))
            self.send(conn, encode_response(EXIT_TEMP, b"malformed %s request: %d fields, "
                                            b"expected %d" % (command, len(args), nargs[-1])))
            return
        if command == b"ping":
            self.send(conn, PONG)
            return
        if command == b"flush":
            self.cache.clear()
            log("cache flushed (uid %d)" % conn.uid)
            self.send(conn, FLUSHED)
            return
        stale = None
        key = payload
        if command == b"userdb" and not conn.privileged:  # Dovecot's user: its answers are
            frame = cache.get(payload, time.monotonic())  # the same as anyone's
            if frame is not None:
                self.send(conn, frame)
                return
        elif command == b"local" and not conn.privileged:
            # a worker checks that USER is this peer's own account; what is cached
            # here was checked for this very uid
            key = b"uid=%d\0" % conn.uid + payload
            frame = cache.get(key, time.monotonic())
            if frame is not None:
                if self.debug:
                    self.debug_log(conn, payload, frame, "cache")
                self.send(conn, frame)
                return
        elif command == b"getpw":
            now = time.monotonic()
            stale = cache.get_stale(payload, now)
            if stale is not None and now - self.db_failed_at < STALE_SHORTCUT:
                # the DB failed a moment ago: no need to make this one wait for it too
                log("stale answer for getpw %s: the DB was unreachable %.1fs ago" % (
                    shown(args[0]), now - self.db_failed_at))
                self.send(conn, stale)
                return
        task = Task(conn, payload, command, args, stale, cache.generation, self.config)
        task.key = key
        task.queued = time.monotonic()
        conn.busy = True
        self.busy += 1
        if command in AUTH_POOL:
            self.auth_tasks.put(task)
        else:
            self.db_tasks.put(task)

    def debug_log(self, conn, payload, frame, how):
        fields = payload.split(b"\0")
        if fields[0] in AUTH_POOL:  # never the password
            what = "%s %s" % (fields[0].decode(), shown(fields[1] if len(fields) > 1 else b""))
        else:
            what = " ".join([fields[0].decode("ascii", "replace")] +
                            [shown(f) for f in fields[1:-1]])
        colon = frame.find(b":")
        status = frame[colon + 1:frame.find(b"\0", colon)]
        log("debug: uid %d %s -> %s (%s)" % (conn.uid, what, status.decode("ascii", "replace"),
                                             how))

    def reply(self, task):
        """Called by a worker: send the answer, then give the connection back to the loop."""
        conn = task.conn
        frame = task.frame
        try:
            n = conn.sock.send(frame, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            n = len(frame)
            conn.close_after = True
        if n < len(frame):
            conn.out = frame[n:]
        self.done.append(task)
        self.wake()

    def drain_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        done = self.done
        cache = self.cache
        while done:
            task = done.popleft()
            conn = task.conn
            conn.busy = False
            self.busy -= 1
            if self.debug:
                self.debug_log(conn, task.payload, task.frame,
                               "stale" if task.served_stale else "db")
            if not task.served_stale and task.generation == cache.generation:
                cfg = task.config
                ttl, stale = cache_times(task.payload, task.status, task.body, cfg.cache_ttl,
                                         cfg.negative_ttl, cfg.stale_ttl)
                if ttl > 0:
                    cache.put(task.key, task.frame, time.monotonic(), ttl, stale)
            if conn.closed:
                continue
            conn.last = time.monotonic()
            if conn.buf:
                conn.started = conn.last  # not read while a worker had it: not its fault
            if conn.buf and not conn.out and not conn.close_after:
                buf, conn.buf = conn.buf, b""
                self.process(conn, bytes(buf))
            if self.stopping and not conn.busy and not conn.buf and not conn.out:
                self.close(conn)
                continue
            self.rearm(conn)

    def send(self, conn, frame):
        if conn.out:
            conn.out += frame
            return
        try:
            n = conn.sock.send(frame, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close(conn)
            return
        if n < len(frame):
            conn.out = frame[n:]

    def flush_out(self, conn):
        try:
            n = conn.sock.send(conn.out, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        conn.out = conn.out[n:]
        conn.last = time.monotonic()
        if not conn.out and conn.buf and not conn.close_after and not conn.busy:
            buf, conn.buf = conn.buf, b""
            self.process(conn, bytes(buf))

    def rearm(self, conn):
        """Watch CONN for what it needs next (nothing while a worker has it)."""
        if conn.closed:
            return
        if conn.close_after and not conn.out and not conn.busy and not conn.draining:
            # the answer is out: stop sending, then read and drop what the client still
            # sends until it hangs up, so the answer is not lost to a reset
            conn.draining = True
            conn.buf = b""
            conn.need = 0
            conn.last = time.monotonic()
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(conn)
                return
        want = 0 if conn.busy else (EPOLLOUT if conn.out else EPOLLIN)
        if want == conn.events:
            return
        try:
            if conn.events == 0:
                self.ep.register(conn.fd, want)
            elif want == 0:
                self.ep.unregister(conn.fd)
            else:
                self.ep.modify(conn.fd, want)
        except OSError as e:
            log("epoll on fd %d: %s" % (conn.fd, e))
            self.close(conn)
            return
        conn.events = want

    def close(self, conn):
        if conn.closed:
            return
        conn.closed = True
        conn.events = 0  # close() takes the fd out of the epoll set
        self.conns.pop(conn.fd, None)
        conn.sock.close()
        if not conn.privileged:
            n = self.per_uid.get(conn.uid, 0) - 1
            if n > 0:
                self.per_uid[conn.uid] = n
            else:
                self.per_uid.pop(conn.uid, None)

    def sweep(self, now):
        if self.accept_paused_until and now >= self.accept_paused_until and self.listener:
            self.accept_paused_until = 0.0
            try:
                self.ep.register(self.listener.fileno(), EPOLLIN)
            except OSError:
                pass
        frame_timeout = self.frame_timeout
        for conn in list(self.conns.values()):
            if self.stopping:
                idle = 0.0
            elif conn.close_after:
                idle = DRAIN_TIMEOUT
            else:
                idle = IDLE_TIMEOUT
            if conn.busy or conn.closed:
                continue
            if now - conn.last > idle and not (self.stopping and conn.out):
                self.close(conn)
            elif conn.buf and not conn.close_after and now - conn.started > frame_timeout \
                    and (not conn.need or len(conn.buf) < conn.need):
                log("closed the connection from uid %d pid %d: its request was still "
                    "incomplete (%d bytes) %.0fs after its first byte" % (
                        conn.uid, conn.pid, len(conn.buf), now - conn.started))
                self.close(conn)
        if self.refusals:
            for uid, seen in list(self.refusals.items()):
                if now - seen[0] >= REFUSAL_LOG_EVERY:
                    if seen[1]:
                        log("refused %d more connection(s) from uid %d (too many open)"
                            % (seen[1], uid))
                    del self.refusals[uid]

    def stop_listening(self):
        log("stop requested: no new connections; finishing %d request(s) in flight"
            % self.busy)
        if self.listener is not None:
            try:
                self.ep.unregister(self.listener.fileno())
            except (OSError, ValueError):
                pass
            self.listener.close()
            self.listener = None
        self.remove_socket()
        # idle connections have nothing in flight: close them now
        for conn in list(self.conns.values()):
            if not conn.busy and not conn.out:
                self.close(conn)

    def remove_socket(self):
        if self.socket_path:
            try:
                if os.stat(self.socket_path).st_ino == self.socket_ino:
                    os.unlink(self.socket_path)
            except OSError:
                pass
            self.socket_path = None

    def shutdown(self):
        for w in self.workers:
            w.tasks.put(None)
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self.conns.values()):
            self.close(conn)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.remove_socket()
        if self.pidfile:
            remove_pidfile(self.pidfile)


def write_pidfile(path):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.replace(tmp, path)


def remove_pidfile(path):
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def main(args):
    """`qmailsql daemon` / `qmailsqld`: run in the foreground until SIGTERM."""
    qmail_dir = getattr(args, "qmail_dir", None)
    debug = bool(getattr(args, "debug", False))
    pidfile = getattr(args, "pidfile", None)
    try:
        config = configmod.load(qmail_dir)
        daemon = Daemon(config, qmail_dir, debug, pidfile)
    except ConfigError as e:
        log("fatal: %s" % e)
        return 111
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, daemon.on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        daemon.start()
    except StartError as e:
        log("fatal: %s" % e)
        return 111
    try:
        daemon.run()
    finally:
        daemon.shutdown()
        log("stop")
    return 0
