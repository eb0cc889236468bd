"""qmailsqld's log: one line per event on stderr, no timestamps (multilog adds them)."""
import os


def log(message):
    """One line on stderr; a single write(2), so lines from threads never interleave."""
    data = ("qmailsqld: %s\n" % message).encode("utf-8", "backslashreplace")
    try:
        os.write(2, data)
    except OSError:
        pass
