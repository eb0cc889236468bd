"""One client connection of qmailsqld (only the loop, server.Daemon, touches it)."""
import collections

from qmailsql.daemon.commands import OPEN_COMMANDS


class Conn:
    # inbuf[inpos:]: bytes received and not handled yet (a bytearray, appended to, read
    # at an offset: never copied); started: when the first of them came, for
    # FRAME_TIMEOUT; out: answers not sent yet (a deque of bytearrays, outbytes in
    # all); queued: waiting for its turn in Daemon.serve() with requests to handle
    __slots__ = ("sock", "fd", "uid", "pid", "privileged", "commands", "inbuf", "inpos", "started", "out",
                 "outbytes", "busy", "queued", "closed", "close_after", "draining", "events",
                 "last")

    def __init__(self, sock, uid, pid, privileged, commands=OPEN_COMMANDS):
        self.sock = sock
        self.fd = sock.fileno()
        self.uid = uid
        self.pid = pid
        self.privileged = privileged
        self.commands = commands  # what it may ask when not privileged
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
        self.last = 0.0

    def pending(self):
        """Bytes received and not handled yet."""
        return len(self.inbuf) - self.inpos
