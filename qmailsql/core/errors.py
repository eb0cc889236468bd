"""What every resolver says when it gives no delivery answer: qmail's exit codes, the
Refusal carrying one, and how a local part is shown in its message. Imports nothing,
so resolve, virtual, aliases and auth all share it without a circle."""


# exit codes, as qmail-lspawn reads them (qlx.h)
EXIT_OK = 0
EXIT_USAGE = 100
EXIT_TEMP = 111
EXIT_NFS = 115
EXIT_NOALIAS = 116


class Refusal(Exception):
    """No delivery answer: EXIT code for qmail-lspawn and one line saying why.

    PUBLIC (default: the message itself) is what a peer without rights may be told:
    a refusal that quotes a row says which row and what is wrong with it there, and
    leaves the row's values to the log. FIX, what to do about it, ends the message;
    CAUSE says whose trouble it is: "db", "row", "usage", ... or None."""

    def __init__(self, code, message, public=None, fix=None, cause=None):
        self.reason = message  # what went wrong; MESSAGE (logged, sent to qmail) adds the fix
        if fix:
            message = "%s; fix: %s" % (message, fix)
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.public = message if public is None else public
        self.fix = fix
        self.cause = cause


def shown(local, limit=64):
    """LOCAL for a log line: printable, and short even for 10 kB of junk."""
    text = repr(local[:limit])[1:]
    return text + ("...(%d bytes)" % len(local) if len(local) > limit else "")
