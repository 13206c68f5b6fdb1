"""The layers of DESIGN.md, kept: the import-linter contracts of pyproject.toml, no import circle
anywhere in vgray/ (imports inside functions count), no module taking another's ``_private``
name or module, and no function over 100 lines unless a comment above it says why.

A failure prints what to fix: the contract report, each circle as a chain of modules, each private
access with its file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vgray"


def is_private(name: str) -> bool:
    """``_name`` is private; ``__dunder__`` names are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_files() -> Dict[str, Path]:
    """Every module of vgray (``vgray.a.b``) and its file."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Lazy imports (inside functions) are in grimp's graph: it reads every import statement.
    return grimp.build_graph("vgray", cache_dir=None)


# -- (a) the contracts of pyproject.toml -------------------------------------------------------


def test_import_linter_contracts_are_kept():
    """The layers, Ray only in vgray.distributed, report without distributed, private modules."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"import-linter: contracts broken\n{done.stdout}\n{done.stderr}"
    assert "0 broken" in done.stdout, done.stdout


# -- (b) no import circle ----------------------------------------------------------------------


def strongly_connected(nodes: Set[str], edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components of the graph, iteratively (no recursion limit)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    components = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def shortest_cycle(start: str, members: Set[str], edges: Dict[str, Set[str]]) -> List[str]:
    """The shortest circle through ``start`` within one strongly connected component."""
    previous: Dict[str, Optional[str]] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, ())):
                if child == start:
                    chain = [node]
                    while previous[chain[-1]] is not None:
                        chain.append(previous[chain[-1]])
                    return list(reversed(chain)) + [start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def test_no_import_circle(graph):
    """No circle between any two vgray modules: not across packages, not inside one (a package's
    ``__init__`` and its members count as modules of their own)."""
    nodes = {m for m in graph.modules if m == "vgray" or m.startswith("vgray.")}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in nodes} for m in nodes}
    circles = []
    for component in strongly_connected(nodes, edges):
        if len(component) > 1 or component[0] in edges[component[0]]:
            chain = shortest_cycle(component[0], set(component), edges)
            lines = []
            for a, b in zip(chain, chain[1:]):
                where = graph.get_import_details(importer=a, imported=b)
                lines.append(f"    {a} -> {b} (l.{', '.join(str(d['line_number']) for d in where)})")
            circles.append(f"  {len(component)} modules: {', '.join(component)}\n  e.g.\n" + "\n".join(lines))
    assert not circles, f"{len(circles)} import circle(s) in vgray/:\n" + "\n\n".join(circles)


# -- (c) no private name or module of another module -------------------------------------------


def imported_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_module_allowed(importer: str, target: str) -> bool:
    """A private module (``a.b._c``, or anything inside it) may be imported by its parent package
    (``a.b``) and what lies inside that package, as import-linter's private_modules contract says."""
    parts = target.split(".")
    for k, part in enumerate(parts):
        if is_private(part):
            parent = ".".join(parts[:k])
            if not (importer == parent or importer.startswith(parent + ".")):
                return False
    return True


def dotted(node: ast.AST) -> Optional[List[str]]:
    """``a.b.c`` of an attribute chain on a name, as ``["a", "b", "c"]``; None for anything else."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + list(reversed(names))
    return None


def private_uses(module: str, path: Path, modules: Set[str]) -> Iterator[Tuple[int, str]]:
    """(line, what) of each private name or module of another vgray module that ``module`` takes:
    ``from x import _y``, ``import x._y``, and ``m._y`` on a vgray module ``m`` it imported."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    bound: Dict[str, str] = {}  # local name -> the vgray module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "vgray":
                    continue
                if not private_module_allowed(module, alias.name):
                    yield node.lineno, f"import {alias.name}"
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = imported_module(node, module, is_package)
            if source.split(".")[0] != "vgray":
                continue
            if not private_module_allowed(module, source):
                yield node.lineno, f"from {source} import ..."
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:  # a submodule
                    if not private_module_allowed(module, full):
                        yield node.lineno, f"from {source} import {alias.name}"
                    bound[alias.asname or alias.name] = full
                elif is_private(alias.name) and source != module:
                    yield node.lineno, f"from {source} import {alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        names = dotted(node)
        if not names or names[0] not in bound:
            continue
        target = bound[names[0]]
        for attr in names[1:]:
            if f"{target}.{attr}" in modules:  # a submodule reached by attribute
                target = f"{target}.{attr}"
                if not private_module_allowed(module, target):
                    yield node.lineno, ".".join(names)
                    break
                continue
            if is_private(attr) and target in modules and target != module:
                yield node.lineno, f"{'.'.join(names)} ({target}.{attr})"
            break


def test_no_module_takes_a_private_name_of_another():
    modules = module_files()
    found = set()
    for module, path in modules.items():
        for line, what in private_uses(module, path, set(modules)):
            found.add(f"  {path.relative_to(ROOT)}:{line}: {what}")
    assert not found, f"{len(found)} private name(s) or module(s) taken across modules:\n" + "\n".join(sorted(found))


# -- (d) short functions ------------------------------------------------------------------------

MAX_LINES = 100


def long_functions(path: Path) -> Iterator[Tuple[int, str, int]]:
    """(line, name, length) of each function of ``path`` longer than :data:`MAX_LINES` lines
    (decorators and docstring included) without a comment on the line above it saying why."""
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - first + 1
            if length > MAX_LINES and not (first >= 2 and lines[first - 2].strip().startswith("#")):
                yield node.lineno, node.name, length


def test_no_function_over_100_lines_unless_a_comment_says_why():
    found = [
        f"  {path.relative_to(ROOT)}:{line}: {name} ({length} lines)"
        for path in module_files().values()
        for line, name, length in long_functions(path)
    ]
    assert not found, f"functions over {MAX_LINES} lines (split them, or say why in a comment above):\n" + "\n".join(
        found
    )


# -- the checks themselves, on made-up code ----------------------------------------------------


def test_the_circle_finder_finds_circles_and_only_those():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    components = strongly_connected(set(edges), edges)
    assert sorted(components) == [["a", "b", "c"], ["d"], ["e"]]
    assert shortest_cycle("a", {"a", "b", "c"}, edges) == ["a", "b", "c", "a"]


def test_the_private_check_sees_each_way_of_taking_a_private_name(tmp_path):
    code = (
        "from vgray.cli import _Parser\n"
        "from vgray.models import _registry\n"
        "import vgray.train.loop as loop\n"
        "from vgray import atomic\n"
        "from .sibling import _helper\n"
        "from vgray.errors import BadInput, __doc__\n"
        "def f():\n"
        "    return loop._step, atomic.write_text, atomic._tmp_name, vgray_obj._x\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(code)
    modules = {
        "vgray.cli",
        "vgray.models",
        "vgray.models._registry",
        "vgray.train",
        "vgray.train.loop",
        "vgray.atomic",
        "vgray.errors",
        "vgray.bench",
        "vgray.bench.sibling",
        "vgray.bench.mod",
    }
    found = sorted(what for _, what in private_uses("vgray.bench.mod", path, modules))
    assert found == [
        "atomic._tmp_name (vgray.atomic._tmp_name)",
        "from vgray.bench.sibling import _helper",
        "from vgray.cli import _Parser",
        "from vgray.models import _registry",
        "loop._step (vgray.train.loop._step)",
    ]
    # Inside its own package a private module is fine; a module's own private names too.
    inside = tmp_path / "network.py"
    inside.write_text("from vgray.models import _registry\nfrom vgray.models.network import _own\n")
    assert list(private_uses("vgray.models.network", inside, modules | {"vgray.models.network"})) == []


def test_the_length_check_counts_decorators_and_accepts_a_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(99))
    path = tmp_path / "long.py"
    path.write_text(
        f"@decorator\ndef long():\n{body}\n\n# one table, read top to bottom\ndef explained():\n{body}    pass\n"
    )
    assert list(long_functions(path)) == [(2, "long", 101)]  # the decorator, the def, 99 lines
