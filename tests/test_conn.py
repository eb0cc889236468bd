"""qmailsql.daemon.conn.Conn alone: its framing and its state transitions, on a
socketpair that no test reads or writes (the Conn does no syscalls)."""
import socket

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qmailsql.core.hotpath import encode_frame
from qmailsql.daemon import conn as connmod
from qmailsql.daemon.conn import EPOLLIN, EPOLLOUT, OUT_CHUNK, OUT_LIMIT, Conn

LIMIT = 65536


@pytest.fixture
def conn():
    a, b = socket.socketpair()
    c = Conn(a, 1000, 42, False, now=100.0)
    yield c
    a.close()
    b.close()


def combination_problems(c):
    """What in C's state breaks the combinations Conn's docstring allows."""
    problems = []
    if c.outbytes != sum(len(chunk) for chunk in c.out):
        problems.append("outbytes %d is not what out holds" % c.outbytes)
    if c.inpos > len(c.inbuf):
        problems.append("inpos past the input")
    if c.busy and c.close_after:
        problems.append("busy with close_after")
    if c.queued and not c.closed and (c.busy or c.close_after):
        problems.append("queued while busy or close_after")
    if c.draining and not (c.close_after and not c.out and not c.pending()):
        problems.append("draining with output, input or no close_after")
    if c.closed and (c.out or c.outbytes or c.pending() or c.events):
        problems.append("closed but keeps something")
    return problems


def test_a_request_in_pieces_is_timed_from_its_first_byte(conn):
    frame = encode_frame([b"ping"])
    assert conn.received(frame[:3], 101.0) and conn.started == 101.0 and conn.last == 101.0
    assert conn.next_request(LIMIT) is None and conn.pending() == 3
    assert conn.received(frame[3:], 105.0) and conn.started == 101.0 and conn.last == 105.0
    assert conn.wants_turn()
    assert conn.next_request(LIMIT) == b"ping\0" and conn.pending() == 0
    conn.end_turn(1, 106.0)
    assert conn.inbuf == b"" and conn.inpos == 0 and not conn.wants_turn()
    assert conn.received(frame, 110.0) and conn.started == 110.0  # the next request's first byte
    assert not combination_problems(conn)


def test_what_is_left_after_a_turn_is_the_next_request(conn):
    one, two = encode_frame([b"ping"]), encode_frame([b"flush"])
    conn.received(one + two[:2], 100.0)
    assert conn.next_request(LIMIT) == b"ping\0" and conn.next_request(LIMIT) is None
    conn.end_turn(1, 103.0)
    assert conn.started == 103.0 and conn.pending() == 2
    conn.end_turn(0, 107.0)  # nothing taken: the same request as before
    assert conn.started == 103.0


def test_handled_input_is_cut_off_once_long(conn):
    c = conn
    frame = encode_frame([b"x" * 1000])
    c.received(frame * 70 + frame[:5], 100.0)
    for _ in range(66):
        assert c.next_request(LIMIT) is not None
    c.end_turn(66, 101.0)
    assert c.inpos == 0 and len(c.inbuf) == 4 * len(frame) + 5  # past COMPACT_AT: cut
    assert len(frame) * 66 > connmod.COMPACT_AT
    assert c.next_request(LIMIT) == b"x" * 1000 + b"\0"


def test_a_malformed_frame_ends_the_requests_and_drains_after_the_answer(conn):
    conn.received(b"12x:junk", 100.0)
    with pytest.raises(ValueError):
        conn.next_request(LIMIT)
    assert conn.close_after and not conn.may_take() and not conn.wants_turn()
    assert not conn.wait_turn() and not conn.queued
    assert not conn.received(encode_frame([b"ping"]), 101.0)  # dropped
    assert conn.last == 100.0  # dropped bytes are no activity (DRAIN_TIMEOUT is "at most")
    conn.end_turn(0, 101.0)
    assert conn.pending() == 0
    conn.queue_output(b"the answer")
    assert conn.want_events() == EPOLLOUT  # sends the answer, reads nothing
    assert not conn.begin_drain(102.0)  # not while the answer waits
    assert conn.sent(len(b"the answer")) and not conn.out
    assert conn.begin_drain(103.0) and conn.draining and conn.last == 103.0
    assert not conn.begin_drain(104.0)  # once
    assert conn.want_events() == EPOLLIN  # read only to drop
    assert conn.timed_out(103.0 + connmod.DRAIN_TIMEOUT + 1, 10.0) == "idle"
    assert not combination_problems(conn)


def test_a_request_with_a_worker(conn):
    conn.received(encode_frame([b"getpw", b"a"]) + b"5:", 100.0)
    assert conn.next_request(LIMIT) == b"getpw\0a\0"
    conn.handed_off()
    assert conn.busy and not conn.may_take() and not conn.wait_turn()
    assert conn.want_events() == 0  # its next request waits in the kernel
    assert conn.timed_out(100.0 + 10 * connmod.IDLE_TIMEOUT, 10.0) is None
    assert conn.in_flight()
    conn.end_turn(1, 100.0)
    conn.answered(130.0)
    assert not conn.busy and conn.last == 130.0 and conn.started == 130.0
    assert conn.wait_turn() and conn.queued
    assert not conn.wait_turn()  # once in a queue
    assert conn.want_events() == 0
    conn.turn_over()
    assert not conn.queued and conn.want_events() == EPOLLIN
    assert not combination_problems(conn)


def test_an_answer_for_a_closed_conn_touches_nothing(conn):
    conn.handed_off()
    conn.mark_closed()
    conn.answered(200.0)
    assert not conn.busy and conn.last == 100.0 and not conn.wants_turn()
    assert not combination_problems(conn)


def test_output_is_queued_in_chunks_and_stops_the_reading_at_out_limit(conn):
    conn.queue_output(b"a" * 10)
    conn.queue_output(b"b" * 10)
    assert len(conn.out) == 1 and conn.outbytes == 20  # small answers: one chunk
    conn.queue_output(b"c" * OUT_CHUNK)
    conn.queue_output(b"d")
    assert [len(c) for c in conn.out] == [20 + OUT_CHUNK, 1] and conn.outbytes == 21 + OUT_CHUNK
    assert not conn.sent(5) and conn.out[0][:1] == b"a" and conn.outbytes == 16 + OUT_CHUNK
    assert conn.sent(15 + OUT_CHUNK) and list(conn.out) == [b"d"]
    assert conn.want_events() == EPOLLIN | EPOLLOUT and conn.in_flight()
    conn.received(encode_frame([b"ping"]), 101.0)
    while conn.outbytes < OUT_LIMIT:
        conn.queue_output(b"e" * OUT_CHUNK)
    assert not conn.may_take() and not conn.wait_turn()
    assert conn.want_events() == EPOLLOUT  # not read while it does not read
    while conn.outbytes >= OUT_LIMIT:
        conn.sent(len(conn.out[0]))
    assert conn.wants_turn() and conn.want_events() == EPOLLIN | EPOLLOUT
    conn.active(150.0)
    assert conn.last == 150.0
    assert not combination_problems(conn)


def test_timeouts(conn):
    assert conn.timed_out(100.0 + connmod.IDLE_TIMEOUT - 1, 10.0) is None
    assert conn.timed_out(100.0 + connmod.IDLE_TIMEOUT + 1, 10.0) == "idle"
    conn.received(b"5:pi", 100.0)
    assert conn.timed_out(109.0, 10.0) is None
    assert conn.timed_out(111.0, 10.0) == "incomplete"
    assert conn.timed_out(100.5, 10.0, stopping=True) == "idle"  # stopping: at once
    conn.queue_output(b"answer")
    assert conn.timed_out(100.5, 10.0, stopping=True) is None  # ... once its answers are out
    conn.sent(6)
    conn.received(b"ng\0,", 101.0)
    assert conn.wait_turn()
    assert conn.timed_out(1000.0, 10.0) is None  # waiting for its turn is not its fault


def test_closed_keeps_nothing(conn):
    conn.received(encode_frame([b"ping"]) + b"3:", 100.0)
    conn.queue_output(b"x" * 100)
    conn.events = EPOLLIN | EPOLLOUT
    conn.mark_closed()
    assert conn.closed and not conn.out and conn.outbytes == 0 and conn.pending() == 0
    assert conn.events == 0 and not conn.may_take() and not conn.wait_turn()
    assert conn.timed_out(1e9, 10.0) is None
    assert not combination_problems(conn)


class ConnMachine(RuleBasedStateMachine):
    """The Conn driven the way the loop drives it, in any order the loop can: after
    every step only the combinations of Conn's docstring are there."""

    def __init__(self):
        super().__init__()
        self.a, self.b = socket.socketpair()
        self.c = Conn(self.a, 1000, 42, False, now=0.0)
        self.now = 0.0

    def teardown(self):
        self.a.close()
        self.b.close()

    def tick(self):
        self.now += 1.0
        return self.now

    @precondition(lambda self: not self.c.closed and self.c.want_events() & EPOLLIN)
    @rule(data=st.sampled_from([encode_frame([b"ping"]), encode_frame([b"getpw", b"a"]),
                                b"5:pi", b"ng\0,", b"x:", b"1", encode_frame([b"q"]) * 3]))
    def read(self, data):
        self.c.received(data, self.tick())

    @precondition(lambda self: self.c.may_take() and not self.c.queued)
    @rule(outcome=st.sampled_from(["inline", "worker", "bad fields"]))
    def take(self, outcome):
        try:
            payload = self.c.next_request(LIMIT)
        except ValueError:
            self.c.queue_output(b"malformed")
        else:
            if payload is not None:
                if outcome == "inline":
                    self.c.queue_output(b"7:0\0pong,")
                elif outcome == "worker":
                    self.c.handed_off()
                else:  # dispatch: fields that do not split
                    self.c.queue_output(b"malformed")
                    self.c.malformed()
        if not self.c.closed:
            self.c.end_turn(1, self.tick())

    @rule()
    def ready(self):
        self.c.wait_turn()

    @precondition(lambda self: self.c.queued)
    @rule()
    def turn(self):
        self.c.turn_over()

    @precondition(lambda self: self.c.busy)
    @rule(size=st.integers(0, 3 * OUT_CHUNK))
    def answered(self, size):
        self.c.answered(self.tick())
        if not self.c.closed:
            self.c.queue_output(b"a" * size)

    @precondition(lambda self: self.c.out)
    @rule(part=st.floats(0, 1))
    def sent(self, part):
        self.c.sent(int(len(self.c.out[0]) * part))
        self.c.active(self.tick())

    @precondition(lambda self: not self.c.closed)
    @rule()
    def rearm(self):
        self.c.begin_drain(self.tick())
        self.c.events = self.c.want_events()

    @rule()
    def close(self):
        self.c.mark_closed()

    @invariant()
    def only_the_documented_combinations(self):
        assert combination_problems(self.c) == []

    @invariant()
    def watched_for_what_it_needs(self):
        c = self.c
        if c.closed:
            return
        want = c.want_events()
        assert bool(want & EPOLLOUT) == bool(c.out)
        if c.busy or c.queued:  # its next request waits in the kernel
            assert not want & EPOLLIN
        if c.close_after:  # read only once the answer is out, to drop what comes
            assert bool(want & EPOLLIN) == c.draining


TestConnMachine = ConnMachine.TestCase
TestConnMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_bytes_trickled_after_a_malformed_request_do_not_hold_the_connection(conn):
    """DRAIN_TIMEOUT is "at most": what a client still sends after its malformed request
    is dropped and does not count as activity, else it could stay connected forever."""
    conn.received(b"garbage", 100.0)
    conn.malformed()
    for t in (101.0, 103.0, 104.5):
        assert conn.received(b"x", t) is False
    assert conn.last == 100.0
    assert conn.timed_out(100.0 + connmod.DRAIN_TIMEOUT + 0.1, 10.0) == "idle"
