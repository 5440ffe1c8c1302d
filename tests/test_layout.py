"""The tree shows the design: no import cycle (lazy imports included), no import of another package's private
module, and no module over 400 lines except the ones listed below as known debt (issue 16), which may only shrink."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"runtime": "e3traj.runtime", "train": "e3traj.train", "export": "e3traj.export"}
MAX_LINES = 400
#: Modules over MAX_LINES, with the size they may not grow past (none now: the fixed-graph network's per-layer
#: table compiler lives in train/_layer_plan.py).
KNOWN_LARGE: dict[str, int] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([dotted, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every e3traj module ``name`` imports anywhere in its body (functions included)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - (node.level - 1)]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_lazy_imports_included():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_package_imports_another_packages_private_module():
    bad = []
    for name, deps in _graph().items():
        own = next(p for p in PACKAGES.values() if name == p or name.startswith(p + "."))
        for dep in deps:
            other = next(p for p in PACKAGES.values() if dep == p or dep.startswith(p + "."))
            if other != own and any(part.startswith("_") for part in dep[len(other) + 1 :].split(".") if part):
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_dependencies_point_one_way():
    order = {"e3traj.runtime": 0, "e3traj.train": 1, "e3traj.export": 2}
    bad = []
    for name, deps in _graph().items():
        mine = next(v for p, v in order.items() if name == p or name.startswith(p + "."))
        for dep in deps:
            theirs = next(v for p, v in order.items() if dep == p or dep.startswith(p + "."))
            if theirs > mine and not name.endswith(".cli"):  # the CLI loads train/export commands lazily by name
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    over = {k: v for k, v in sizes.items() if v > MAX_LINES and v > KNOWN_LARGE.get(k, MAX_LINES)}
    assert over == {}, f"over {MAX_LINES} lines (or grown past their known size): {over}"
    shrunk = [k for k, limit in KNOWN_LARGE.items() if sizes.get(k, 0) <= MAX_LINES]
    assert shrunk == [], f"now within {MAX_LINES} lines: drop them from KNOWN_LARGE: {shrunk}"
