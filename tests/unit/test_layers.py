"""The library's floors stay put: no module imports a module of a higher floor, and no import
cycle exists between modules or sub-packages, counting imports inside functions.

The table is the architecture of ``include/airloop`` (README "Architecture"): a sub-package may
import its own floor's modules (without cycles) and any lower floor, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "include" / "airloop"
PROVIDER = Path(__file__).resolve().parents[2] / "plugins" / "airloop_provider"
DAGS = Path(__file__).resolve().parents[2] / "dags"

#: floor of every sub-package: a module may import only sub-packages of a lower or equal floor.
FLOORS = {
    "core": 1,
    "data": 2,
    "models": 2,
    "ops": 2,
    "training": 3,
    "registry": 4,
    "monitoring": 5,
    "experiments": 6,
    "serving": 7,
    "tasks": 8,
    "cli": 9,
}
#: pairs of the same floor that must not import each other at all (siblings, not layers).
SIBLINGS_APART = {("data", "models"), ("models", "data"), ("ops", "data"), ("ops", "models"),
                  ("data", "ops"), ("models", "ops")}
#: what the code outside the library may import (sub-packages of airloop).
OUTSIDE = {
    "dags": {"core", "tasks"},
    "airloop_provider": {"core", "tasks", "serving", "registry"},
}
MAX_TOP_LEVEL_MODULES = 4
MAX_MODULE_LINES = 800


def _module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """Every airloop module ``path`` imports (top-level and inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "airloop"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + [module])
            if module.split(".")[0] != "airloop":
                continue
            for alias in node.names:  # `from airloop.registry import client` imports a module
                candidate = f"{module}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else module))
    return found


def _is_module(dotted: str) -> bool:
    path = LIB.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _library() -> dict[str, tuple[Path, list[tuple[int, str]]]]:
    modules = {}
    for path in sorted(LIB.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        modules[name] = (path, _imports(path, package))
    return modules


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_subpackage_has_a_floor():
    packages = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(FLOORS), "add the new sub-package to FLOORS (and the README's table)"


def test_few_plain_modules_at_the_top():
    top = sorted(p.name for p in LIB.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_is_too_long():
    long = {str(p.relative_to(LIB)): n for p in LIB.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_no_upward_import():
    upward = []
    for name, (path, imports) in _library().items():
        mine = _floor(name)
        for line, target in imports:
            theirs = _floor(target)
            if mine is None or theirs is None or mine == theirs:
                continue
            if FLOORS[theirs] > FLOORS[mine] or (mine, theirs) in SIBLINGS_APART:
                upward.append(f"{path.relative_to(LIB)}:{line} {name} -> {target}")
    assert not upward, "imports against the floors:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    library = _library()
    graph = {name: {t for _, t in imports if t in library and t != name
                    and not (name.startswith(t + ".") or t == "airloop")}
             for name, (_, imports) in library.items()}
    assert not _cycles(graph), _cycles(graph)


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for name, (_, imports) in _library().items():
        mine = _floor(name)
        for _, target in imports:
            theirs = _floor(target)
            if mine and theirs and mine != theirs:
                graph.setdefault(mine, set()).add(theirs)
    assert not _cycles(graph), _cycles(graph)


@pytest.mark.parametrize("where", sorted(OUTSIDE))
def test_outside_code_uses_only_its_entry_floors(where):
    root = DAGS if where == "dags" else PROVIDER
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, target in _imports(path, where):
            floor = _floor(target)
            if floor is not None and floor not in OUTSIDE[where]:
                bad.append(f"{path.name}:{line} -> {target}")
    assert not bad, f"{where} may import only {sorted(OUTSIDE[where])} of airloop:\n" + "\n".join(bad)
