"""qmailsqld: the one process that reads control/sqlserver and talks to the DB.

The compiled helpers (csrc/, protocol in csrc/PROTOCOL.md) ask it over a unix
socket. One thread runs an epoll loop: accept, read, frame, dispatch. Answers the
cache holds are sent inline; the rest go to a pool of DB worker threads (each with
its own persistent, failing-over db.Directory), `auth` to a separate small pool so
slow password hashes never delay deliveries. A worker hands its answer back to the
loop, which sends it; a connection's next request waits for it, so requests on one
connection are answered in order.

Who may ask (SO_PEERCRED): `getpw`, `auth` and `flush` only uid 0, the daemon's own
uid, qmailp's uid and the uids in $QMAILSQL_CLIENT_UIDS; `local`, `localq` (the same
with the mailbox's quota) and `local-confirm` (qmail-local runs as the mailbox's uid)
also that account's own uid, for its own home, and the uid users/cdb names for the
delivery asked about (it is answered "no rows", and no quota: the account is not the
DB's); Dovecot's `passdb`, `userdb` and `iterate` (qmailsql/core/dovecot.py) also Dovecot's
own user (`dovecot`) and the uids in $QMAILSQL_DOVECOT_UIDS, which may ask nothing else
(no getpw, no flush); `ping` anyone.

Hostile local clients (the socket is 0666) can cost themselves a temporary failure,
never others a stall (README, "Security"):
- work is bounded per round of the loop: a connection gets TURN_FRAMES requests per
  turn, an unprivileged uid UID_ROUND_FRAMES for all its connections; privileged
  peers go first, in the loop (serve()) and in the worker queues (TaskQueue), where
  one worker is kept for them;
- memory is bounded per connection: input is read only when the requests already
  read are handled, and not while OUT_LIMIT of answers wait for the client to read;
- a uid not in that list may hold at most $QMAILSQL_MAX_CONN_PER_UID (128)
  connections (the next is answered 111 and closed); a request must be complete
  within $QMAILSQL_FRAME_TIMEOUT (10) seconds of its first byte; no getpw/local field
  may be longer than resolve.MAX_FIELD (homedir: MAX_HOMEDIR); a connection idle
  between requests is closed after IDLE_TIMEOUT; a request that waited in a worker
  queue longer than $QMAILSQL_TASK_DEADLINE (55) seconds, more than the helpers wait
  for an answer, is answered 111 without being worked on;
- the response cache has a share per unprivileged uid, apart from the privileged
  answers and the stale ones (hotpath.ResponseCache);
- refusals are logged at most REFUSAL_LOG_BURST lines per uid and kind every
  REFUSAL_LOG_EVERY seconds (RefusalLog).

Logs go to stderr, one line per event, no timestamps (multilog adds them).
SIGTERM/SIGINT: stop accepting, finish what is in flight, remove socket and pidfile.
SIGHUP: re-read control/sqlserver (keep the old one if the new one is bad) and drop
the cache.
"""
import collections
import errno
import os
import pwd
import select
import signal
import socket
import struct
import threading
import time

from qmailsql.core import config as configmod, db
from qmailsql.core import users
from qmailsql.core.hotpath import (CACHED, IMPLEMENTATION, MALFORMED, PRIVILEGED, REFUSED,
                                   STALE_NOW, WORK, ConfigError, Dispatcher, ResponseCache,
                                   cache_times, encode_response)
from qmailsql.core.resolve import EXIT_TEMP, MAX_FIELD, shown, too_long
from qmailsql.daemon.commands import DOVECOT_PEER_COMMANDS, OPEN_COMMANDS, TABLE as COMMANDS
# OUT_LIMIT, OUT_CHUNK: also reachable from here (the tests read them)
from qmailsql.daemon.conn import EPOLLIN, EPOLLOUT, OUT_CHUNK, OUT_LIMIT, Conn
from qmailsql.daemon.listen import StartError, listen, probe, remove_pidfile, write_pidfile
from qmailsql.daemon.logs import log
# Worker, TaskQueue, WorkerDirectory, probe and StartError: also reachable from here
# (qmailsql.daemon.server is what the tests import)
from qmailsql.daemon.workers import (MAX_PAYLOAD, Task, TaskQueue, Worker, WorkerDirectory,
                                     put_fills)

RECV_SIZE = MAX_PAYLOAD + 16
DB_WORKERS = 4
AUTH_WORKERS = 4              # one kept for checkpassword: Dovecot's logins get 3 at once
CACHE_ENTRIES = 100000
STOP_GRACE = 15.0             # seconds to finish requests in flight on SIGTERM
STALE_SHORTCUT = 2.0          # after a DB failure, stale answers are given at once this long
ACCEPT_PAUSE = 0.1            # out of file descriptors: stop accepting this long
MAX_CONN_PER_UID = 128        # per unprivileged uid (privileged: no cap); above qmail's
                              # default conf-spawn of 120 concurrent local deliveries
FRAME_TIMEOUT = 10.0          # a request must be complete this long after its first byte
TASK_DEADLINE = 55.0          # queued longer than this: 111 unasked (the helpers wait 60s)
REFUSAL_LOG_EVERY = 10.0      # refusals: at most REFUSAL_LOG_BURST lines of a kind per uid
REFUSAL_LOG_BURST = 8         # this often, then one line that counts the others
MAX_HOMEDIR = 4096            # bytes of a local request's homedir (PATH_MAX); the other
                              # getpw/local fields: resolve.MAX_FIELD
TURN_FRAMES = 16              # requests of one connection handled before the next one's turn
UID_ROUND_FRAMES = 32         # ... of all connections of one unprivileged uid per round
ACCEPT_BURST = 64             # connections accepted per round of the loop

PONG = encode_response(0, b"pong")
FLUSHED = encode_response(0, b"")
UCRED = struct.Struct("iII")  # pid_t, uid_t, gid_t: the ids are unsigned

DONTWAIT = socket.MSG_DONTWAIT
SOL_SOCKET = socket.SOL_SOCKET
SO_PEERCRED = socket.SO_PEERCRED


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


class RefusalLog:
    """Log lines about refused requests: at most BURST of one kind (a short word) per uid
    every EVERY seconds; the lines left out are counted, and the count is logged once
    EVERY has passed (by sweep()). Thread-safe: workers refuse too."""

    def __init__(self, every=REFUSAL_LOG_EVERY, burst=REFUSAL_LOG_BURST):
        self.every = every
        self.burst = burst
        self.lock = threading.Lock()
        self.seen = {}  # (uid, kind) -> [start of its window, lines logged, lines left out]

    def __call__(self, uid, kind, message):
        now = time.monotonic()
        with self.lock:
            seen = self.seen.get((uid, kind))
            if seen is None:
                seen = self.seen[(uid, kind)] = [now, 0, 0]
            if seen[1] >= self.burst:
                seen[2] += 1
                return
            seen[1] += 1
        log(message)

    def sweep(self, now):
        lines = []
        with self.lock:
            for (uid, kind), seen in list(self.seen.items()):
                if now - seen[0] >= self.every:
                    del self.seen[(uid, kind)]
                    if seen[2]:
                        lines.append("%d more refusal(s) of uid %d (%s) not logged in %.0fs "
                                     "(at most %d lines per %.0fs)" % (
                                         seen[2], uid, kind, now - seen[0], self.burst,
                                         self.every))
        for line in lines:
            log(line)


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
        entries = _env_int("QMAILSQL_CACHE_ENTRIES", CACHE_ENTRIES)
        self.cache = ResponseCache(entries, _env_int("QMAILSQL_CACHE_PER_UID",
                                                     max(1, entries // 100)))
        # no getpw/local field longer than stock qmail ever passes (homedir: PATH_MAX)
        self.dispatcher = Dispatcher(COMMANDS, self.cache, too_long, MAX_FIELD, MAX_HOMEDIR,
                                     STALE_SHORTCUT)
        self.n_db = _env_int("QMAILSQL_DB_WORKERS", DB_WORKERS)
        self.n_auth = _env_int("QMAILSQL_AUTH_WORKERS", AUTH_WORKERS)
        self.max_per_uid = _env_int("QMAILSQL_MAX_CONN_PER_UID", MAX_CONN_PER_UID)
        self.frame_timeout = _env_int("QMAILSQL_FRAME_TIMEOUT", FRAME_TIMEOUT)
        self.task_deadline = _env_int("QMAILSQL_TASK_DEADLINE", TASK_DEADLINE)
        self.per_uid = {}       # unprivileged uid -> open connections
        self.refusal_log = RefusalLog()
        self.db_tasks = TaskQueue(self.n_db)
        self.auth_tasks = TaskQueue(self.n_auth)
        self.recv_buf = bytearray(RECV_SIZE)
        self.recv_view = memoryview(self.recv_buf)
        self.ready_privileged = collections.deque()  # connections with requests to handle
        self.ready_uids = collections.OrderedDict()   # uid -> deque of such connections
        self.done = collections.deque()
        self.filled = collections.deque()  # answered getpw tasks with fills (Daemon.fill)
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
                # requests waiting for their turn: look for events, do not wait for them
                events = ep.poll(0 if self.ready_privileged or self.ready_uids else 1.0)
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
                    if ev & ~EPOLLOUT and conn.events & EPOLLIN and not conn.closed:
                        self.read(conn)
                    if not conn.queued:  # else serve() rearms it, usually to the same
                        self.rearm(conn)
            self.serve()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                self.sweep(now)

    def accept(self):
        """Up to ACCEPT_BURST connections (level-triggered: more come on the next poll)."""
        for _ in range(ACCEPT_BURST):
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
                pid, uid, _gid = UCRED.unpack(sock.getsockopt(SOL_SOCKET, SO_PEERCRED,
                                                              UCRED.size))
            except OSError:
                sock.close()
                continue
            privileged = uid in self.allowed
            if not privileged:
                n = self.per_uid.get(uid, 0)
                if n >= self.max_per_uid:
                    self.refuse(sock, uid, pid, n)
                    continue
                self.per_uid[uid] = n + 1
            commands = DOVECOT_PEER_COMMANDS if uid in self.dovecot_uids else OPEN_COMMANDS
            conn = Conn(sock, uid, pid, privileged, commands, time.monotonic())
            self.conns[conn.fd] = conn
            self.read(conn)  # the request is usually there already
            if not conn.queued:
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
        self.refusal_log(uid, "connections", "refused a connection from uid %d pid %d: it "
                         "has %d open, the limit is %d (QMAILSQL_MAX_CONN_PER_UID)" % (
                             uid, pid, n, self.max_per_uid))

    def read(self, conn):
        """One recv. What came is handled at once when nobody waits for a turn (one
        turn: TURN_FRAMES requests), else queued for serve()."""
        try:
            n = conn.sock.recv_into(self.recv_buf, RECV_SIZE, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not n:
            self.close(conn)
            return
        # one buffer for every recv: no 64 kB malloc each
        if not conn.received(self.recv_view[:n], time.monotonic()):
            return  # after a malformed request: dropped
        if self.ready_privileged or self.ready_uids or \
                self.process(conn, TURN_FRAMES) == TURN_FRAMES:
            self.ready(conn)

    def ready(self, conn):
        """If CONN has requests to take now: queue it for its turn in serve(), and read
        no more of it meanwhile."""
        if not conn.wait_turn():
            return
        if conn.privileged:
            self.ready_privileged.append(conn)
        else:
            waiting = self.ready_uids.get(conn.uid)
            if waiting is None:
                waiting = self.ready_uids[conn.uid] = collections.deque()
            waiting.append(conn)
        self.rearm(conn)

    def serve(self):
        """One round of the loop's work: each privileged connection with requests handles
        up to TURN_FRAMES of them, first; then each unprivileged uid up to
        UID_ROUND_FRAMES, its connections taking turns. Whoever has more left waits for
        the next round, after the next poll: no connection and no uid holds the loop
        for long, and while one is busy the others' requests are read and answered."""
        ready = self.ready_privileged
        for _ in range(len(ready)):
            conn = ready.popleft()
            conn.turn_over()
            if self.process(conn, TURN_FRAMES) == TURN_FRAMES:
                self.ready(conn)  # it may have more: at the back
            self.rearm(conn)
        uids = self.ready_uids
        for _ in range(len(uids)):
            uid, waiting = uids.popitem(last=False)
            budget = UID_ROUND_FRAMES
            while waiting and budget > 0:
                conn = waiting.popleft()
                conn.turn_over()
                turn = min(TURN_FRAMES, budget)
                handled = self.process(conn, turn)
                budget -= max(handled, 1)
                if handled == turn and conn.wait_turn():
                    waiting.append(conn)  # it may have more: again in this uid's round
                self.rearm(conn)
            if waiting:
                uids[uid] = waiting  # at the back: the other uids come first

    def process(self, conn, budget):
        """Answer up to BUDGET complete requests at the front of CONN's input, in order;
        returns how many were taken. Stops early when a worker has one, when the
        client does not read its answers (OUT_LIMIT) or when there are no more."""
        handled = 0
        while handled < budget and conn.may_take():
            try:
                payload = conn.next_request(MAX_PAYLOAD)
            except ValueError as e:  # the Conn takes no more requests
                self.refusal_log(conn.uid, "malformed", "malformed request from uid %d "
                                 "pid %d: %s" % (conn.uid, conn.pid, e))
                self.send(conn, MALFORMED)
                break
            if payload is None:
                break
            handled += 1
            self.dispatch(conn, payload)
        if not conn.closed:
            conn.end_turn(handled, time.monotonic())
        return handled

    def dispatch(self, conn, payload):
        """Do what the Dispatcher (core/_hot.pyx) decides for PAYLOAD: send, log, queue."""
        result = self.dispatcher.dispatch(payload, conn.uid, conn.pid, conn.privileged,
                                          conn.commands, time.monotonic(), self.db_failed_at)
        action = result[0]
        if action == CACHED:
            if self.debug:
                self.debug_log(conn, payload, result[1], "cache")
            self.send(conn, result[1])
        elif action == WORK:
            _, pool, command, args, key, stale = result
            task = Task(conn, payload, command, args, stale, self.cache.generation, self.config)
            task.key = key
            task.queued = time.monotonic()
            conn.handed_off()
            self.busy += 1
            (self.auth_tasks if pool == "auth" else self.db_tasks).put(task)
        elif action == REFUSED:
            _, frame, kind, line, close_after = result
            self.refusal_log(conn.uid, kind, line)
            self.send(conn, frame)
            if close_after:
                conn.malformed()
        elif action == STALE_NOW:
            log(result[2])
            self.send(conn, result[1])
        else:  # INLINE
            getattr(self, result[1])(conn)

    def ping(self, conn):
        self.send(conn, PONG)

    def flush(self, conn):
        self.cache.clear()
        log("cache flushed (uid %d)" % conn.uid)
        self.send(conn, FLUSHED)

    def debug_log(self, conn, payload, frame, how):
        fields = payload.split(b"\0")
        spec = COMMANDS.get(fields[0])
        if spec is not None and spec.pool == "auth":  # never the password
            what = "%s %s" % (fields[0].decode(), shown(fields[1] if len(fields) > 1 else b""))
        else:
            what = " ".join([fields[0].decode("ascii", "replace")] +
                            [shown(f) for f in fields[1:-1]])
        colon = frame.find(b":")
        status = frame[colon + 1:frame.find(b"\0", colon)]
        log("debug: uid %d %s -> %s (%s)" % (conn.uid, what, status.decode("ascii", "replace"),
                                             how))

    def reply(self, task):
        """Called by a worker once TASK.frame is set: the loop sends it (only the loop
        touches a connection's socket and buffers)."""
        self.done.append(task)
        self.wake()

    def fill(self, task):
        """Called by a worker once the answered getpw TASK has its fills (Task.fills):
        the loop caches them."""
        self.filled.append(task)
        self.wake()

    def drain_wake(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        done = self.done
        cache = self.cache
        while self.filled:
            put_fills(cache, self.filled.popleft(), time.monotonic())
        while done:
            task = done.popleft()
            conn = task.conn
            now = time.monotonic()
            conn.answered(now)
            self.busy -= 1
            if self.debug:
                self.debug_log(conn, task.payload, task.frame,
                               "stale" if task.served_stale else "db")
            if not task.served_stale and task.generation == cache.generation:
                cfg = task.config
                ttl, stale = cache_times(task.kind, cfg.cache_ttl, cfg.negative_ttl,
                                         cfg.stale_ttl)
                if ttl > 0:
                    cache.put(task.key, task.frame, now, ttl, stale,
                              PRIVILEGED if conn.privileged else conn.uid)
            if conn.closed:
                continue
            self.send(conn, task.frame)
            if conn.closed:
                continue
            self.ready(conn)
            if self.stopping and not conn.in_flight() and not conn.pending():
                self.close(conn)
                continue
            self.rearm(conn)

    def send(self, conn, frame):
        """Send FRAME, or queue what the socket does not take now (after what is queued)."""
        if not conn.out:
            try:
                n = conn.sock.send(frame, DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.close(conn)
                return
            if n == len(frame):
                return
            frame = frame[n:]
        conn.queue_output(frame)

    def flush_out(self, conn):
        out = conn.out
        while out:
            try:
                n = conn.sock.send(out[0], DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            if not conn.sent(n):
                break
        conn.active(time.monotonic())
        self.ready(conn)  # it reads its answers again: on with its requests

    def rearm(self, conn):
        """Watch CONN for what it needs next (Conn.want_events)."""
        if conn.closed:
            return
        if conn.begin_drain(time.monotonic()):
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(conn)
                return
        want = conn.want_events()
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
        self.conns.pop(conn.fd, None)
        conn.sock.close()  # which takes the fd out of the epoll set
        conn.mark_closed()
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
            why = conn.timed_out(now, frame_timeout, self.stopping)
            if why == "idle":
                self.close(conn)
            elif why == "incomplete":
                self.refusal_log(conn.uid, "incomplete", "closed the connection from uid %d "
                                 "pid %d: its request was still incomplete (%d bytes) %.0fs "
                                 "after its first byte" % (conn.uid, conn.pid, conn.pending(),
                                                           now - conn.started))
                self.close(conn)
        self.refusal_log.sweep(now)

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
            if not conn.in_flight():
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

