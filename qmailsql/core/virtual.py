"""Virtual domains: the `virtual` table (SPEC section 4 step 1).

`qmailsql sync` writes `H:H` into control/virtualdomains for every virtual host H, so
qmail-send hands mail for `u@H` to qmail-lspawn as the local part `H-u` (qmail-send's
rewrite() always joins prefix and address with a literal '-', whatever auto_break is).
qmail-getpw then sees `H-u` and this module turns it back into `u@H`.

Host: hosts contain dots and dashes, so `a.b-c.com-u` could be `c.com-u@a.b` or
`u@a.b-c.com`. Every prefix of L that ends just before a '-' is a possible host; the
known ones (any `virtual` row has that host) are tried longest first and the first
known host decides: an address that matches no row there is not tried again at a
shorter host. `ambiguous_hosts()` reports host pairs where this matters.

Rows for `u@H`, first match wins:
  1. exact: virtual_username equal to u, ignoring ASCII and Unicode case (compared in
     Python: the DB collation also pads trailing spaces and folds accents, which qmail
     would not do);
  2. with funky_queries: LIKE patterns (virtual_username containing an unescaped `%`
     or `_`; `\\` escapes), most specific first: more literal (non-wildcard)
     characters first, then fewer `%`, then more `_`, then the pattern's text.
     Whether a pattern takes u is the DB's answer: the lookup asks `u LIKE
     virtual_username` for each host guess and tags each row it returns with the
     guess it matched, so a pattern means what SQL LIKE means under the column's
     collation (utf8mb4_general_ci folds case and accents: `%e%x` takes `eẋ`).
     Nothing is matched again in Python on the delivery path, so no address can make
     it backtrack. like() (linear, folding nearly as utf8mb4_general_ci does) serves
     only checks on rows held in memory: doctor's and admin's forward-loop search;
  3. the catch-all: blank virtual_username (it works with funky_queries too, so the
     FAQ's "UPDATE virtual SET virtual_username='%' WHERE virtual_username=''" is
     optional; `%` then outranks the blank row, both catch everything).
Without funky_queries `%` and `_` are ordinary characters.

A row gives the local part `username` (+ auto_break + `ext` when ext is not blank);
resolve.Resolver resolves it by the mailbox/passwd steps (the FAQ's `@` ext is an
ordinary value: `virtual @ '' virtual.com` gives `virtual-@`).

Magic forwarding (magic_forwarding yes): a row whose username is `forward` (any case)
forwards to the address in its ext. qmail-getpw answers the alias user with dash '-'
and ext = L (the whole local part, as for an unknown address); qmail-local's request
for (alias user, local L, ext L) is recognised by aliases.delivery_lines(), which looks
L up here again and answers the single dot-qmail line `&address`, which stock
qmail-local forwards. A forward whose target is one of our own virtual addresses and
that leads back to itself is a loop: `forward_loops()` finds them (doctor) and
admin refuses to create one.

An address at a known host that matches no row goes to the alias user with ext = L:
stock qmail-local bounces it "no mailbox here by that name" unless the alias user has
a default; it is never relayed.
"""
import functools
import unicodedata
from collections import namedtuple

from qmailsql.core.errors import EXIT_TEMP, Refusal, shown
from qmailsql.core.db import DirectoryUnavailable, Part, select
from qmailsql.core.problems import Problem, sql_str
from qmailsql.core.problems import blank as _blank

HOST_SEP = b"-"       # qmail-send.c rewrite(): prefix + "-" + address
FORWARD_USER = "forward"
MAX_HOST = 255        # virtual.virtual_host is VARCHAR(255)
MAX_PREFIXES = 64     # at most this many host guesses per local part

# like: for a row from fetch(), the user part whose `LIKE virtual_username` the DB
# answered true (False: the DB was not asked); None for rows from elsewhere (like())
Row = namedtuple("Row", "username ext virtual_username virtual_host like", defaults=(None,))
# kind: "local" (deliver to target), "forward" (to address), "nomatch" (alias user)
Match = namedtuple("Match", "kind host user row target address")


def _text(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def splits(local):
    """(host, user) text pairs for every prefix of LOCAL ending just before a '-',
    longest host first. A host that is not UTF-8 cannot be in the table and is left
    out; a user part that is not UTF-8 is None (only a blank catch-all can take it)."""
    out = []
    end = min(len(local), MAX_HOST + 1)
    for p in range(end - 1, 0, -1):
        if local[p:p + 1] == HOST_SEP:
            host = _text(local[:p])
            if host is not None:
                out.append((host, _text(local[p + 1:])))
                if len(out) >= MAX_PREFIXES:
                    break
    return out


# --------------------------------------------------------------------- patterns

def is_pattern(value):
    """True if VALUE has an unescaped LIKE wildcard (`%` or `_`)."""
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if c in "%_":
            return True
        i += 1
    return False


ANY = object()   # `%` in a parsed pattern
ONE = object()   # `_`


def parse_pattern(pattern):
    """A LIKE pattern as a list of ANY, ONE and literal characters (`\\` escapes)."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        out.append(ANY if c == "%" else ONE if c == "_" else c)
        i += 1
    return out


@functools.lru_cache(maxsize=4096)
def fold(c):
    """Character C as utf8mb4_general_ci compares it, nearly: its base letter (NFD), in
    upper case, and S for ß (tests/test_virtual.py compares with the real MariaDB)."""
    if c == "\u00df":
        return "S"
    base = unicodedata.normalize("NFD", c)[:1] or c
    upper = base.upper()
    return upper if len(upper) == 1 else base


def like(pattern, value):
    """SQL LIKE with utf8mb4_general_ci's folding (fold()), no padding: `%` any run,
    `_` one character. Greedy with one resume point (the last `%`): at worst
    len(pattern) * len(value) steps, never exponential."""
    p = [t if t is ANY or t is ONE else fold(t) for t in parse_pattern(pattern)]
    v = [fold(c) for c in value]
    i = j = 0
    star, mark = -1, 0
    while j < len(v):
        if i < len(p) and p[i] is ANY:
            star, mark = i, j  # first try letting it take nothing
            i += 1
        elif i < len(p) and (p[i] is ONE or p[i] == v[j]):
            i += 1
            j += 1
        elif star >= 0:
            mark += 1  # the last `%` takes one more character
            i, j = star + 1, mark
        else:
            return False
    while i < len(p) and p[i] is ANY:
        i += 1
    return i == len(p)


def specificity(pattern):
    """Sort key of a LIKE pattern: most specific first (see the module docstring)."""
    parsed = parse_pattern(pattern)
    percent = sum(1 for t in parsed if t is ANY)
    under = sum(1 for t in parsed if t is ONE)
    return (-(len(parsed) - percent - under), percent, -under, pattern)


def pattern_takes(row, user):
    """Whether ROW's LIKE pattern takes USER: the DB's answer for rows it returned
    (fetch()), else like()."""
    if row.like is None:
        return like(row.virtual_username, user)
    return row.like is not False and row.like == user


def _same(a, b):
    return a is not None and b is not None and a.lower() == b.lower()


def choose(rows, host, user, funky):
    """The row that takes USER@HOST among ROWS (any rows; filtered here), or None."""
    here = [r for r in rows if _same(r.virtual_host, host)]
    if user is None:  # not UTF-8: no name or pattern in the table can be it
        blank = [r for r in here if _blank(r.virtual_username)]
        return blank[0] if blank else None
    if user != "":
        exact = [r for r in here if not _blank(r.virtual_username)
                 and _same(r.virtual_username, user)]
        if exact:
            return exact[0]
    if funky:
        pats = [r for r in here if r.virtual_username and is_pattern(r.virtual_username)
                and pattern_takes(r, user)]
        if pats:
            return min(pats, key=lambda r: specificity(r.virtual_username))
    blank = [r for r in here if _blank(r.virtual_username)]
    return blank[0] if blank else None


# --------------------------------------------------------------------- the DB side

def fetch(directory, pairs, funky):
    """(known hosts, candidate rows) for the (host, user) PAIRS, in one query.

    known hosts: lower-cased hosts among PAIRS that have any row at all. Candidate
    rows: rows at those hosts whose virtual_username may take the user (equal or
    blank, and with FUNKY the rows whose LIKE pattern the DB matched to a pair's
    user, tagged with it: Row.like); choose() makes the final decision."""
    if not pairs:
        return set(), []
    # a miss here is never final: the resolver confirms what would bounce (db.py)
    rows = select(directory, hosts_read(pairs, funky))
    known = set()
    out = []
    for kind, vhost, username, ext, vuser in rows:
        if kind == 0:
            known.add(vhost.lower())
        elif kind == 1:
            out.append(Row(username, ext, vuser, vhost, False))
        else:
            out.append(Row(username, ext, vuser, vhost, pairs[kind - 2][1]))
    return known, out


def hosts_read(pairs, funky):
    """fetch()'s read (db.Part) for PAIRS (not empty): rows (kind, virtual_host,
    username, ext, virtual_username), kind 0 for a known host (the rest blank), 1 for a
    row equal to a user or blank, 2 + i for a row whose pattern takes pairs[i]'s user."""
    hosts = list(dict.fromkeys(h for h, _ in pairs))
    users = list(dict.fromkeys(u for _, u in pairs if u))
    # one index-only probe per guess (the address key starts with virtual_host),
    # stopping at the first entry spelt as qmail would: the collation also takes
    # trailing-space and accent variants as equal; LOWER makes it case-blind
    parts = [Part("0, virtual_host, '', '', ''", 5, "virtual", "virtual_host=%s AND BINARY "
                  "LOWER(virtual_host)=BINARY LOWER(%s)", (h, h), "LIMIT 1") for h in hosts]
    marks = ",".join(["%s"] * len(hosts))
    cond = "virtual_username IN (" + ",".join(["%s"] * (len(users) + 1)) + ")"
    parts.append(Part("1, virtual_host, username, ext, virtual_username", 5, "virtual",
                      "virtual_host IN (" + marks + ") AND " + cond,
                      tuple(hosts + users + [""])))
    if funky:
        for i, (h, u) in enumerate(pairs):
            if u is None:
                continue
            parts.append(Part("%d, virtual_host, username, ext, virtual_username" % (2 + i), 5,
                              "virtual", "virtual_host=%s AND %s LIKE virtual_username",
                              (h, u)))
    return tuple(parts)


def row_source(directory):
    """A `virtual_rows(pairs, funky)` callable for resolve.Resolver over DIRECTORY."""
    def virtual_rows(pairs, funky):
        return fetch(directory, pairs, funky)
    return virtual_rows


def all_rows(directory):
    return [Row(*r) for r in directory.query(
        "SELECT username, ext, virtual_username, virtual_host FROM virtual ORDER BY id")]


# --------------------------------------------------------------------- resolution

def match(config, virtual_rows, local, say=lambda line: None):
    """Step 1 for LOCAL (bytes): None (not at a virtual host) or a Match.

    Raises Refusal(111) for DB trouble or a misconfigured row."""
    pairs = splits(local)
    if not pairs:
        return None
    try:
        known, rows = virtual_rows(pairs, config.funky_queries)
    except DirectoryUnavailable as e:  # DB trouble: the mail waits
        raise Refusal(EXIT_TEMP, "DB lookup of virtual hosts failed: %s" % e, cause="db")
    for host, user in pairs:
        if host.lower() not in known:
            continue
        say("virtual: %s starts with virtual host %r; looking up %r@%s"
            % (shown(local), host, user, host))
        row = choose(rows, host, user, config.funky_queries)
        if row is None:
            say("virtual: no row for %r@%s (no exact, pattern or catch-all row)"
                % (user, host))
            return Match("nomatch", host, user, None, None, None)
        return from_row(config, row, host, user, say)
    return None


def from_row(config, row, host, user, say=lambda line: None):
    where = "virtual row (username=%r, ext=%r, virtual_username=%r, virtual_host=%r)" % (
        row.username, row.ext, row.virtual_username, row.virtual_host)
    public = "misconfigured virtual row for this address (see qmailsqld's log)"
    if _blank(row.username):
        raise Refusal(EXIT_TEMP, "misconfigured %s: blank username; fix: UPDATE virtual SET "
                      "username='...' WHERE virtual_host=%r AND virtual_username=%r"
                      % (where, row.virtual_host, row.virtual_username), public)
    if config.magic_forwarding and row.username.strip().lower() == FORWARD_USER:
        address = (row.ext or "").strip()
        if not address or any(c in address for c in "\n\r\0 \t"):
            raise Refusal(EXIT_TEMP, "misconfigured %s: a magic forward needs one address in "
                          "ext; fix: UPDATE virtual SET ext='user@example.com' WHERE "
                          "virtual_host=%r AND virtual_username=%r"
                          % (where, row.virtual_host, row.virtual_username), public)
        say("virtual: %s: magic forward to %s" % (where, address))
        return Match("forward", host, user, row, None, address.encode("utf-8"))
    target = row.username.strip().encode("utf-8")
    if not _blank(row.ext):
        target += config.auto_break + row.ext.encode("utf-8")
    if b"\0" in target or b"\n" in target:
        raise Refusal(EXIT_TEMP, "misconfigured %s: NUL or newline in username/ext" % where,
                      public)
    say("virtual: %s: local part %r" % (where, target.decode("utf-8")))
    return Match("local", host, user, row, target, None)


# --------------------------------------------------------------------- checks (doctor)

def _split_address(address):
    at = address.rfind("@")
    if at < 0:
        return None, None
    return address[:at], address[at + 1:]


def find_forward_loops(rows, funky=False):
    """Loops among magic forwards in ROWS (Row tuples): a list of lists of addresses,
    each loop once, starting at its smallest address."""
    hosts = {r.virtual_host.lower() for r in rows if r.virtual_host}
    loops = {}
    for start in rows:
        if (start.username or "").strip().lower() != FORWARD_USER:
            continue
        chain = []
        row = start
        while row is not None and (row.username or "").strip().lower() == FORWARD_USER:
            addr = ("%s@%s" % (row.virtual_username, row.virtual_host)).lower()
            if addr in chain:
                loop = chain[chain.index(addr):]
                k = loop.index(min(loop))
                loop = loop[k:] + loop[:k]
                loops[tuple(loop)] = loop
                break
            chain.append(addr)
            user, host = _split_address((row.ext or "").strip())
            if host is None or host.lower() not in hosts:
                break
            row = choose(rows, host, user, funky)
    return [loops[k] for k in sorted(loops)]


def forward_loops(directory, funky=None):
    """Magic-forward loops in the DB (see find_forward_loops), for `qmailsql doctor`."""
    if funky is None:
        funky = directory.config.funky_queries
    return find_forward_loops(all_rows(directory), funky)


def ambiguous_hosts(hosts):
    """Pairs (short, long) of virtual hosts where long starts with short + '-':
    `x-u@short` and `u@long` reach qmail-getpw as the same local part."""
    hs = sorted({h.lower() for h in hosts})
    return [(a, b) for a in hs for b in hs if b.startswith(a + "-")]


class Checker:
    """The virtual table's Problems for `qmailsql doctor`, row by row as the rows stream
    past (row()), then those of the table as a whole (finish(): funky catch-alls,
    magic-forward loops). Keeps the rows for the loop search."""

    def __init__(self, config):
        self.config = config
        self.rows = []
        self.blank_catchall = []

    def row(self, rid, row):
        """Problems of one Row; RID: its id, or None (the fix names the address then)."""
        cfg = self.config
        self.rows.append(row)
        vuser, vhost = row.virtual_username, row.virtual_host
        addr = "%s@%s" % (vuser or "", vhost or "")
        where = ("WHERE id=%s" % rid if rid is not None else "WHERE virtual_host=%s AND "
                 "virtual_username=%s" % (sql_str(vhost or ""), sql_str(vuser or "")))
        if _blank(row.username):
            return [Problem("virtual-blank-username", "error",
                            "virtual row %s (id %s) has a blank username: mail to it is "
                            "deferred (\"MySQL misconfiguration\")" % (addr, rid),
                            "UPDATE virtual SET username=%s %s;" % (sql_str("<local user>"),
                                                                   where))]
        if _blank(vuser) and cfg.funky_queries:
            self.blank_catchall.append(vhost)
        if not cfg.funky_queries and vuser and is_pattern(vuser):
            return [Problem("virtual-pattern", "warning",
                            "virtual row %s looks like a LIKE pattern but funky_queries is "
                            "off: it only matches that literal name" % addr,
                            "add `funky_queries yes` to %s, or UPDATE virtual SET "
                            "virtual_username='' %s;  (a blank name is the catch-all)"
                            % (cfg.path or "control/sqlserver", where))]
        return []

    def finish(self):
        out = []
        n = len(self.blank_catchall)
        if n:
            hosts = sorted({h for h in self.blank_catchall if h})
            out.append(Problem(
                "virtual-funky-catchall", "warning",
                "funky_queries is on and %d virtual catch-all row%s ha%s a blank "
                "virtual_username (%s): the original patch's FUNKY QUERIES ignore them, so "
                "every other host sharing this DB bounces those domains' mail"
                % (n, "" if n == 1 else "s", "s" if n == 1 else "ve",
                   ", ".join(hosts[:5]) + (" ..." if len(hosts) > 5 else "")),
                "update virtual set virtual_username='%' where virtual_username='';"))
        if self.config.magic_forwarding:
            for loop in find_forward_loops(self.rows, self.config.funky_queries):
                user, _, host = loop[0].rpartition("@")
                out.append(Problem(
                    "virtual-forward-loop", "error",
                    "magic-forward loop: %s -> %s: mail to these addresses circulates until "
                    "qmail bounces it (\"too many hops\")" % (" -> ".join(loop), loop[0]),
                    "point one of them elsewhere, e.g. UPDATE virtual SET ext=%s WHERE "
                    "virtual_username=%s AND virtual_host=%s;"
                    % (sql_str("someone@elsewhere.example"), sql_str(user), sql_str(host))))
        return out


def problems(directory, config=None):
    """Human-readable virtual-table problems (empty list: none): the doctor's (Checker)
    plus two it does not report: magic forwards with a blank ext and overlapping hosts."""
    config = config or directory.config
    checker = Checker(config)
    out = []
    for r in all_rows(directory):
        out.extend(str(p) for p in checker.row(None, r))
        if (config.magic_forwarding and (r.username or "").strip().lower() == FORWARD_USER
                and _blank(r.ext)):
            out.append("virtual row %s@%s is a magic forward with a blank ext (the target "
                       "address); mail to it is deferred" % (r.virtual_username,
                                                             r.virtual_host))
    out.extend(str(p) for p in checker.finish())
    for a, b in ambiguous_hosts({r.virtual_host for r in checker.rows}):
        out.append("virtual hosts %s and %s overlap: mail for x-u@%s is read as u@%s "
                   "(longest host wins)" % (a, b, a, b))
    return out
