"""Alias-table deliveries (SPEC section 5): aliases.delivery_lines and its parts."""
import dataclasses
import os
import subprocess

import pytest
from conftest import BuggyDirectory, add_alias, add_virtual, unreachable
from hypothesis import given, settings, strategies as st

from qmailsql.core import aliases
from qmailsql.core.resolve import Refusal


def lines(q, user, dash, ext, local=None, config=None):
    local = local if local is not None else user + dash + ext
    return aliases.delivery_lines(q.directory, config or q.config, user.encode(), b"/home/x",
                                  local.encode(), dash.encode(), ext.encode(), b"example.com")


# ------------------------------------------------------------------ search order

def old_levels(dash, ext):
    """qmail-local's search order the slow way (a copy of every prefix): the oracle."""
    if not dash:
        return [(b"", None)]
    sx = aliases.safe(ext)
    out = []
    if ext:
        out.append((sx, ext[-7:] if sx.endswith(b"default") else None))
    for i in range(len(sx), -1, -1):
        if i == 0 or sx[i - 1:i] == b"-":
            out.append((sx[:i] + b"default", ext[i:]))
    seen, uniq = set(), []
    for s, default in out:
        if s not in seen:
            seen.add(s)
            uniq.append((s, default))
    return uniq


def names(dash, ext, candidates):
    """CANDIDATES (alias names) that qmail-local looks for, in its order, with DEFAULT."""
    found = []
    for name in candidates:
        level = aliases.level_of(dash.encode(), ext.encode(), name.encode())
        if level is not None:
            rank, start = level
            found.append((rank, aliases.safe(name.encode()).decode(),
                          None if start is None else ext[start:]))
    return [(n, d) for _, n, d in sorted(found)]


EVERY = ["a-b-c", "a-b-default", "a-default", "default", "a-", "a", "", "b-c-default",
         "a-b-c-default", "-default", "A-B-Default", "foo-default", "john:smith-x",
         "john.smith-default", "John.Smith-X", "x-default"]


def test_levels_follow_qmail_local():
    # qmail-local.c's own comment: "-/" "a-b-c": "-/a-b-c" "-/a-b-default" "-/a-default" ...
    assert names("-", "a-b-c", EVERY) == [("a-b-c", None), ("a-b-default", "c"),
                                          ("a-b-default", "c"), ("a-default", "b-c"),
                                          ("default", "a-b-c")]
    assert names("-", "a-", EVERY) == [("a-", None), ("a-default", ""), ("default", "a-")]
    assert names("-", "a", EVERY) == [("a", None), ("default", "a")]
    assert names("", "", EVERY) == [("", None)]
    assert names("-", "", EVERY) == [("default", "")]


def test_levels_case_and_dots():
    assert names("-", "John.Smith-X", EVERY) == [("john:smith-x", None), ("john:smith-x", None),
                                                 ("john:smith-default", "X"),
                                                 ("default", "John.Smith-X")]


def test_levels_ext_ending_in_default():
    assert names("-", "foo-default", EVERY) == [("foo-default", "default"),
                                                ("default", "foo-default")]


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from([b"-", b""]),
       st.lists(st.sampled_from([b"a", b"B", b"-", b".", b":", b"default", b"x"]),
                max_size=8).map(b"".join),
       st.lists(st.sampled_from([b"a", b"b", b"-", b".", b":", b"default", b"DEFAULT", b"x"]),
                max_size=6).map(b"".join))
def test_level_of_is_the_old_search(dash, ext, name):
    """level_of() (linear) ranks a name exactly where the old prefix-copying walk put it."""
    order = [s for s, _ in old_levels(dash, ext)]
    level = aliases.level_of(dash, ext, name)
    s = aliases.safe(name)
    if s not in order:
        assert level is None
        return
    k = order.index(s)
    ranks = [aliases.level_of(dash, ext, o)[0] for o in order]
    assert ranks == sorted(set(ranks))  # the same order, no two levels tied
    rank, start = level
    assert rank == ranks[k]
    assert (None if start is None else ext[start:]) == old_levels(dash, ext)[k][1]


def test_long_extension_is_one_short_statement(db):
    """16,000 dashes: one query no longer than the extension twice over (no
    `-default` name per dash), the `default` row found."""
    add_alias(db, "iain", "default", ".", "/Maildir/")
    seen = []
    real = db.directory.query

    def spy(sql, params=(), write=False):
        seen.append(len(sql) + sum(len(str(p)) for p in params))
        return real(sql, params, write)
    db.directory.query = spy
    ext = "-" * 16000
    assert aliases.lines_for(db.directory, b"iain", b"-", ext.encode())[2][0][2] == "default"
    assert seen and max(seen) < 2 * len(ext) + 1000


# ------------------------------------------------------------------ lines of a row

def L(au, ah, ext=b"", default=None):
    return aliases.line_for((7, "u", "", au, ah), ext, default)


def test_line_kinds():
    assert L("/", "home/iain/Mailbox") == b"/home/iain/Mailbox\n"
    assert L(".", "/Maildir/") == b"./Maildir/\n"
    assert L("address", "external.com") == b"&address@external.com\n"
    assert L("bob", "") == b"&bob\n"
    assert L(".x", "h.org") == b"&.x@h.org\n"       # not alone: an address
    assert L("|", "/usr/bin/prog a") == (b"|EXT=''; EXT2=''; EXT3=''; EXT4=''; "
                                         b"export EXT EXT2 EXT3 EXT4; /usr/bin/prog a\n")


@pytest.mark.parametrize("au,ah,why", [
    ("", "", "both alias_username and alias_host blank"),
    ("  ", " ", "both alias_username and alias_host blank"),
    ("|", "", "needs the rest"), (".", "", "needs the rest"), ("/", " ", "needs the rest"),
    ("", "external.com", "alias_username blank"),
    ("a\nb", "h", "newline"), ("|", "prog\n|rm -rf /", "newline"), (".", "/Mail\0", "NUL"),
])
def test_bad_rows_defer(au, ah, why):
    with pytest.raises(Refusal) as e:
        L(au, ah)
    assert e.value.code == 111
    assert why in e.value.message
    assert "id=7" in e.value.message


def test_program_line_env_values():
    line = L("|", "prog", b"foo-bar-baz-qux-quux", b"qux-quux")
    assert line == (b"|EXT='foo-bar-baz-qux-quux'; EXT2='bar-baz-qux-quux'; "
                    b"EXT3='baz-qux-quux'; EXT4='qux-quux'; DEFAULT='qux-quux'; "
                    b"export EXT EXT2 EXT3 EXT4 DEFAULT; prog\n")


def test_program_line_refuses_newline_in_ext():
    with pytest.raises(Refusal) as e:
        L("|", "prog", b"a\n|evil", None)
    assert e.value.code == 111


HOSTILE = b"it's-$(touch /tmp/qs-pwned)-`id`-\"q\" \\ *-x"


def test_program_line_quoting_survives_sh(tmp_path):
    """The line as /bin/sh -c runs it (qmail-local's mailprogram): the program sees
    the values exactly, and nothing in them is executed."""
    default = HOSTILE[3:]
    line = L("|", 'printf "%s\\0" "$EXT" "$EXT2" "$EXT3" "$EXT4" "$DEFAULT"', HOSTILE, default)
    assert line.startswith(b"|") and line.endswith(b"\n")
    env = {"PATH": "/usr/bin:/bin", "EXT": "", "EXT2": "", "EXT3": "", "EXT4": ""}
    r = subprocess.run(["/bin/sh", "-c", line[1:-1]], env=env, capture_output=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split(b"\0")[:-1]
    assert parts == [HOSTILE, b"$(touch /tmp/qs-pwned)-`id`-\"q\" \\ *-x",
                     b"pwned)-`id`-\"q\" \\ *-x", b"`id`-\"q\" \\ *-x", default]
    assert not os.path.exists("/tmp/qs-pwned")


def test_program_line_exports_to_child(tmp_path):
    line = L("|", "sh -c 'echo \"$EXT/$EXT2/$DEFAULT\"'", b"a-b", b"b")
    r = subprocess.run(["/bin/sh", "-c", line[1:-1]], env={"PATH": "/usr/bin:/bin"},
                       capture_output=True)
    assert r.stdout == b"a-b/b/b\n"


# ------------------------------------------------------------------ against the DB

def test_faq_mailbox_delivery(db):
    add_alias(db, "iain", "", "/", "home/iain/Mailbox")
    assert lines(db, "iain", "", "") == b"/home/iain/Mailbox\n"


def test_faq_slowlaris(db):
    add_alias(db, "iain", "slowlaris", ".", "/Maildir/")
    assert lines(db, "iain", "-", "slowlaris") == b"./Maildir/\n"
    assert lines(db, "iain", "-", "SlowLaris") == b"./Maildir/\n"
    assert lines(db, "iain", "", "") == b""
    assert lines(db, "iain", "-", "other") == b""
    assert lines(db, "iainx", "-", "slowlaris") == b""


def test_faq_virtual_catchall_alias(db):
    add_alias(db, "virtual", "@", ".", "/Maildir/")
    assert lines(db, "virtual", "-", "@", local="virtual.com-joe") == b"./Maildir/\n"


def test_faq_old_style_forward(db):
    add_alias(db, "forward", "", "address", "external.com")
    assert lines(db, "forward", "", "") == b"&address@external.com\n"


def test_first_level_only_and_row_order(db):
    add_alias(db, "u", "default", ".", "/Maildir/")
    add_alias(db, "u", "foo-default", "a", "one.org")
    add_alias(db, "u", "foo-bar", "b", "two.org")
    add_alias(db, "u", "foo-bar", "c", "")
    assert lines(db, "u", "-", "foo-bar") == b"&b@two.org\n&c\n"
    assert lines(db, "u", "-", "foo-baz") == b"&a@one.org\n"
    assert lines(db, "u", "-", "zap") == b"./Maildir/\n"
    assert lines(db, "u", "-", "") == b"./Maildir/\n"
    assert lines(db, "u", "", "") == b""


def test_default_program_sees_default(db):
    add_alias(db, "u", "list-default", "|", "/usr/bin/handle")
    assert lines(db, "u", "-", "list-Join-me") == (
        b"|EXT='list-Join-me'; EXT2='Join-me'; EXT3='me'; EXT4=''; DEFAULT='Join-me'; "
        b"export EXT EXT2 EXT3 EXT4 DEFAULT; /usr/bin/handle\n")


def test_dots_and_colons_are_one_level(db):
    add_alias(db, "u", "john.smith", ".", "/a/")
    add_alias(db, "u", "jane:doe", ".", "/b/")
    assert lines(db, "u", "-", "John.Smith") == b"./a/\n"
    assert lines(db, "u", "-", "jane.doe") == b"./b/\n"


def test_padded_alias_is_not_the_level(db):
    add_alias(db, "u", "foo ", ".", "/pad/")
    add_alias(db, "u", "default", ".", "/d/")
    assert lines(db, "u", "-", "foo") == b"./d/\n"


def test_blank_row_defers_not_eaten(db):
    add_alias(db, "u", "x", ".", "/Maildir/")
    add_alias(db, "u", "x", "", "")
    with pytest.raises(Refusal) as e:
        lines(db, "u", "-", "x")
    assert e.value.code == 111
    assert "both alias_username and alias_host blank" in e.value.message
    assert "UPDATE alias SET" in e.value.message
    assert aliases.problems(db.directory) and "blank" in aliases.problems(db.directory)[0]


def test_hostile_ext_values(db):
    add_alias(db, "u", "default", ".", "/d/")
    for ext in ("o'brien", "a\\b", "100%", "x_y", "' OR 1=1 -- ", "%"):
        assert lines(db, "u", "-", ext) == b"./d/\n"
    add_alias(db, "u", "100%", ".", "/p/")
    assert lines(db, "u", "-", "100%") == b"./p/\n"
    assert lines(db, "u", "-", "100x") == b"./d/\n"     # '%' is no wildcard here


def test_non_utf8_ext_still_finds_default(db):
    add_alias(db, "u", "a-default", ".", "/a/")
    got = aliases.delivery_lines(db.directory, db.config, b"u", b"/h", b"u-a-\xff", b"-",
                                 b"a-\xff", b"h")
    assert got == b"./a/\n"


def test_magic_forward_lines(db):
    cfg = dataclasses.replace(db.config, magic_forwarding=True)
    add_virtual(db, "forward", "popaccount@hotmail.com", "user", "virtual.com")
    add_alias(db, "alias", "default", ".", "/catchall/")
    L_ = "virtual.com-user"
    assert lines(db, "alias", "-", L_, local=L_, config=cfg) == b"&popaccount@hotmail.com\n"
    # only the alias user's fall-back delivery of that very local part
    assert lines(db, "alias", "-", "x-" + L_, local="alias-x-" + L_, config=cfg) == \
        b"./catchall/\n"
    assert lines(db, "alias", "-", L_, local=L_, config=db.config) == b"./catchall/\n"
    other = "virtual.com-other"
    assert lines(db, "alias", "-", other, local=other, config=cfg) == b"./catchall/\n"


def test_db_down_is_111(sandbox):
    cfg, d = unreachable(sandbox)
    with pytest.raises(Refusal) as e:
        aliases.delivery_lines(d, cfg, b"u", b"/h", b"u-x", b"-", b"x", b"h")
    assert e.value.code == 111
    assert e.value.cause == "db" and "DB lookup of alias rows failed" in e.value.message


def test_a_bug_is_not_reported_as_db_trouble(sandbox):
    """Only DirectoryUnavailable is DB trouble; anything else is a bug and goes up as
    itself (the worker logs it as an internal error and answers 111)."""
    cfg, _ = unreachable(sandbox)
    for magic in (False, True):  # the magic forward's look-up too
        config = dataclasses.replace(cfg, magic_forwarding=magic)
        with pytest.raises(TypeError):
            aliases.delivery_lines(BuggyDirectory(), config, b"alias", b"/h", b"x.com-u", b"-",
                                   b"x.com-u", b"h")
