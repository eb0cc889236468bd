"""qmailsqld's worker threads: their queues (TaskQueue), the request they answer
(Task), their Directory and Resolver (Worker) and the handlers of each command."""
import collections
import os
import threading
import time

from qmailsql.core import aliases, auth as authmod, db, dovecot, prefetch, quota, resolve
from qmailsql.core.hotpath import (FRESH, HIT, NEGATIVE, NEVER, cache_times, encode_response,
                                   local_cache_key)
from qmailsql.core.resolve import EXIT_NOALIAS, EXIT_TEMP, Refusal, shown
from qmailsql.daemon.commands import TABLE as COMMANDS
from qmailsql.daemon.logs import log

MAX_PAYLOAD = 65536           # csrc/PROTOCOL.md, both directions
TOO_BUSY = encode_response(EXIT_TEMP, b"qmailsqld was too busy")
BATCH_RETRY = 300.0           # seconds after the DB refused a batch before batching again


class TaskQueue:
    """The requests waiting for a worker: privileged peers' first; then, taking turns,
    Dovecot's (a service that asks for many users, so it is not one uid among as many
    as there are mailboxes) and one uid's after another's; at most WORKERS - 1 workers
    at a time on unprivileged peers' requests, so that one is always free for a
    delivery lookup."""

    def __init__(self, workers):
        self.cond = threading.Condition(threading.Lock())
        self.privileged = collections.deque()
        self.service = collections.deque()
        self.by_uid = collections.OrderedDict()  # uid -> deque of its tasks
        self.unprivileged_limit = max(1, workers - 1)
        self.unprivileged_running = 0
        self.service_turn = False  # whether Dovecot's requests have the next turn

    def put(self, task):
        """Queue TASK (None: one worker stops)."""
        with self.cond:
            if task is None or task.conn.privileged:
                self.privileged.append(task)
            elif task.conn.service:
                self.service.append(task)
            else:
                waiting = self.by_uid.get(task.conn.uid)
                if waiting is None:
                    waiting = self.by_uid[task.conn.uid] = collections.deque()
                waiting.append(task)
            self.cond.notify()

    def get(self):
        with self.cond:
            while True:
                if self.privileged:
                    return self.privileged.popleft()
                if (self.service or self.by_uid) and \
                        self.unprivileged_running < self.unprivileged_limit:
                    self.unprivileged_running += 1
                    if self.service and (self.service_turn or not self.by_uid):
                        self.service_turn = False
                        return self.service.popleft()
                    self.service_turn = True
                    uid, waiting = self.by_uid.popitem(last=False)
                    task = waiting.popleft()
                    if waiting:
                        self.by_uid[uid] = waiting  # at the back: the next uid comes first
                    return task
                self.cond.wait()

    def done(self, task):
        """A worker is done with TASK (from get())."""
        if task is not None and not task.conn.privileged:
            with self.cond:
                self.unprivileged_running -= 1
                self.cond.notify()


class Task:
    __slots__ = ("conn", "payload", "key", "command", "args", "stale", "generation", "config",
                 "status", "body", "kind", "frame", "served_stale", "queued", "fills")

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
        self.kind = NEVER  # what the answer is, for the cache (hotpath.cache_times)
        self.frame = b""
        self.served_stale = False
        self.queued = 0.0  # when it was put on a worker queue (monotonic)
        # getpw: a callable that works out, once the answer is sent, the `local` and
        # `localq` answers the wrapper will ask next: [(uid, key, frame)] for the
        # loop's cache (Daemon.fill, put_fills)
        self.fills = None


class WorkerDirectory(db.Directory):
    """A worker's Directory: with --debug, logs every query."""

    debug = False

    def query(self, sql, params=(), write=False):
        if self.debug:
            log("debug: query %s %r" % (" ".join(sql.split()), list(params)[:20]))
        return db.Directory.query(self, sql, params, write)


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
            try:
                self.work(task)
            finally:
                self.tasks.done(task)
        if self.directory is not None:
            self.directory.close()

    def work(self, task):
        """Answer TASK (the answer goes back through Daemon.reply)."""
        waited = time.monotonic() - task.queued
        if waited > self.daemon.task_deadline:
            # its client has given up by now (or soon will): answering it would
            # only delay the requests queued behind it
            self.daemon.refusal_log(task.conn.uid, "queue", "%s %s: waited %.0fs in the "
                                    "queue (uid %d); answered 111 without doing it" % (
                                        task.command.decode("ascii"),
                                        shown(task.args[0]) if task.args else "", waited,
                                        task.conn.uid))
            task.frame = TOO_BUSY
            self.daemon.reply(task)
            return
        if task.config is not self.config:
            self.setup(task.config)
        try:
            self.handle(task)
        except Exception as e:  # a bug must not kill the worker; mail waits
            log("internal error in %s %s: %s: %s" % (task.command.decode("ascii",
                "replace"), shown(task.args[0]) if task.args else "", type(e).__name__, e))
            task.status, task.body, task.frame = EXIT_TEMP, b"internal error in qmailsqld", b""
            task.kind = NEVER
        if not task.frame:
            if len(task.body) > MAX_PAYLOAD - 4:  # the helpers refuse longer answers
                log("%s %s: answer of %d bytes is too long for the protocol" % (
                    task.command.decode("ascii"), shown(task.args[0]), len(task.body)))
                task.status, task.body = EXIT_TEMP, b"answer too long for the protocol"
                task.kind = NEVER
            task.frame = encode_response(task.status, task.body)
        fills, task.fills = task.fills, None
        self.daemon.reply(task)
        if fills is not None:  # after the answer: qmail-lspawn starts the wrapper meanwhile
            try:
                task.fills = fills()
            except Exception as e:  # a bug: the wrapper's request is worked out as before
                log("internal error filling in the local answers for getpw %s: %s: %s" % (
                    shown(task.args[0]), type(e).__name__, e))
                return
            if task.fills:
                self.daemon.fill(task)

    def handle(self, task):
        getattr(self, COMMANDS[task.command].handler)(task)

    def getpw(self, task):
        local = task.args[0]
        batch = db.Batch(self.directory)
        ahead = None
        # reads ahead only when their answers can be kept for the wrapper (cache_ttl)
        planned = self.config.cache_ttl > 0 and \
            time.monotonic() - self.directory.batch_refused_at > BATCH_RETRY
        if planned:
            batch.plan(prefetch.delivery_reads(self.config, local))

            def ahead(target):  # a virtual row's: the rest of the delivery's reads
                if target != local:
                    batch.plan(prefetch.local_reads(self.config, target))
        confirmed = self.directory.confirmations
        try:
            delivery = resolve.Resolver.for_directory(self.config, batch, ahead).getpw(local)
        except Refusal as r:
            db_failed = r.cause == "db"
            if db_failed:
                self.daemon.db_failed_at = time.monotonic()
            if r.code == EXIT_TEMP and db_failed and task.stale is not None:
                log("stale answer for getpw %s: %s" % (shown(local), r.reason))
                task.frame = task.stale
                task.served_stale = True
                task.status = 0
                return
            task.status, task.body = r.code, _bytes(r.message)
            if r.code == EXIT_NOALIAS:
                task.kind = NEGATIVE
            if r.code == EXIT_TEMP:
                log("getpw %s: %s" % (shown(local), r.message))
            return
        task.status, task.body = 0, delivery.fields()
        # the alias user for want of anything else: a new user must not wait long for it
        task.kind = NEGATIVE if delivery.bounce else HIT
        self.daemon.db_failed_at = -1e9  # the DB answers again
        if planned and self.directory.confirmations == confirmed:  # else not the answer's rows
            task.fills = lambda: self.answers_ahead(batch, local, delivery)

    def answers_ahead(self, batch, local, d):
        """The `localq` answer the wrapper will ask for delivery D of LOCAL (it asks
        `local` only of a qmailsqld without quotas), as its uid, from the rows BATCH
        fetched: [(uid, cache key, frame)]; none when
        a read was not fetched or the answer is not a plain one (a refusal is worked out
        again when it is asked, and logged then). The peer's own account: D's uid and
        home are the ones own_account() would find."""
        if d.uid in self.daemon.allowed:  # a privileged peer's answers are keyed otherwise
            return ()
        batch.sealed = True
        try:
            lines, quota_line = self.account_lines(batch, d.user, d.home, local, d.dash,
                                                   d.ext, b"", with_quota=True)
        except (Refusal, db.NotFetched, db.DirectoryUnavailable):
            return ()
        if len(quota_line + lines) > MAX_PAYLOAD - 4:
            return ()
        return [(d.uid, local_cache_key(d.uid, b"localq", d.user, d.home, local, d.dash,
                                        d.ext), encode_response(0, quota_line + lines))]

    def local(self, task, confirm=False):
        """`local`; `localq`: the same with the mailbox's quota line in front
        (quota.answer_line); `local-confirm`: rows only, and no rows would be final (the
        wrapper found no dot-qmail file; stock qmail-local would bounce the mail)."""
        user, homedir, local, dash, ext, domain = task.args
        try:
            if task.conn.privileged or self.own_account(task.conn.uid, *task.args[:5]):
                lines, quota_line = self.account_lines(
                    self.directory, *task.args, confirm=confirm,
                    with_quota=task.command == b"localq")
                body = quota_line + lines
            elif task.command == b"localq":  # not the DB's account: stock, unchanged
                body = quota.answer_line(self.config, quota.Limits())  # and no quota
            else:
                body = b""
        except Refusal as r:
            # a peer without rights never sees row details (Refusal.public)
            task.status = r.code
            task.body = _bytes(r.message if task.conn.privileged else r.public)
            self.log_for(task.conn, "local %s %s: %s" % (shown(user), shown(ext), r.message))
            return
        except db.DirectoryUnavailable as e:
            task.status, task.body = EXIT_TEMP, _bytes(str(e))
            self.log_for(task.conn, "local %s %s: %s" % (shown(user), shown(ext), e))
            return
        task.status, task.body = 0, _bytes(body)
        # local-confirm decides a bounce: always from the DB
        task.kind = NEVER if confirm else FRESH

    def account_lines(self, directory, user, homedir, local, dash, ext, domain,
                      confirm=False, with_quota=False):
        """(dot-qmail lines, quota line or b"") of the `local`/`localq` answer for the
        DB's account USER; the quota line (localq) goes in front of the lines."""
        lines = aliases.delivery_lines(directory, self.config, user, homedir, local, dash,
                                       ext, domain, confirm) or b""
        if not with_quota:
            return lines, b""
        return lines, quota.answer_line(self.config, quota.mailbox_limits(directory, user))

    def local_confirm(self, task):
        self.local(task, confirm=True)

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
        self.daemon.refusal_log(uid, "local", "refused uid %d for local %s: not that "
                                "account's uid and home" % (uid, shown(user)))
        # the peer learns which name was refused, nothing about the account (the log
        # has the uid and the rest)
        raise Refusal(EXIT_TEMP, "qmailsqld refuses local requests for another account "
                      "(%s); its log says why" % shown(user))

    def is_owner(self, uid, name, homedir, directory):
        try:
            acct = self.resolver.account(name, directory.mailboxes([name]), same_cost=True)
        except Refusal as r:  # a misconfigured row: logged, never shown to the peer
            log("local %s from uid %d: %s" % (shown(name.encode("utf-8", "replace")), uid,
                                              r.message))
            return False
        return acct is not None and acct.uid == uid and os.fsencode(acct.home) == homedir

    def log_for(self, conn, message):
        """A line about CONN's request: rate-limited per uid for unprivileged peers."""
        if conn.privileged:
            log(message)
        else:
            self.daemon.refusal_log(conn.uid, "local", message)

    def auth(self, task):
        login, password, remoteip = task.args[:3]
        service = task.args[3] if len(task.args) > 3 else b""
        task.args = (login, b"", remoteip)  # the password goes no further than this
        # logged there
        task.status, task.body = authmod.response(self.directory, self.config, login, password,
                                                  remoteip, log=log, service=service)

    def dovecot_request(self, task):
        args = task.args
        if task.command == b"passdb":
            task.args = (args[0], b"") + tuple(args[2:])  # the password goes no further
        task.status, task.body = dovecot.answer(task.command, args, self.resolver,
                                                self.directory, self.config, log)
        if task.command == b"userdb" and task.status == 0:  # a user found; never a password
            task.kind = FRESH


def put_fills(cache, task, now):
    """Cache the answers TASK (a getpw) worked out ahead (Task.fills), in their uid's
    share, unless the cache was flushed since TASK came; for as long as a `local`
    answer lives but no longer than the getpw answer: the negative answers' time for
    a delivery to the alias user."""
    if task.generation != cache.generation:
        return
    cfg = task.config
    ttl = min(cache_times(kind, cfg.cache_ttl, cfg.negative_ttl, cfg.stale_ttl)[0]
              for kind in (task.kind, FRESH))
    if ttl > 0:
        for uid, key, frame in task.fills:
            cache.put(key, frame, now, ttl, 0, uid)


def _bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return os.fsencode(value)
    return bytes(value)
