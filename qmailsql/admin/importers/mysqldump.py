"""A small reader of mysqldump output: CREATE TABLE for column order, INSERT/REPLACE
... VALUES tuples with '...' and "..." strings and all MySQL backslash escapes, numbers,
NULL, 0x/X''/b'' literals, _charset introducers; comments, /*!...*/ blocks and
DELIMITER blocks skipped. For `qmailsql import vpopmail DUMP.sql`."""
import re


class DumpError(Exception):
    pass


_TOKEN = re.compile(r"""
 (?P<ws>\s+)
|(?P<lc>(?:--(?=[ \t\r\n]|$)|\#)[^\n]*)
|(?P<bc>/\*.*?\*/)
|(?P<sq>'(?:[^'\\]+|\\.|'')*')
|(?P<dq>"(?:[^"\\]+|\\.|"")*")
|(?P<bq>`(?:[^`]+|``)*`)
|(?P<hex>0[xX][0-9A-Fa-f]+|[xX]'[0-9A-Fa-f]*')
|(?P<bits>0b[01]+|[bB]'[01]*')
|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
|(?P<word>[A-Za-z_$][A-Za-z0-9_$]*)
|(?P<semi>;)
|(?P<p>.)
""", re.S | re.X)

_ESC = {"0": "\0", "'": "'", '"': '"', "b": "\b", "n": "\n", "r": "\r", "t": "\t",
        "Z": "\x1a", "\\": "\\", "%": "\\%", "_": "\\_"}
_ESC_RE = re.compile(r"\\(.)|('')|(\"\")", re.S)


def _unquote(tok):
    quote = tok[0]
    body = tok[1:-1]

    def sub(m):
        if m.group(1) is not None:
            return _ESC.get(m.group(1), m.group(1))
        return quote
    return _ESC_RE.sub(sub, body)


def _hexval(tok):
    h = tok[2:] if tok[:2] in ("0x", "0X") else tok[2:-1]
    if len(h) % 2:
        h = "0" + h
    data = bytes.fromhex(h)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _tokens(text):
    """(kind, value, pos) tokens, comments and white space dropped."""
    pos, n = 0, len(text)
    match = _TOKEN.match
    while pos < n:
        m = match(text, pos)
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "p" and tok in ("'", '"', "`"):
            raise DumpError("unterminated %s at line %d" % (
                {"'": "string", '"': "string", "`": "identifier"}[tok],
                text.count("\n", 0, pos) + 1))
        if kind == "p" and tok == "/" and text.startswith("/*", pos):
            raise DumpError("unterminated comment at line %d" % (text.count("\n", 0, pos) + 1))
        if kind not in ("ws", "lc", "bc"):
            yield kind, tok, pos
        pos = m.end()


def statements(text):
    """Each SQL statement of TEXT as a list of (kind, value, pos) tokens.

    DELIMITER blocks (triggers, routines) are skipped whole."""
    stmt = []
    toks = _tokens(text)
    for kind, tok, pos in toks:
        if (not stmt and kind == "word" and tok.upper() == "DELIMITER"):
            eol = text.find("\n", pos)
            delim = text[pos + 9:eol if eol >= 0 else len(text)].strip()
            if delim == ";":
                continue
            end = re.compile(r"^DELIMITER\s*;\s*$", re.M | re.I).search(text, eol + 1)
            rest = text[end.end():] if end else ""
            # restart tokenising after the block
            for s in statements(rest):
                yield s
            return
        if kind == "semi":
            if stmt:
                yield stmt
            stmt = []
        else:
            stmt.append((kind, tok, pos))
    if stmt:
        yield stmt


def _ident(tok):
    kind, value, _ = tok
    if kind == "bq":
        return value[1:-1].replace("``", "`")
    if kind == "word":
        return value
    if kind == "dq":  # ANSI_QUOTES dumps
        return _unquote(value)
    raise DumpError("expected a name, got %r" % value)


def _table_name(toks, i):
    """(table name, next index) for `name` or `db`.`name`."""
    name = _ident(toks[i])
    i += 1
    if i < len(toks) and toks[i][1] == "." and toks[i][0] == "p":
        name = _ident(toks[i + 1])
        i += 2
    return name, i


_NOT_COLUMNS = {"PRIMARY", "KEY", "INDEX", "UNIQUE", "CONSTRAINT", "FULLTEXT", "SPATIAL",
                "FOREIGN", "CHECK", "PERIOD", "SYSTEM"}


def _create_columns(toks):
    """Column names of a CREATE TABLE statement's tokens."""
    i = 2
    while i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() in ("IF", "NOT",
                                                                              "EXISTS"):
        i += 1
    name, i = _table_name(toks, i)
    if i >= len(toks) or toks[i][1] != "(":
        return name, None  # CREATE TABLE ... LIKE / AS SELECT
    depth = 0
    cols = []
    start = True
    for kind, tok, _ in toks[i:]:
        if kind == "p" and tok == "(":
            depth += 1
            if depth == 1:
                start = True
                continue
        elif kind == "p" and tok == ")":
            depth -= 1
            if depth == 0:
                break
        elif kind == "p" and tok == "," and depth == 1:
            start = True
            continue
        if start and depth == 1:
            start = False
            if kind == "bq" or (kind == "word" and tok.upper() not in _NOT_COLUMNS):
                cols.append(_ident((kind, tok, 0)))
    return name, cols


def _value(toks, i):
    kind, tok, pos = toks[i]
    if kind in ("sq", "dq"):
        return _unquote(tok), i + 1
    if kind == "num":
        return (float(tok) if any(c in tok for c in ".eE") else int(tok)), i + 1
    if kind == "hex":
        return _hexval(tok), i + 1
    if kind == "bits":
        bits = tok[2:] if tok.startswith("0b") else tok[2:-1]
        return int(bits or "0", 2), i + 1
    if kind == "word":
        up = tok.upper()
        if up == "NULL":
            return None, i + 1
        if up in ("TRUE", "FALSE"):
            return int(up == "TRUE"), i + 1
        if tok.startswith("_") and i + 1 < len(toks) and toks[i + 1][0] in ("sq", "dq", "hex"):
            return _value(toks, i + 1)  # a charset introducer: _binary '...', _latin1'...'
    if kind == "p" and tok in "-+" and i + 1 < len(toks) and toks[i + 1][0] == "num":
        v, j = _value(toks, i + 1)
        return (-v if tok == "-" else v), j
    raise DumpError("unsupported value %r in an INSERT (only literals are read)" % tok)


def _insert(toks):
    """(table, column list or None, [row tuples]) of an INSERT/REPLACE statement."""
    i = 1
    while i < len(toks) and toks[i][0] == "word" and toks[i][1].upper() in (
            "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"):
        i += 1
    table, i = _table_name(toks, i)
    cols = None
    if i < len(toks) and toks[i][1] == "(":
        cols = []
        i += 1
        while toks[i][1] != ")":
            if toks[i][1] != ",":
                cols.append(_ident(toks[i]))
            i += 1
        i += 1
    if i >= len(toks) or toks[i][0] != "word" or toks[i][1].upper() not in ("VALUES", "VALUE"):
        raise DumpError("INSERT INTO %s: only INSERT ... VALUES is read" % table)
    i += 1
    rows = []
    n = len(toks)
    while i < n:
        if toks[i][1] != "(":
            if toks[i][0] == "word" and toks[i][1].upper() == "ON":
                break  # ON DUPLICATE KEY UPDATE ...
            raise DumpError("INSERT INTO %s: expected '(' at line ?" % table)
        i += 1
        row = []
        while True:
            v, i = _value(toks, i)
            row.append(v)
            if toks[i][1] == ",":
                i += 1
                continue
            if toks[i][1] == ")":
                i += 1
                break
            raise DumpError("INSERT INTO %s: expected ',' or ')', got %r" % (table, toks[i][1]))
        rows.append(tuple(row))
        if i < n and toks[i][1] == ",":
            i += 1
    return table, cols, rows


def parse_dump(text, want=None, default_columns=None):
    """{table: {"columns": [...] or None, "rows": [dict]}} from a mysqldump TEXT.

    WANT: a predicate on table names (default: every table)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = text.decode("latin-1")
    tables = {}
    for toks in statements(text):
        first = toks[0][1].upper() if toks[0][0] == "word" else ""
        try:
            if first == "CREATE" and len(toks) > 2 and toks[1][1].upper() == "TABLE":
                name, cols = _create_columns(toks)
                if want is None or want(name):
                    tables.setdefault(name, {"columns": None, "rows": []})["columns"] = cols
            elif first in ("INSERT", "REPLACE"):
                i = 1
                while toks[i][0] == "word" and toks[i][1].upper() in (
                        "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"):
                    i += 1
                name, _ = _table_name(toks, i)
                if want is not None and not want(name):
                    continue
                name, cols, rows = _insert(toks)
                t = tables.setdefault(name, {"columns": None, "rows": []})
                cols = cols or t["columns"] or (default_columns or {}).get(name)
                if cols is None:
                    raise DumpError("INSERT INTO %s has no column list and no CREATE TABLE "
                                    "came before it" % name)
                for r in rows:
                    if len(r) != len(cols):
                        raise DumpError("INSERT INTO %s: a row has %d values for %d columns"
                                        % (name, len(r), len(cols)))
                    t["rows"].append(dict(zip(cols, r)))
        except IndexError:
            raise DumpError("statement at line %d ends too early"
                            % (text.count("\n", 0, toks[0][2]) + 1))
        except DumpError as e:
            raise DumpError("%s (statement at line %d)" % (e, text.count("\n", 0, toks[0][2])
                                                            + 1))
    return tables
