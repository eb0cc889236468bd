"""Where the compiled helpers live once built (`qmailsql helper NAME`)."""
import os
from pathlib import Path

# the compiled helpers; setup.py keeps its own copy (it runs before the package is
# importable), held equal by tests/test_api.py
NAMES = ("qmail-getpw", "qmail-local", "checkpassword")
# built by setup.py at the top of the package, beside conf-qmail
PACKAGE_DIR = Path(__file__).resolve().parent.parent
LIBEXEC = PACKAGE_DIR / "libexec"
# shipped as they are, not built: Dovecot's passdb/userdb (qmailsql/core/dovecot.py)
SCRIPTS = {"dovecot-auth.lua": PACKAGE_DIR / "dovecot-auth.lua"}
# what `qmailsql install` puts into QMAIL/bin: (helper, its name there, whether it
# replaces a stock qmail program, kept as NAME.orig)
INSTALLED = (("qmail-getpw", "qmail-getpw", True), ("qmail-local", "qmail-local", True),
             ("checkpassword", "qmailsql-checkpassword", False),
             ("dovecot-auth.lua", "qmailsql-dovecot-auth.lua", False))


class HelperMissing(Exception):
    pass


def helper_path(name):
    if name in SCRIPTS:
        return SCRIPTS[name]
    if name not in NAMES:
        raise HelperMissing("unknown helper %r; the helpers are: %s" % (
            name, ", ".join(NAMES + tuple(SCRIPTS))))
    path = LIBEXEC / name
    try:
        path.stat()
    except FileNotFoundError:
        raise HelperMissing("helper %s is not built (%s missing); reinstall with "
                            "`pip install .` from the source tree" % (name, path))
    except OSError as e:  # e.g. a package under a home this uid may not enter
        raise HelperMissing("helper %s (%s) cannot be reached by uid %d: %s; install the "
                            "package where this user can read it" % (name, path, os.getuid(),
                                                                     e.strerror))
    return path
