"""One client connection of qmailsqld: its framing, its buffers and its state. The loop
(server.Daemon) does the syscalls, epoll and the ready queues, and asks the Conn."""
import collections
import select

from qmailsql.core.hotpath import decode_frame
from qmailsql.daemon.commands import DOVECOT_PEER_COMMANDS, OPEN_COMMANDS

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT

IDLE_TIMEOUT = 60.0           # a connection silent this long (not waiting on us) is closed
DRAIN_TIMEOUT = 5.0           # after a malformed request: read and drop this long at most
OUT_LIMIT = 256 * 1024        # answers queued for a client that does not read: stop reading it
OUT_CHUNK = 16384             # small answers are queued together up to this size
COMPACT_AT = 65536            # handled input is cut off the buffer once it is this long


class Conn:
    """A client connection.

    Input: inbuf[inpos:] (pending()) was received and not taken yet (a bytearray,
    appended to and read at an offset, never copied); `started` is when its first byte
    came (for the frame timeout); `last` is the client's last sign of life (for the
    idle timeout). Output: `out`, answers the socket did not take yet (a deque of
    bytearrays, `outbytes` in all). `events`: the epoll mask the loop registered it for
    (0: not registered).

    Its state is five flags; only these combinations happen:
    - none set: open, reading and taking requests.
    - busy: a worker has its request (handed_off() ... answered()); no more of its
      requests are taken, none of its input is read. Never with close_after.
    - queued: it waits in a ready queue for its turn (wait_turn() ... turn_over());
      not read meanwhile. Never with busy or close_after (unless closed).
    - close_after: it sent a malformed request; the answer to it is its last: no more
      requests are taken and what it sends is dropped. Once that answer is out,
      begin_drain() sets draining.
    - close_after + draining: the write side is shut; it is read only to drop what
      comes until it hangs up (or DRAIN_TIMEOUT); no input or output is kept.
    - closed (with any of the others): final. Socket closed, no input or output kept,
      not in epoll (events 0); a worker or a ready queue that still holds it lets go.
    """
    __slots__ = ("sock", "fd", "uid", "pid", "privileged", "service", "commands", "inbuf", "inpos", "started", "out",
                 "outbytes", "busy", "queued", "closed", "close_after", "draining", "events",
                 "last")

    def __init__(self, sock, uid, pid, privileged, commands=OPEN_COMMANDS, now=0.0):
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = uid
        self.pid = pid
        self.privileged = privileged
        self.commands = commands  # what it may ask when not privileged
        # Dovecot's auth user: a service asking for many users (TaskQueue's own turns)
        self.service = commands is DOVECOT_PEER_COMMANDS
        self.inbuf = bytearray()
        self.inpos = 0
        self.started = 0.0
        self.out = collections.deque()
        self.outbytes = 0
        self.busy = False
        self.queued = False
        self.closed = False
        self.close_after = False
        self.draining = False
        self.events = 0
        self.last = now

    # ---------------------------------------------------------------- input

    def pending(self):
        """Bytes received and not taken yet."""
        return len(self.inbuf) - self.inpos

    def received(self, data, now):
        """DATA came from the client. False: it is dropped (after a malformed request,
        and not counted as activity: DRAIN_TIMEOUT is the most it may stay)."""
        if self.close_after:
            return False
        self.last = now
        if self.inpos == len(self.inbuf):
            self.started = now  # the first byte of a request
        self.inbuf += data
        return True

    def may_take(self):
        """Whether its next request may be taken now: no worker has one, it reads its
        answers (OUT_LIMIT) and its last request was not malformed."""
        return not (self.busy or self.closed or self.close_after or self.outbytes >= OUT_LIMIT)

    def wants_turn(self):
        """Whether it has input that may be taken now."""
        return self.inpos < len(self.inbuf) and self.may_take()

    def next_request(self, limit):
        """The payload of the next complete request (taken off the input), or None when
        it is not complete yet. A malformed or oversized frame: ValueError, and no
        more requests are taken (malformed())."""
        try:
            payload, end = decode_frame(self.inbuf, limit, self.inpos)
        except ValueError:
            self.malformed()
            raise
        if payload is not None:
            self.inpos = end
        return payload

    def malformed(self):
        """Its last request was malformed: the answer to it is its last."""
        self.close_after = True

    def end_turn(self, taken, now):
        """After TAKEN requests in a row: drop what was taken (all of the input when no
        more is taken), and time what is left as the next request."""
        if self.close_after or self.inpos == len(self.inbuf):
            self.inbuf.clear()
            self.inpos = 0
            return
        if self.inpos > COMPACT_AT:
            del self.inbuf[:self.inpos]
            self.inpos = 0
        if taken:
            self.started = now  # what is left is the next request

    # ---------------------------------------------------------------- workers, turns

    def handed_off(self):
        """A worker has its request now."""
        self.busy = True

    def answered(self, now):
        """The worker's answer is back (the loop sends it next)."""
        self.busy = False
        if not self.closed:
            self.last = now
            if self.inpos < len(self.inbuf):
                self.started = now  # not read while a worker had it: not its fault

    def wait_turn(self):
        """Whether it goes to a ready queue now: it has input to take and is not there."""
        if self.queued or not self.wants_turn():
            return False
        self.queued = True
        return True

    def turn_over(self):
        """It has left its ready queue."""
        self.queued = False

    # ---------------------------------------------------------------- output

    def queue_output(self, frame):
        """Keep FRAME (the part the socket did not take) after what is queued."""
        out = self.out
        if out and len(out[-1]) < OUT_CHUNK:
            out[-1] += frame  # many small answers: few chunks, few send() calls
        else:
            out.append(bytearray(frame))
        self.outbytes += len(frame)

    def sent(self, n):
        """The socket took N bytes of out[0]. False: not all of it (stop sending)."""
        self.outbytes -= n
        chunk = self.out[0]
        if n < len(chunk):
            del chunk[:n]
            return False
        self.out.popleft()
        return True

    def active(self, now):
        """The client read its answers: its idle time starts again."""
        self.last = now

    def in_flight(self):
        """Whether a worker has its request or an answer waits to be sent."""
        return self.busy or bool(self.out)

    # ---------------------------------------------------------------- epoll, ending

    def begin_drain(self, now):
        """After a malformed request, once its answer is out: drop the input and start
        draining. True: it just started (the loop shuts the write side now), so the
        client reads the answer before it sees the connection end, not a reset."""
        if not self.close_after or self.draining or self.out:
            return False
        self.draining = True
        self.inbuf.clear()
        self.inpos = 0
        self.last = now
        return True

    def want_events(self):
        """The epoll mask it needs: writable while answers wait; readable unless a
        worker has its request, it waits for its turn or it does not read what it was
        sent (its requests then wait in the kernel, not here); readable while draining."""
        want = EPOLLOUT if self.out else 0
        if self.draining or not (self.busy or self.queued or self.close_after
                                 or self.outbytes >= OUT_LIMIT):
            want |= EPOLLIN
        return want

    def timed_out(self, now, frame_timeout, stopping=False):
        """Why the loop closes it now: "idle" (silent for IDLE_TIMEOUT, DRAIN_TIMEOUT
        after a malformed request, at once when STOPPING and nothing waits to be sent),
        "incomplete" (a request not complete FRAME_TIMEOUT after its first byte) or
        None. Never while a worker has its request or it waits for its turn."""
        if self.busy or self.closed or self.queued:
            return None
        if stopping:
            idle = 0.0
        elif self.close_after:
            idle = DRAIN_TIMEOUT
        else:
            idle = IDLE_TIMEOUT
        if now - self.last > idle and not (stopping and self.out):
            return "idle"
        if self.pending() and not self.close_after and now - self.started > frame_timeout:
            return "incomplete"
        return None

    def mark_closed(self):
        """The loop closed its socket (which took it out of epoll): keep nothing."""
        self.closed = True
        self.events = 0
        self.out.clear()
        self.outbytes = 0
        self.inbuf.clear()
        self.inpos = 0
