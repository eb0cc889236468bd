"""Dot-qmail lines kept in the `alias` table (SPEC section 5).

For qmail-local's (user, dash, ext) the rows are searched in qmail-local's own order
(qmail-local.c qmesearch(); level_of()):

  dash '-':  `ext`, then `prefix-default` for every prefix of ext ending in '-', longest
             first, then `default` (ext '' has no row of its own: stock qmail-local
             would read `.qmail-`, which the table cannot name; it goes to `default`)
  dash '':   the user's plain `.qmail`: rows with alias = ''

Only the first level that has rows is used, as qmail-local uses the first file found.
The `alias` column is compared as qmail-local compares file names: ASCII case ignored
and '.' equal to ':' (qmail-local lower-cases ext and turns '.' into ':' before it looks
for `.qmail-ext`), so `John.Smith`, `john.smith` and `john:smith` are one level.
Trailing spaces are not ignored (the DB collation would pad them; Python filters).

A row is one line: alias_username `.`, `/` or `|` alone -> that character + alias_host
(`./Maildir/`, `/home/iain/Mailbox`, `|prog`); anything else -> the forward
`&alias_username@alias_host` (`&alias_username` when alias_host is blank). Rows that
would make a line qmail-local misreads (both columns blank, a delivery character with
no target, a newline or NUL) are refused with exit 111: the mail stays queued while the
row is fixed (the original patch ate such mail).

The wrapper hands the lines to stock qmail-local as aliasempty with dash empty, so
qmail-local sets EXT..EXT4 from an ext that is not the address's own and no DEFAULT;
program lines are therefore rewritten to set EXT, EXT2, EXT3, EXT4 and (for a
`-default` level) DEFAULT the way qmail-local would have, with single-quote shell
quoting:

  |EXT='foo-bar'; EXT2='bar'; EXT3=''; EXT4=''; DEFAULT='bar'; export EXT EXT2 EXT3 EXT4 DEFAULT; prog

The ext it hands over is empty, unless owner files make a difference: stock
qmail-local sends forwards from LOCAL-owner@HOST (or LOCAL-owner-@HOST-@[]) when
~/.qmail{dash}{ext}-owner (and -owner-default) exist, and with ext empty it would look
at ~/.qmail-owner instead. When the two differ, the wrapper hands it ext = dash + ext
(dash still empty), so it finds the address's own owner files: the envelope sender is
stock's (`wrapper_ext`).

Files versus rows: when the table has rows for a user at any level, those rows are
delivered and dot-qmail files at more specific levels are not consulted. The wrapper
defers with 111 when a file stock qmail-local would read instead of the lines exists
(~/.qmail or ~/.qmaildefault; with an owner-file difference, the address's own search
path: ~/.qmail-ext, ~/.qmail-default, ...); `shadowing_file()` says which, for the
doctor. With no rows, stock qmail-local runs unchanged and reads the files as usual.
"""
import os

from qmailsql.core import virtual
from qmailsql.core.db import DirectoryUnavailable, Part, select
from qmailsql.core.problems import Problem, sql_str
from qmailsql.core.problems import blank as _blank
from qmailsql.core.resolve import ALIAS_USER, EXIT_TEMP, Refusal, shown, too_long

SPECIAL = (".", "/", "|")


def _b(value):
    if value is None:
        return b""
    return value if isinstance(value, bytes) else os.fsencode(value)


def lower_ascii(b):
    return bytes(c + 32 if 65 <= c <= 90 else c for c in b)


def safe(b):
    """qmail-local's safeext: ASCII lower case, '.' -> ':'."""
    return lower_ascii(b).replace(b".", b":")


def level_of(dash, ext, name):
    """Where the alias level NAME comes in qmail-local's search for (DASH, EXT), all
    bytes: (rank, start of DEFAULT in EXT or None), rank 0 searched first; None if
    qmail-local never looks for it. Linear in the lengths: nothing is copied per '-'.

    dash '-': EXT itself (rank 0), then each prefix of EXT ending in '-' (and the empty
    prefix) + `default`, longest first; DEFAULT is the rest of EXT. dash '': only ''.
    NAME and EXT are compared as qmail-local compares file names (safe()).
    """
    dash, ext, name = _b(dash), _b(ext), safe(_b(name))
    if not dash:
        return (0, None) if name == b"" else None
    sx = safe(ext)
    if ext and name == sx:  # ext itself; when it ends in default, DEFAULT is that word
        return 0, (len(ext) - 7 if sx.endswith(b"default") else None)
    if not name.endswith(b"default"):
        return None
    i = len(name) - 7  # the prefix's length
    if i > len(sx) or (i and name[i - 1] != 0x2D) or sx[:i] != name[:i]:
        return None
    return 1 + len(sx) - i, i


def search_path(dash, ext):
    """The dot-qmail file names stock qmail-local looks for, in its order (qmesearch),
    for DASH and EXT (bytes): .qmail{dash}{ext}, then .qmail{dash}{prefix}default for
    each prefix of ext that is empty or ends in '-', longest first."""
    sx = safe(_b(ext))
    dash = _b(dash)
    return [b".qmail" + dash + sx] + [b".qmail" + dash + sx[:i] + b"default"
                                       for i in range(len(sx), -1, -1)
                                       if i == 0 or sx[i - 1:i] == b"-"]


def _owner_files(home, name):
    """How many of NAME-owner, NAME-owner-default exist in HOME as stock qmail-local
    counts them (0, 1 or 2)."""
    if not os.path.exists(os.path.join(home, name + b"-owner")):
        return 0
    return 1 + os.path.exists(os.path.join(home, name + b"-owner-default"))


def wrapper_ext(home, dash, ext):
    """The ext the qmail-local wrapper hands stock qmail-local with the rows' lines (dash
    empty), for a sender stock would replace: b"" unless the owner files of the address
    (.qmail{dash}{ext}) differ from those of .qmail, then dash + ext. The C in
    csrc/qmail-local.c makes the same decision."""
    home, dash, ext = _b(home), _b(dash), _b(ext)
    if _owner_files(home, b".qmail" + dash + safe(ext)) != _owner_files(home, b".qmail"):
        return dash + ext
    return b""


def shadowing_file(home, dash, ext):
    """(path, owner file or None) of the dot-qmail file that makes the wrapper defer the
    rows' delivery for (DASH, EXT) in HOME, or None. The owner file is named when it is
    what made the wrapper hand stock qmail-local the address's own extension."""
    home = _b(home)
    own = wrapper_ext(home, dash, ext)
    for name in search_path(b"", own):
        path = os.path.join(home, name)
        if os.path.lexists(path):
            if not own:
                return path, None
            owner = os.path.join(home, b".qmail" + _b(dash) + safe(_b(ext)) + b"-owner")
            return path, owner if os.path.exists(owner) else os.path.join(home,
                                                                           b".qmail-owner")
    return None


def fetch(directory, user, ext_names, defaults):
    """alias rows (id, username, alias, alias_username, alias_host) of USER whose alias
    is one of EXT_NAMES (text) or, with DEFAULTS, ends in `default`, in id order; the
    caller picks the level. The statement is as long as the extension, never longer:
    the `-default` levels are not listed one by one."""
    return sorted(select(directory, rows_read(user, ext_names, defaults)),
                  key=lambda r: r[0])


def rows_read(user, ext_names, defaults):
    """fetch()'s read (db.Part), in no order."""
    cond = ["alias IN (" + ",".join(["%s"] * len(ext_names)) + ")"] if ext_names else []
    params = [user] + list(ext_names)
    if defaults:
        cond.append("alias LIKE %s")
        params.append("%default")
    return (Part("id, username, alias, alias_username, alias_host", 5, "alias",
                 "username=%s AND (" + " OR ".join(cond) + ")", tuple(params)),)


def fetch_args(user, dash, ext):
    """fetch()'s (user, ext names, defaults) for lines_for(USER, DASH, EXT), all bytes,
    or None when USER cannot have rows (not UTF-8)."""
    try:
        user_t = user.decode("utf-8")
    except UnicodeDecodeError:
        return None
    wanted = (ext, safe(ext)) if dash else (b"",)
    names = []
    for variant in wanted:  # the DB collation folds case; '.' and ':' it does not
        try:
            t = variant.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if t not in names:
            names.append(t)
    return user_t, names, bool(dash)


def _row_text(row):
    return "alias row id=%s (username=%r, alias=%r, alias_username=%r, alias_host=%r)" % (
        row[0], row[1], row[2], row[3], row[4])


def misconfigured(row, problem, fix):
    """The Refusal for a row qmail-local would misread: the log gets the row and the
    fix, the peer which row and what is wrong (resolve.Refusal.public)."""
    return Refusal(EXIT_TEMP, "misconfigured %s: %s" % (_row_text(row), problem),
                   "misconfigured alias row id=%s: %s (see qmailsqld's log)" % (row[0], problem),
                   fix="%s WHERE id=%s" % (fix, row[0]), cause="row")


def shell_quote(b):
    return b"'" + b.replace(b"'", b"'\\''") + b"'"


def ext_env(ext, default):
    """The shell prefix that sets EXT..EXT4 (and DEFAULT) as qmail-local would."""
    values = [ext]
    x = ext
    for _ in range(3):
        i = x.find(b"-")
        x = x[i + 1:] if i >= 0 else b""
        values.append(x)
    names = [b"EXT", b"EXT2", b"EXT3", b"EXT4"]
    if default is not None:
        names.append(b"DEFAULT")
        values.append(default)
    return (b"".join(n + b"=" + shell_quote(v) + b"; " for n, v in zip(names, values))
            + b"export " + b" ".join(names) + b"; ")


def line_for(row, ext, default):
    """The dot-qmail line (bytes, with "\\n") for one alias row; Refusal for a bad row."""
    au = row[3] if row[3] is not None else ""
    ah = row[4] if row[4] is not None else ""
    if au.strip() == "" and ah.strip() == "":
        raise misconfigured(row, "both alias_username and alias_host blank (an empty "
                            "dot-qmail line would eat the mail)", "UPDATE alias SET "
                            "alias_username='.', alias_host='/Maildir/'")
    if "\n" in au + ah or "\0" in au + ah:
        raise misconfigured(row, "newline or NUL in alias_username/alias_host",
                            "UPDATE alias SET ...")
    key, ah = au.strip(), ah.strip()
    if key in SPECIAL:
        if ah == "":
            raise misconfigured(row, "%r needs the rest of the delivery instruction in "
                                "alias_host (e.g. '/Maildir/')" % key,
                                "UPDATE alias SET alias_host='...'")
        line = key.encode("utf-8") + ah.encode("utf-8")
        if key == "|":
            if b"\n" in ext or b"\0" in ext:
                raise Refusal(EXIT_TEMP, "extension %s contains a newline; refusing to pass "
                              "it to a program" % shown(ext))
            line = b"|" + ext_env(ext, default) + ah.encode("utf-8")
        return line + b"\n"
    if key == "":
        raise misconfigured(row, "alias_username blank but alias_host set (a forward needs "
                            "the mailbox part)", "UPDATE alias SET alias_username='...'")
    target = key + ("@" + ah if ah else "")
    return b"&" + target.encode("utf-8") + b"\n"


def lines_for(directory, user, dash, ext):
    """(level, DEFAULT, rows) of the first level of USER's rows for (DASH, EXT), or None."""
    user, dash, ext = _b(user), _b(dash), _b(ext)
    what = fetch_args(user, dash, ext)
    if what is None:
        return None
    rows = fetch(directory, *what)
    best = None
    for r in rows:
        if lower_ascii(_b(r[1])) != lower_ascii(user):
            continue
        level = level_of(dash, ext, _b(r[2] if r[2] is not None else ""))
        if level is None:
            continue
        if best is None or level[0] < best[0][0]:
            best = (level, [r])
        elif level[0] == best[0][0]:
            best[1].append(r)
    if best is None:
        return None
    (rank, start), here = best
    return safe(_b(here[0][2])), (None if start is None else ext[start:]), here


def delivery_lines(directory, config, user, homedir, local, dash, ext, domain,
                   confirm=False):
    """The body of the daemon's `local` answer: dot-qmail lines, each ending in "\\n",
    or b"" when the table has no rows (stock qmail-local then runs unchanged).

    CONFIRM: no rows would be final (the wrapper found no dot-qmail file either, so
    stock qmail-local would bounce the mail): a miss read on a replica is read again
    on the write_server (the lag rule, db.py). Without it a miss is taken as it is:
    stock qmail-local then delivers by the user's files or its default.

    Raises Refusal(111, message) for DB trouble or a misconfigured row."""
    body = _lines(directory, config, user, local, dash, ext)
    if body or not confirm or not directory.must_confirm():
        return body
    return _lines(directory.on_write_server(), config, user, local, dash, ext)


def _lines(directory, config, user, local, dash, ext):
    user, local, dash, ext = _b(user), _b(local), _b(dash), _b(ext)
    for what, value in (("user", user), ("local part", local), ("ext", ext)):
        problem = too_long(what, value)
        if problem:
            raise Refusal(EXIT_TEMP, problem)
    try:
        if config.magic_forwarding:
            fwd = magic_forward(directory, config, user, local, dash, ext)
            if fwd is not None:
                return fwd
        found = lines_for(directory, user, dash, ext)
    except DirectoryUnavailable as e:  # anything else is a bug: it goes up as one
        raise Refusal(EXIT_TEMP, "DB lookup of alias rows failed: %s" % e, cause="db")
    if found is None:
        return b""
    _, default, rows = found
    return b"".join(line_for(r, ext, default) for r in rows)


def magic_forward(directory, config, user, local, dash, ext):
    """b"&address\\n" when this is the alias user's delivery of a magic forward (see
    qmailsql.core.virtual), else None."""
    if lower_ascii(user) != ALIAS_USER.encode() or dash != b"-" or ext != local:
        return None
    hit = virtual.match(config, virtual.row_source(directory), local)
    if hit is None or hit.kind != "forward":
        return None
    return b"&" + hit.address + b"\n"


def check_row(row):
    """The Problem of one alias row (id, username, alias, alias_username, alias_host) that
    defers or eats mail, or None. ID None: the table has no id column (old layout)."""
    rid, username, alias, au, ah = row
    which = "id %s " % rid if rid is not None else ""
    if _blank(au) and _blank(ah):
        where = "WHERE id=%s" % rid if rid is not None else (
            "WHERE username=%s AND alias=%s AND alias_username='' AND alias_host=''"
            % (sql_str(username), sql_str(alias or "")))
        return Problem("alias-blank", "error",
                       "alias row %s(username %r, alias %r) has both alias_username and "
                       "alias_host blank: an empty dot-qmail line (the original patch ate "
                       "such mail; qmailsql defers it)" % (which, username, alias or ""),
                       "DELETE FROM alias %s;  or deliver it: UPDATE alias SET "
                       "alias_username='.', alias_host='/Maildir/' %s;" % (where, where))
    key = (au or "").strip()
    if len(key) > 1 and key[0] in ".|/" and "@" not in key:
        line = key + (ah or "").strip()
        return Problem("alias-misconfigured", "error",
                       "alias row %s(username %r, alias %r) has the whole delivery "
                       "instruction %r in alias_username: it becomes a forward to that "
                       "\"address\"; the first character (., / or |) must stand alone "
                       "(FAQ)" % (which, username, alias or "", key),
                       "UPDATE alias SET alias_username=%s, alias_host=%s WHERE id=%s;"
                       % (sql_str(line[0]), sql_str(line[1:]), rid))
    if rid is not None:
        try:
            line_for(row, b"", None)
        except Refusal as r:
            return Problem("alias-misconfigured", "error", r.reason,
                           r.fix or "correct alias row id %s" % rid)
    return None


def problems(directory):
    """Alias rows that defer mail (check_row), as fix-it sentences."""
    out = []
    for row in directory.query("SELECT id, username, alias, alias_username, alias_host "
                               "FROM alias ORDER BY id"):
        problem = check_row(row)
        if problem is not None:
            out.append(str(problem))
    return out
