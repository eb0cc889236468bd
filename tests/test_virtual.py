"""Virtual domains (SPEC section 4 step 1) through the Python API, the CLI and qmail-getpw."""
import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import add_mailbox, add_virtual

from qmailsql.core import config as configmod
from qmailsql.core import db as dbmod
from qmailsql.core import resolve, virtual
from qmailsql.core.resolve import Delivery, Refusal, Resolver

UID, GID = 800, 100


# ------------------------------------------------------------------ helpers

def mailbox(q, homes, name, uid=UID, gid=GID):
    home = homes / name.replace("/", "_")
    home.mkdir()
    return os.fsencode(add_mailbox(q, name, home, uid=uid, gid=gid, make_home=True))


def resolver(q, **changes):
    return Resolver.for_directory(dataclasses.replace(q.config, **changes), q.directory)


def want(user, home, dash=b"", ext=b""):
    return Delivery(user, UID, GID, home, dash, ext)


# ------------------------------------------------------------------ pure parts

def test_splits_longest_host_first():
    assert virtual.splits(b"a.b-c.com-u") == [("a.b-c.com", "u"), ("a.b", "c.com-u")]
    assert virtual.splits(b"nodash") == []
    assert virtual.splits(b"-lead") == []           # an empty host is no host
    assert virtual.splits(b"h-") == [("h", "")]


def test_splits_bounded_for_junk():
    junk = b"-".join([b"x"] * 5000)
    out = virtual.splits(junk)
    assert 0 < len(out) <= virtual.MAX_PREFIXES
    assert all(len(h) <= virtual.MAX_HOST for h, _ in out)


def test_splits_non_utf8():
    assert virtual.splits(b"h\xff-u-v") == []
    assert virtual.splits(b"h-\xff") == [("h", None)]


@pytest.mark.parametrize("pattern,value,ok", [
    ("%", "anything", True), ("%", "", True), ("sales-%", "sales-x", True),
    ("sales-%", "sales", False), ("a_c", "abc", True), ("a_c", "ac", False),
    ("a\\%", "a%", True), ("a\\%", "ab", False), ("SALES-%", "sales-Q", True),
    ("a.b", "axb", False),
])
def test_like(pattern, value, ok):
    assert virtual.like(pattern, value) is ok


def test_like_backtracking_patterns_stay_linear():
    """Patterns that made the old regex re-check backtrack for seconds (n**4 for
    `%e%e%e%e%x`) are answered by a matcher that is at worst len(p) * len(v)."""
    value = "e" * 2000 + "\u1e8b"  # ẋ: folds to X
    assert virtual.like("%e%e%e%e%x", value)
    assert not virtual.like("%e%e%e%e%e%e%e%e%xq", value)
    assert not virtual.like("%e%e%e%e%y", "e" * 2000)
    assert virtual.like("%_%_%_%_%x", value) and not virtual.like("_" * 2002, value)


LIKE_VALUES = ["jerome", "Jérôme", "JEROME-x", "josé", "jose", "ße", "se", "Straße", "strasse",
               "æ", "ae", "Ünïcödé", "unicode", "a%b", "a_b", "ab", "e" * 40 + "\u1e8b",
               "sales-1", "SALES-É", "ø", "o", "ı", "i", "İ", ""]
LIKE_PATTERNS = ["jerome%", "j_r_me", "%é%", "%e%", "s%", "%ss%", "_e", "%x", "%e%e%e%x",
                 "unicode", "a\\%b", "a\\_b", "a_b", "sales-_", "%", "_", "o", "i", "ae"]


def test_like_agrees_with_mariadb(db):
    """like() (used on rows held in memory: the forward-loop checks) gives the real
    MariaDB's answer for `value LIKE pattern` under utf8mb4_general_ci, accents and
    all."""
    pairs = [(v, p) for v in LIKE_VALUES for p in LIKE_PATTERNS]
    sql = "SELECT " + ",".join(
        ["CONVERT(%s USING utf8mb4) COLLATE utf8mb4_general_ci LIKE "
         "CONVERT(%s USING utf8mb4) COLLATE utf8mb4_general_ci"] * len(pairs))
    got = db.directory.query(sql, [x for pair in pairs for x in pair])[0]
    wrong = [(v, p, bool(g)) for (v, p), g in zip(pairs, got) if virtual.like(p, v) != bool(g)]
    assert not wrong, wrong


def test_fold_is_mariadbs_for_latin_letters(db):
    """fold() puts two Latin letters (ASCII, Latin-1, Latin Extended-A) together
    exactly when utf8mb4_general_ci gives them the same weight."""
    letters = [chr(c) for c in list(range(0x41, 0x5b)) + list(range(0x61, 0x7b))
               + list(range(0xc0, 0x180)) if chr(c) not in "\u00d7\u00f7"]
    weights = db.directory.query("SELECT " + ",".join(
        ["HEX(WEIGHT_STRING(CONVERT(%s USING utf8mb4) COLLATE utf8mb4_general_ci))"]
        * len(letters)), letters)[0]
    by_weight, by_fold = {}, {}
    for c, w in zip(letters, weights):
        by_weight.setdefault(w, set()).add(c)
        by_fold.setdefault(virtual.fold(c), set()).add(c)
    assert sorted(map(sorted, by_weight.values())) == sorted(map(sorted, by_fold.values()))


def test_specificity_order():
    pats = ["%", "s%", "sales-%", "sales-_%", "%-%", "sale_-%"]
    assert sorted(pats, key=virtual.specificity) == [
        "sales-_%", "sales-%", "sale_-%", "s%", "%-%", "%"]


def R(username, ext, vu, vh):
    return virtual.Row(username, ext, vu, vh)


def test_choose_rules():
    rows = [R("catch", "", "", "h.com"), R("bob", "", "Bob", "h.com"),
            R("pad", "", "eve ", "h.com"), R("pat", "", "%", "h.com"),
            R("sales", "", "sales-%", "h.com"), R("other", "", "bob", "o.com")]
    assert virtual.choose(rows, "h.com", "BOB", False).username == "bob"
    assert virtual.choose(rows, "H.COM", "bob", False).username == "bob"
    # trailing spaces: equal under the DB collation, not to qmail
    assert virtual.choose(rows, "h.com", "eve", False).username == "catch"
    assert virtual.choose(rows, "h.com", "x", False).username == "catch"
    assert virtual.choose(rows, "h.com", "sales-1", True).username == "sales"
    assert virtual.choose(rows, "h.com", "x", True).username == "pat"   # % before blank
    assert virtual.choose(rows, "h.com", "%", False).username == "pat"  # literal without funky
    assert virtual.choose(rows, "o.com", "x", False) is None


def test_find_forward_loops():
    rows = [R("forward", "b@x.com", "a", "x.com"), R("forward", "A@X.com", "b", "x.com"),
            R("forward", "c@y.com", "c", "x.com"), R("c", "", "c", "y.com"),
            R("forward", "self@x.com", "self", "x.com"),
            R("forward", "out@elsewhere.org", "d", "x.com")]
    assert virtual.find_forward_loops(rows) == [["a@x.com", "b@x.com"], ["self@x.com"]]


def test_find_forward_loops_through_catchall_and_patterns():
    rows = [R("forward", "zz@x.com", "a", "x.com"), R("forward", "a@x.com", "", "x.com")]
    assert virtual.find_forward_loops(rows) == [["@x.com", "a@x.com"]]
    rows = [R("forward", "sales-9@x.com", "a", "x.com"), R("forward", "a@x.com", "sales-%",
                                                               "x.com")]
    assert virtual.find_forward_loops(rows, funky=False) == []
    assert virtual.find_forward_loops(rows, funky=True) == [["a@x.com", "sales-%@x.com"]]


def test_ambiguous_hosts():
    assert virtual.ambiguous_hosts({"a.b", "a.b-c.com", "x.org"}) == [("a.b", "a.b-c.com")]


# ------------------------------------------------------------------ against the DB

def test_faq_virtual_catchall(db, homes):
    home = mailbox(db, homes, "virtual")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    assert db.getpw(b"virtual.com-anyone") == want(b"virtual", home, b"-", b"@")
    assert db.getpw(b"virtual.com-") == want(b"virtual", home, b"-", b"@")


def test_exact_beats_catchall_and_is_case_insensitive(db, homes):
    vhome = mailbox(db, homes, "virtual")
    shome = mailbox(db, homes, "sales")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    add_virtual(db, "sales", "", "Sales", "virtual.com")
    assert db.getpw(b"virtual.com-sales") == want(b"sales", shome)
    assert db.getpw(b"virtual.com-SALES") == want(b"sales", shome)
    assert db.getpw(b"VIRTUAL.Com-sales") == want(b"sales", shome)
    assert db.getpw(b"virtual.com-sales2") == want(b"virtual", vhome, b"-", b"@")


def test_row_ext_appended_with_auto_break(db, homes):
    home = mailbox(db, homes, "iain")
    add_virtual(db, "iain", "slowlaris", "s", "h.org")
    assert db.getpw(b"h.org-s") == want(b"iain", home, b"-", b"slowlaris")


def test_target_resolved_like_any_local(db, homes):
    """The FAQ's iain / iain-sanity example reached through a virtual row."""
    ihome = mailbox(db, homes, "iain")
    shome = mailbox(db, homes, "iain-sanity")
    add_virtual(db, "iain", "sanity", "a", "h.org")
    add_virtual(db, "iain", "slowlaris", "b", "h.org")
    assert db.getpw(b"h.org-a") == want(b"iain-sanity", shome)
    assert db.getpw(b"h.org-b") == want(b"iain", ihome, b"-", b"slowlaris")


def test_silly_domain_other_goes_to_alias_user(db, homes):
    shome = mailbox(db, homes, "sales")
    ahome = mailbox(db, homes, "alias")
    add_virtual(db, "sales", "", "sales", "sillydomain.com")
    assert db.getpw(b"sillydomain.com-sales") == want(b"sales", shome)
    assert db.getpw(b"sillydomain.com-other") == want(b"alias", ahome, b"-",
                                                      b"sillydomain.com-other")


def test_no_row_and_no_alias_user_is_116(db, homes):
    mailbox(db, homes, "sales")
    add_virtual(db, "sales", "", "sales", "sillydomain.com")
    with pytest.raises(Refusal) as e:
        resolver(db, system_users=False).getpw(b"sillydomain.com-other")
    assert e.value.code == 116


def test_unknown_address_never_reaches_a_same_named_user(db, homes):
    """`other@sillydomain.com` must not land in the mailbox of a local user `other`...
    nor in one called `sillydomain.com` (the prefix alone is not a candidate)."""
    mailbox(db, homes, "other")
    mailbox(db, homes, "sillydomain.com")
    ahome = mailbox(db, homes, "alias")
    add_virtual(db, "sales", "", "sales", "sillydomain.com")
    assert db.getpw(b"sillydomain.com-other") == want(b"alias", ahome, b"-",
                                                      b"sillydomain.com-other")


def test_not_a_virtual_host_resolves_normally(db, homes):
    home = mailbox(db, homes, "iain")
    add_virtual(db, "x", "", "x", "virtual.com")
    assert db.getpw(b"iain-slowlaris") == want(b"iain", home, b"-", b"slowlaris")
    assert db.getpw(b"iain") == want(b"iain", home)


def test_longest_host_wins(db, homes):
    ahome = mailbox(db, homes, "a")
    bhome = mailbox(db, homes, "b")
    alias = mailbox(db, homes, "alias")
    add_virtual(db, "a", "", "", "a.b")              # catch-all at a.b
    add_virtual(db, "b", "", "u", "a.b-c.com")       # u@a.b-c.com
    assert db.getpw(b"a.b-c.com-u") == want(b"b", bhome)
    # the longer host is known: no fall-back to the catch-all of the shorter one
    assert db.getpw(b"a.b-c.com-v") == want(b"alias", alias, b"-", b"a.b-c.com-v")
    assert db.getpw(b"a.b-zz") == want(b"a", ahome)


def test_padded_host_row_is_not_the_host(db, homes):
    mailbox(db, homes, "a")
    home = mailbox(db, homes, "iain")
    add_virtual(db, "a", "", "", "iain ")      # equal to 'iain' under the collation, not to qmail
    assert db.getpw(b"iain-x") == want(b"iain", home, b"-", b"x")


def test_blank_username_row_defers(db, homes):
    mailbox(db, homes, "alias")
    add_virtual(db, "", "", "bob", "h.org")
    with pytest.raises(Refusal) as e:
        db.getpw(b"h.org-bob")
    assert e.value.code == 111
    assert "blank username" in e.value.message and "UPDATE virtual" in e.value.message


def test_funky_patterns_most_specific_first(db, homes):
    for n in ("boss", "team", "all", "blank"):
        mailbox(db, homes, n)
    add_virtual(db, "all", "", "%", "v.com")
    add_virtual(db, "team", "", "sales-%", "v.com")
    add_virtual(db, "boss", "", "sales-boss", "v.com")
    add_virtual(db, "blank", "", "", "v.com")
    r = resolver(db, funky_queries=True)
    assert r.getpw(b"v.com-sales-boss").user == b"boss"
    assert r.getpw(b"v.com-Sales-Q").user == b"team"
    assert r.getpw(b"v.com-joe").user == b"all"
    # without funky_queries the patterns are plain names: only the blank row catches
    plain = resolver(db, funky_queries=False)
    assert plain.getpw(b"v.com-sales-q").user == b"blank"
    assert plain.getpw(b"v.com-%").user == b"all"


def test_funky_patterns_mean_what_the_db_collation_says(db, homes):
    """A pattern takes an address when MariaDB's LIKE says so (it folds case and
    accents); an exact name stays exact (case only, as qmail compares)."""
    for n in ("accents", "exact", "blank", "crafted"):
        mailbox(db, homes, n)
    add_virtual(db, "accents", "", "jérôme-%", "v.com")
    add_virtual(db, "exact", "", "josé", "v.com")
    add_virtual(db, "blank", "", "", "v.com")
    add_virtual(db, "crafted", "", "%e%e%e%e%x", "v.com")
    r = resolver(db, funky_queries=True)
    assert r.getpw(b"v.com-JEROME-lists").user == b"accents"
    assert r.getpw("v.com-Jérôme-lists".encode()).user == b"accents"
    assert r.getpw("v.com-JOSÉ".encode()).user == b"exact"
    assert r.getpw(b"v.com-jose").user == b"blank"  # exact names do not fold accents
    crafted = ("v.com-" + "e" * 296 + "\u1e8b").encode()
    assert r.getpw(crafted).user == b"crafted"
    assert r.getpw(b"v.com-" + b"e" * 296 + b"y").user == b"blank"


def test_funky_faq_update_recipe_keeps_catchall(db, homes):
    """The FAQ: after FUNKY QUERIES the blank catch-all broke until
    `update virtual set virtual_username='%' where virtual_username=''`.
    Here the catch-all works both before and after the recipe."""
    home = mailbox(db, homes, "virtual")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    r = resolver(db, funky_queries=True)
    before = r.getpw(b"virtual.com-joe")
    # the FAQ's statement verbatim ('%%' is MySQLdb's escape for a literal '%')
    db.directory.query("update virtual set virtual_username='%%' where virtual_username=''",
                       (), write=True)
    assert db.directory.query("SELECT virtual_username FROM virtual") == (("%",),)
    after = r.getpw(b"virtual.com-joe")
    assert before == after == want(b"virtual", home, b"-", b"@")


@pytest.mark.parametrize("user", [b"o'brien", b"a\\b", b"100%", b"x_y", b"\"q\"", b"a;b",
                                  b"' OR 1=1 -- ", b"%", b"_"])
def test_hostile_addresses_answer_correctly(db, homes, user):
    ahome = mailbox(db, homes, "alias")
    mailbox(db, homes, "sales")
    add_virtual(db, "sales", "", "sales", "v.com")
    add_virtual(db, "sales", "", "x\\y", "v.com")   # a literal backslash name
    for funky in (False, True):
        d = resolver(db, funky_queries=funky).getpw(b"v.com-" + user)
        assert d == want(b"alias", ahome, b"-", b"v.com-" + user)


def test_non_utf8_user_part(db, homes):
    """Never to a local user named like the host; only a blank catch-all takes it."""
    mailbox(db, homes, "v.com")
    ahome = mailbox(db, homes, "alias")
    chome = mailbox(db, homes, "catch")
    add_virtual(db, "sales", "", "sales", "v.com")
    add_virtual(db, "all", "", "%", "v.com")
    for funky in (False, True):
        r = resolver(db, funky_queries=funky)
        assert r.getpw(b"v.com-\xff") == want(b"alias", ahome, b"-", b"v.com-\xff")
    add_virtual(db, "catch", "", "", "v.com")
    assert db.getpw(b"v.com-\xffx") == want(b"catch", chome)


def test_custom_auto_break(db, homes):
    """qmail-send always prefixes with '-'; the row's target uses auto_break."""
    home = mailbox(db, homes, "iain")
    add_virtual(db, "iain", "slowlaris", "s", "h-x.org")
    r = resolver(db, auto_break=b"+")
    assert r.getpw(b"h-x.org-s") == want(b"iain", home, b"-", b"slowlaris")


def test_junk_local_part(db, homes):
    ahome = mailbox(db, homes, "alias")
    add_virtual(db, "sales", "", "sales", "v.com")
    junk = b"v.com-" + b"-".join([b"ab%_'\\"] * 290)  # just under resolve.MAX_FIELD
    assert len(junk) <= resolve.MAX_FIELD
    d = resolver(db, funky_queries=True).getpw(junk)
    assert d == want(b"alias", ahome, b"-", junk)
    longer = junk + b"-" + b"x" * resolve.MAX_FIELD
    with pytest.raises(Refusal) as e:
        resolver(db, funky_queries=True).getpw(longer)
    assert e.value.code == 111 and "longer than qmailsql's limit" in e.value.message


def test_magic_forward(db, homes):
    ahome = mailbox(db, homes, "alias")
    add_virtual(db, "forward", "popaccount@hotmail.com", "user", "virtual.com")
    r = resolver(db, magic_forwarding=True)
    assert r.getpw(b"virtual.com-user") == want(b"alias", ahome, b"-", b"virtual.com-user")


def test_magic_forward_without_alias_user_defers(db, homes):
    add_virtual(db, "forward", "popaccount@hotmail.com", "user", "virtual.com")
    with pytest.raises(Refusal) as e:
        resolver(db, magic_forwarding=True, system_users=False).getpw(b"virtual.com-user")
    assert e.value.code == 111


def test_magic_forward_blank_target_defers(db, homes):
    mailbox(db, homes, "alias")
    add_virtual(db, "forward", "", "user", "virtual.com")
    with pytest.raises(Refusal) as e:
        resolver(db, magic_forwarding=True).getpw(b"virtual.com-user")
    assert e.value.code == 111 and "ext" in e.value.message


def test_forward_without_magic_is_an_ordinary_user(db, homes):
    """The FAQ's method before 1.1.3: a real `forward` mailbox."""
    home = mailbox(db, homes, "forward")
    add_virtual(db, "forward", "", "user", "virtual.com")
    assert resolver(db, magic_forwarding=False).getpw(b"virtual.com-user") == want(
        b"forward", home)


def test_forward_loops_from_db(db):
    add_virtual(db, "forward", "b@x.com", "a", "x.com")
    add_virtual(db, "forward", "a@x.com", "b", "x.com")
    add_virtual(db, "forward", "ok@far.org", "c", "x.com")
    assert virtual.forward_loops(db.directory) == [["a@x.com", "b@x.com"]]
    probs = virtual.problems(db.directory, dataclasses.replace(db.config,
                                                               magic_forwarding=True))
    assert any("loop" in p and "a@x.com" in p for p in probs)


def test_problems_pattern_without_funky(db):
    add_virtual(db, "all", "", "%", "v.com")
    add_virtual(db, "", "", "b", "v.com")
    probs = virtual.problems(db.directory, dataclasses.replace(db.config, funky_queries=False))
    assert any("funky_queries is off" in p for p in probs)
    assert any("blank username" in p for p in probs)
    assert virtual.problems(db.directory, dataclasses.replace(db.config, funky_queries=True)) \
        == [p for p in probs if "funky" not in p]


def test_db_trouble_is_111_never_alias(db, homes):
    mailbox(db, homes, "alias")

    def broken(pairs, funky):
        raise dbmod.DirectoryUnavailable("no DB server answered")
    r = Resolver(db.config, db.directory.mailboxes, broken)
    with pytest.raises(Refusal) as e:
        r.getpw(b"virtual.com-user")
    assert e.value.code == 111
    # a local part without a dash needs no virtual lookup at all
    assert r.getpw(b"alias").user == b"alias"


def test_db_trouble_is_cause_db_and_a_bug_is_no_db_failure(db):
    def down(names):
        raise dbmod.DirectoryUnavailable("no DB server answered")
    with pytest.raises(Refusal) as e:
        Resolver(db.config, down).getpw(b"nobody-here")
    assert (e.value.code, e.value.cause) == (111, "db")

    def bug(names):
        raise KeyError("a bug in a row source")
    with pytest.raises(KeyError):  # the daemon logs it as an internal error (111)
        Resolver(db.config, bug).getpw(b"nobody-here")


def test_db_down_whole_path_is_111(sandbox):
    cfg = dataclasses.replace(configmod.load(str(sandbox)),
                              servers=[configmod.Server(socket="/nonexistent/mysql.sock")],
                              connect_timeout=1)
    d = dbmod.Directory(cfg)
    with pytest.raises(Refusal) as e:
        Resolver.for_directory(cfg, d).getpw(b"virtual.com-user")
    assert e.value.code == 111


def test_explain_tells_the_virtual_story(db, homes):
    mailbox(db, homes, "virtual")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    story = []
    db.getpw(b"virtual.com-joe", story)
    text = "\n".join(story)
    assert "virtual host 'virtual.com'" in text and "local part 'virtual-@'" in text


def test_resolver_without_virtual_source_has_no_virtual_step(db, homes):
    mailbox(db, homes, "virtual")
    alias = mailbox(db, homes, "alias")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    plain = Resolver(db.config, lambda names: db.directory.mailboxes(names))
    assert plain.virtual_rows is None
    assert plain.getpw(b"virtual.com-joe") == want(b"alias", alias, b"-", b"virtual.com-joe")
    assert Resolver.for_directory(db.config, db.directory).virtual_rows is not None


# ------------------------------------------------------------------ three ways, same answer

LOCALS = [b"virtual.com-joe", b"virtual.com-sales", b"sillydomain.com-sales",
          b"sillydomain.com-other", b"iain-slowlaris", b"iain-sanity", b"iain",
          b"h.org-a"]


def _faq_world(db, homes):
    mailbox(db, homes, "virtual")
    mailbox(db, homes, "sales")
    mailbox(db, homes, "alias")
    mailbox(db, homes, "iain")
    mailbox(db, homes, "iain-sanity")
    add_virtual(db, "virtual", "@", "", "virtual.com")
    add_virtual(db, "sales", "", "sales", "virtual.com")
    add_virtual(db, "sales", "", "sales", "sillydomain.com")
    add_virtual(db, "iain", "sanity", "a", "h.org")


def test_session_cli_and_compiled_getpw_agree(db, homes, sandbox):
    _faq_world(db, homes)
    direct = {l: db.getpw(l).fields() for l in LOCALS}
    assert direct[b"virtual.com-joe"].split(b"\0")[4:6] == [b"-", b"@"]
    env = dict(os.environ, QMAILSQL_QMAIL_DIR=str(sandbox))
    for l in LOCALS:
        r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", l], env=env,
                           capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == direct[l], l
    from qmailsql.sandbox import host as sb
    assert sb.Paths(sandbox).daemon_socket.exists(), "the sandbox has no running qmailsqld"
    from qmailsql.core.helpers import helper_path
    getpw = str(helper_path("qmail-getpw"))
    for l in LOCALS:
        r = subprocess.run([getpw, l], env=env, capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == direct[l], l


def test_cli_getpw_exit_codes_for_virtual(db, homes, sandbox):
    add_virtual(db, "", "", "bob", "h.org")
    env = dict(os.environ, QMAILSQL_QMAIL_DIR=str(sandbox))
    r = subprocess.run([sys.executable, "-m", "qmailsql", "getpw", "h.org-bob"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 111 and "blank username" in r.stderr
