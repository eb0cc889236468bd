"""The package layout keeps its one-way dependency rule (qmailsql/__init__.py says it).

Read from the source files with ast (nothing is imported): every `import qmailsql...`
in every module, at module level or inside a function, is an edge of the import graph.
"""
import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "qmailsql"

# Which room may import which (a room may always import itself), as qmailsql/__init__.py
# states it. "qmailsql" is the package's own __init__.py (the facade over the API),
# "api" qmailsql/api.py, "cli" cli.py and __main__.py. Nothing may import cli.
MAY_IMPORT = {
    "core": set(),
    "daemon": {"core"},
    "admin": {"core"},
    "sandbox": {"core", "admin"},
    "api": {"core", "admin"},
    "qmailsql": {"api"},
    "cli": {"qmailsql", "api", "daemon", "sandbox"},
}
LATE_IMPORT = re.compile(r"#\s*late import:\s*\S")


def room_of(module):
    parts = module.split(".")
    if len(parts) == 1:
        return "qmailsql"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def module_name(path):
    rel = path.relative_to(SOURCE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files():
    return sorted(p for p in SOURCE.rglob("*") if p.suffix in (".py", ".pyx"))


class Import:
    def __init__(self, target, line, in_function, text):
        self.target, self.line, self.in_function, self.text = target, line, in_function, text


def _resolve(module, is_package, node):
    """The qmailsql modules an ImportFrom names (relative imports made absolute)."""
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for alias in node.names:
        # `from qmailsql.core import db` imports the module qmailsql.core.db
        out.append(base + "." + alias.name if (SOURCE.parent / (base + "." + alias.name)
                   .replace(".", "/")).with_suffix(".py").exists() else base)
    return out


def imports_of(path):
    """Every qmailsql import in PATH; .pyx files are read line by line (no Cython ast)."""
    module = module_name(path)
    lines = path.read_text().splitlines()
    if path.suffix == ".pyx":
        found = []
        for n, text in enumerate(lines, 1):
            m = re.match(r"(\s*)(?:from|import)\s+(qmailsql[\w.]*)", text)
            if m:
                found.append(Import(m.group(2), n, bool(m.group(1)), text))
        return found
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                targets = _resolve(module, path.name == "__init__.py", child)
            else:
                visit(child, inner)
                continue
            for t in dict.fromkeys(targets):
                if t == "qmailsql" or t.startswith("qmailsql."):
                    text = lines[child.lineno - 1]
                    above = lines[child.lineno - 2] if child.lineno > 1 else ""
                    found.append(Import(t, child.lineno, in_function,
                                        text + "\n" + above))
    visit(tree, False)
    return found


MODULES = {module_name(p): p for p in source_files()}


def test_the_walk_sees_the_layout():
    rooms = {room_of(m) for m in MODULES}
    assert {"core", "daemon", "admin", "sandbox", "cli", "qmailsql"} <= rooms
    edges = imports_of(MODULES["qmailsql.core.hotpath"])
    assert "qmailsql.core.definitions" in {i.target for i in edges}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_one_way_rule(module):
    room = room_of(module)
    wrong = ["line %d: %s imports %s" % (i.line, room, i.target)
             for i in imports_of(MODULES[module])
             if room_of(i.target) != room and room_of(i.target) not in MAY_IMPORT[room]]
    assert not wrong, "%s breaks the dependency rule:\n%s" % (module, "\n".join(wrong))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_imports_without_a_reason(module):
    late = ["line %d: %s" % (i.line, i.text.splitlines()[0].strip())
            for i in imports_of(MODULES[module])
            if i.in_function and not LATE_IMPORT.search(i.text)]
    assert not late, ("%s imports inside a function (move it to the top, or say why on "
                      "the line: `# late import: <reason>`):\n%s" % (module, "\n".join(late)))


def _cycle(graph):
    """One cycle in GRAPH ({node: set of nodes}) as a list, or None."""
    state = {}

    def walk(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None
    for node in sorted(graph):
        if node not in state:
            found = walk(node, [node])
            if found:
                return found
    return None


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_circles_between_rooms():
    graph = {}
    for module, path in MODULES.items():
        for i in imports_of(path):
            a, b = room_of(module), room_of(i.target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    cycle = _cycle(graph)
    assert cycle is None, "rooms import each other in a circle: " + " -> ".join(cycle)


def test_no_circles_between_modules():
    """Import-time circles: module-level imports only (a late import cannot close one)."""
    graph = {}
    for module, path in MODULES.items():
        for i in imports_of(path):
            if not i.in_function and i.target != module and i.target in MODULES:
                graph.setdefault(module, set()).add(i.target)
    cycle = _cycle(graph)
    assert cycle is None, "modules import each other in a circle: " + " -> ".join(cycle)
