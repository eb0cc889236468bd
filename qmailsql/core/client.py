"""Talking to qmailsqld from Python (admin commands, tests): one request, one answer.

The compiled helpers in csrc/ do the same in C; the protocol is csrc/PROTOCOL.md.
"""
import socket

from qmailsql.core import config as configmod
from qmailsql.core.hotpath import decode_frame, encode_frame

MAX_PAYLOAD = 65536


class Connection:
    """One connection to the qmailsqld listening at PATH, for requests in sequence
    (the daemon answers each before it reads the next). OSError if it cannot be
    reached or does not answer within TIMEOUT seconds."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise

    def call(self, fields):
        """One request, FIELDS bytes (command first): (status, body). ValueError for a
        malformed answer."""
        self.sock.sendall(encode_frame(list(fields)))
        buf = b""
        while True:
            chunk = self.sock.recv(MAX_PAYLOAD + 16)
            if not chunk:
                raise ValueError("qmailsqld closed the connection without a complete answer")
            buf += chunk
            payload, _ = decode_frame(buf, MAX_PAYLOAD)
            if payload is not None:
                break
        status, sep, body = payload.partition(b"\0")
        if not sep or not status.isdigit() or len(status) > 3:
            raise ValueError("malformed answer from qmailsqld")
        return int(status), body

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(path, fields, timeout=10.0):
    """One request to the qmailsqld listening at PATH: (status, body).

    FIELDS are bytes (command first). OSError if the daemon cannot be reached or
    does not answer in TIMEOUT seconds; ValueError for a malformed answer."""
    with Connection(path, timeout) as conn:
        return conn.call(fields)


def flush(path=None, timeout=10.0):
    """Drop the cache of the qmailsqld at PATH (default: the configured socket), so
    admin changes are seen at once. (status, body); OSError if it is not running."""
    if path is None:
        path = configmod.socket_path(configmod.qmail_dir())
    return call(path, [b"flush"], timeout)
