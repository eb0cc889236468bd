"""The compiled helpers in QMAIL/bin: present, this build's, executable; the stock
qmail-local beside the wrapper; conf-qmail compiled for this qmail."""
import os

from qmailsql.core import config as configmod
from qmailsql.core.helpers import HelperMissing, helper_path

from .common import mode, q

DAEMON_MARKER = b"QMAILSQL_SOCKET"  # every compiled helper contains this string


def check_helpers(ctx):
    bindir = os.path.join(ctx.qmail_dir, "bin")
    install = "qmailsql install --qmail-dir %s" % q(ctx.qmail_dir)
    state = {}
    for name in ("qmail-getpw", "qmail-local"):
        try:
            built = helper_path(name).read_bytes()
        except HelperMissing as e:
            ctx.add("helper-missing", "error", str(e),
                     "pip install . (from the qmailsql source tree), then " + install)
            continue
        except OSError as e:
            ctx.no_access(e.filename, e, "whether bin/%s is this build's" % name)
            continue
        path = os.path.join(bindir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            data = st = None
        except PermissionError as e:
            ctx.no_access(path, e, "the installed %s" % name)
            continue
        except OSError as e:
            ctx.add("helper-missing", "error", "%s cannot be read: %s" % (path, e.strerror),
                     install)
            continue
        state[name] = (path, built, data, st)
    # `qmailsql install` refuses while a stock program sits beside an old .orig: every
    # such program must be moved over its .orig first (a newer stock replaces the older)
    moves = ["mv %s %s" % (q(path), q(path + ".orig"))
             for path, built, data, st in state.values()
             if data is not None and data != built and DAEMON_MARKER not in data
             and os.path.lexists(path + ".orig")]
    full_install = " && ".join(moves + [install])
    for name, (path, built, data, st) in state.items():
        orig = path + ".orig"
        if data is None:
            ctx.add("helper-missing", "error", "%s is missing: qmail-lspawn cannot run it "
                     "(\"Temporary failure in qmail-lspawn\")" % path, full_install)
        elif data != built:
            if DAEMON_MARKER in data:
                ctx.add("helper-outdated", "error", "%s is an older qmailsql helper, not "
                         "this build's" % path, full_install)
            else:
                ctx.add("helper-overwritten", "error", "%s is not qmailsql's helper (a qmail "
                         "reinstall or upgrade put the stock program back): users come "
                         "from %s" % (path, "/etc/passwd only" if name == "qmail-getpw"
                                      else "dot-qmail files only, alias rows are ignored, "
                                      "and qmail-getpw's deferrals are logged as `Unable "
                                      "to switch to /dev/null/qmailsql-deferral/REASON`"),
                         full_install)
        elif not st.st_mode & 0o111:
            ctx.add("helper-missing", "error", "%s is not executable (%s)"
                     % (path, mode(st)), "chmod 755 %s" % q(path))
        if name == "qmail-local":
            try:
                with open(orig, "rb") as f:
                    odata = f.read(1 << 20)
                    ost = os.fstat(f.fileno())
            except FileNotFoundError:
                fix = ("copy the stock qmail-local from your qmail build: cp qmail-local %s"
                       % q(orig))
                if data is not None and data != built and DAEMON_MARKER not in data:
                    fix = full_install + "  (keeps the stock program as %s)" % orig
                ctx.add("qmail-local-orig", "error", "%s is missing: the qmail-local "
                         "wrapper has no stock qmail-local to run, every delivery is "
                         "deferred" % orig, fix)
                continue
            except PermissionError as e:
                ctx.no_access(orig, e, "the stock qmail-local")
                continue
            except OSError as e:
                ctx.add("qmail-local-orig", "error", "%s cannot be read: %s"
                         % (orig, e.strerror), "chmod 755 %s" % q(orig))
                continue
            if DAEMON_MARKER in odata:
                ctx.add("qmail-local-orig", "error", "%s is qmailsql's wrapper, not the "
                         "stock qmail-local: the wrapper would run itself" % orig,
                         "cp qmail-local %s   (the stock program, from your qmail build)"
                         % q(orig))
            elif not ost.st_mode & 0o111:
                ctx.add("qmail-local-orig", "error", "%s is not executable (%s)"
                         % (orig, mode(ost)), "chmod 755 %s" % q(orig))
    check_compiled_dir(ctx, state)
    # checkpassword is optional; if an installed copy is ours it must be this build
    try:
        built = helper_path("checkpassword").read_bytes()
    except HelperMissing:
        return
    except OSError as e:
        ctx.no_access(e.filename, e, "whether the installed checkpassword is this build's")
        return
    for target in ("qmailsql-checkpassword", "checkpassword"):
        path = os.path.join(bindir, target)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            ctx.no_access(path, e, "the installed checkpassword")
            continue
        if data != built and DAEMON_MARKER in data:
            ctx.add("helper-outdated", "warning", "%s is an older qmailsql checkpassword, "
                     "not this build's" % path,
                     install if target == "qmailsql-checkpassword" else
                     "cp \"$(qmailsql helper checkpassword)\" %s" % q(path))


def check_compiled_dir(ctx, state):
    """The helpers find the daemon through conf-qmail, compiled in (FAQ: \"make sure
    that conf-qmail points to the correct qmail install directory\")."""
    if os.environ.get("QMAILSQL_SOCKET"):
        return  # qmail's environment may set it as well; nothing to compare
    compiled = configmod.compiled_qmail_dir()
    if os.path.realpath(compiled) == os.path.realpath(ctx.qmail_dir):
        return
    if not any(data is not None and DAEMON_MARKER in data
               for _, _, data, _ in state.values()):
        return
    ctx.add("helper-qmail-dir", "error",
             "the helpers were built with conf-qmail %s but are installed in %s: they look "
             "for qmailsqld at %s/qmailsql/qmailsqld.sock and defer every delivery"
             % (compiled, ctx.qmail_dir, compiled),
             "echo %s > conf-qmail in the qmailsql source tree, pip install . and "
             "qmailsql install --qmail-dir %s (or set QMAILSQL_SOCKET in qmail's "
             "environment)" % (q(ctx.qmail_dir), q(ctx.qmail_dir)))
