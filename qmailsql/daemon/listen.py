"""qmailsqld's socket: is another daemon there (probe), listen on it, and the pidfile."""
import os
import socket
import stat


class StartError(Exception):
    """The daemon cannot start; the message says why (exit 111)."""


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
