"""Where the compiled helpers live once built (`qmailsql helper NAME`)."""
from pathlib import Path

NAMES = ("qmail-getpw", "qmail-local", "checkpassword")
LIBEXEC = Path(__file__).resolve().parent / "libexec"
# shipped as they are, not built: Dovecot's passdb/userdb (qmailsql/dovecot.py)
SCRIPTS = {"dovecot-auth.lua": Path(__file__).resolve().parent / "dovecot-auth.lua"}


class HelperMissing(Exception):
    pass


def helper_path(name):
    if name in SCRIPTS:
        return SCRIPTS[name]
    if name not in NAMES:
        raise HelperMissing("unknown helper %r; the helpers are: %s" % (
            name, ", ".join(NAMES + tuple(SCRIPTS))))
    path = LIBEXEC / name
    if not path.exists():
        raise HelperMissing("helper %s is not built (%s missing); reinstall with "
                            "`pip install .` from the source tree" % (name, path))
    return path
