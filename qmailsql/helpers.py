"""Where the compiled helpers live once built (`qmailsql helper NAME`)."""
from pathlib import Path

NAMES = ("qmail-getpw", "qmail-local", "checkpassword")
LIBEXEC = Path(__file__).resolve().parent / "libexec"


class HelperMissing(Exception):
    pass


def helper_path(name):
    if name not in NAMES:
        raise HelperMissing("unknown helper %r; the helpers are: %s" % (name, ", ".join(NAMES)))
    path = LIBEXEC / name
    if not path.exists():
        raise HelperMissing("helper %s is not built (%s missing); reinstall with "
                            "`pip install .` from the source tree" % (name, path))
    return path
