"""No import cycles among diskgraph's modules.

Every ``.py`` file of the package (``diskgraph/``, ``store/``, ``sampler/``, ``pipeline/``, ``native/``, installed as
``diskgraph``, ``diskgraph.store``, … as pyproject.toml maps them) is parsed with :mod:`ast`; its ``import`` and
``from … import`` statements (relative ones resolved) become edges to the package's modules they load. Two graphs
are checked:

* module level: the statements that run when the module is imported (not those inside a function or a class
  body's methods); a cycle there is a real import loop, ``from x import name`` of a half-initialised module;
* every statement, function-level ones too: a function-level import that closes a loop only hides it (the two
  modules still depend on each other), so it has to be broken by moving the shared piece, not by deferring it.

An edge goes to the module named and to the packages above it that are not above the importing module (their
``__init__`` runs first); ``from pkg import name`` goes to ``pkg.name`` when that is a module. ``if TYPE_CHECKING:``
blocks are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"diskgraph": "diskgraph", "diskgraph.store": "store", "diskgraph.sampler": "sampler",
                "diskgraph.pipeline": "pipeline", "diskgraph.native": "native"}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module the package installs."""
    out: dict[str, Path] = {}
    for pkg, rel in PACKAGE_DIRS.items():
        base = ROOT / rel
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module_level: bool):
    """The import statements of ``tree``: only those that run at import time when ``module_level``."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(name: str, is_package: bool, node, modules) -> set[str]:
    """The package's modules that ``node`` (in module ``name``) loads."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found = {a.name for a in node.names}
    else:
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            anchor = ".".join(base + ([node.module] if node.module else []))
        else:
            anchor = node.module or ""
        found.add(anchor)
        found |= {f"{anchor}.{a.name}" for a in node.names if f"{anchor}.{a.name}" in modules}
    out = set()
    for target in found:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in modules and mod != name and not name.startswith(mod + "."):
                out.add(mod)
    return out


def import_graph(module_level: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_targets(name, is_package, n, modules) for n in _imports(tree, module_level)))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan), as a path that ends
    where it starts."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(root: str) -> None:  # iterative Tarjan: the graph can be deeper than the recursion limit allows
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:
        members = set(comp)
        start = min(comp)
        # the shortest way back to start inside the component (breadth first)
        prev = {start: None}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev[v]
        out.append([start, *reversed(path[1:]), start])
    return out


def _describe(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in found)


def test_graph_covers_the_package():
    graph = import_graph(module_level=True)
    for name in ("diskgraph", "diskgraph.cli", "diskgraph.models", "diskgraph.capacity.estimate",
                 "diskgraph.daemon.spec", "diskgraph.store.dataset", "diskgraph.pipeline.loader",
                 "diskgraph.sampler.neighbor_sampler", "diskgraph.native.packing"):
        assert name in graph, name
    assert "diskgraph.cli_common" in graph["diskgraph.cli"]


def test_cycle_finder_reports_a_cycle():
    found = cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_module_level():
    found = cycles(import_graph(module_level=True))
    assert not found, "import cycles among module-level imports:\n" + _describe(found)


def test_no_import_cycle_counting_function_level_imports():
    found = cycles(import_graph(module_level=False))
    assert not found, "import cycles (function-level imports included):\n" + _describe(found)
