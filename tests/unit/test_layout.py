"""The house's zoning (DESIGN §1) as a test: imports flow down the wings, and nothing imports in a circle.

    entry       launch.py: a table of subcommands
    studies     studies/: sweep, report, advise, eval / filter        may import anything below
    supervisor  launcher/: plan, back-ends, watch, collector          names roles by module string
    roles       buffer/ actors/ learner/ prepare/                     one process each
    floor       configs/ wire/ sync/ kernels/ tasks/ telemetry/ runtime/

The rules: the floor imports no role, supervisor, study or entry; a role imports no other role, nor the
supervisor, the studies or the entry; the supervisor imports no role and no study; launch.py imports no role.
No two packages and no two files import each other in a circle. Every import of the project's own code names
it as `asyncor.<folder>...`. Imports inside functions count: they are dependencies too.

The walker reads the source with `ast`, nothing is imported. `ASYNCOR_LAYOUT_ROOT=DIR` points it at another
checkout (bare `from wire.x import ...` imports of an older tree are read as `asyncor.wire.x`).
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("ASYNCOR_LAYOUT_ROOT") or Path(__file__).resolve().parents[2])
WINGS = {
    "floor": ("configs", "wire", "sync", "kernels", "tasks", "telemetry", "runtime"),
    "role": ("buffer", "actors", "learner", "prepare"),
    "supervisor": ("launcher",),
    "studies": ("studies",),
    "entry": ("launch",),
}
WING_OF = {package: wing for wing, packages in WINGS.items() for package in packages}
FORBIDDEN = {  # wing -> wings it must not import (a role must not import another role either: see below)
    "floor": {"role", "supervisor", "studies", "entry"},
    "role": {"supervisor", "studies", "entry"},
    "supervisor": {"role", "studies", "entry"},
    "studies": {"entry"},
    "entry": {"role"},
}


def modules() -> dict[str, Path]:
    """Every module of the product: `asyncor.<folder>.<file>` -> its path (tests, benchmarks and scripts aside)."""
    found = {"asyncor.launch": ROOT / "launch.py"}
    for package in WING_OF:
        folder = ROOT / package
        if folder.is_dir():
            for path in sorted(folder.rglob("*.py")):
                parts = path.relative_to(ROOT).with_suffix("").parts
                found[".".join(("asyncor",) + parts).removesuffix(".__init__")] = path
    return found


MODULES = modules()


def canonical(name: str) -> str | None:
    """The project module (or package) `name` refers to, as `asyncor....`; None for third-party names."""
    head = name.split(".")[0]
    if head == "asyncor":
        return name
    if head in WING_OF:  # an older tree's bare spelling
        return "asyncor." + name
    return None


def imports(path: Path) -> list[tuple[str, str, int]]:
    """(written name, project module, line) of every import of project code in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from asyncor.learner import checkpoint` imports the module asyncor.learner.checkpoint
            names = [f"{node.module}.{a.name}" if f"{canonical(node.module)}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for written in names:
            target = canonical(written)
            while target is not None and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]  # a name inside a module -> the module
            if target is not None and target in MODULES:
                out.append((written, target, node.lineno))
    return out


def package_of(module: str) -> str:
    return module.split(".")[1]


def edges() -> list[tuple[str, str, str, int]]:
    """(importer module, imported module, written name, line), self-imports of a package's own files included."""
    return [(m, target, written, line) for m, path in MODULES.items() for written, target, line in imports(path)
            if target != m]


EDGES = edges()


def test_the_walker_sees_the_house():
    assert {"asyncor.buffer.service", "asyncor.launcher.run", "asyncor.wire.envelope", "asyncor.launch"} <= set(MODULES)
    assert ("asyncor.buffer.service", "asyncor.buffer.staleness") in {(a, b) for a, b, _, _ in EDGES}


def test_own_code_is_imported_as_asyncor():
    bare = {f"{MODULES[m].relative_to(ROOT)}:{line} imports {written}" for m, _, written, line in EDGES
            if not written.startswith("asyncor")}
    assert not bare, "import the project's code as asyncor.<folder>...:\n" + "\n".join(sorted(bare))


def test_imports_flow_down_the_wings():
    crossings = set()
    for importer, imported, written, line in EDGES:
        a, b = package_of(importer), package_of(imported)
        if a == b:
            continue
        wing_a, wing_b = WING_OF[a], WING_OF[b]
        if wing_b in FORBIDDEN[wing_a] or (wing_a == wing_b == "role"):
            crossings.add(f"{MODULES[importer].relative_to(ROOT)}:{line} ({wing_a}) imports {written} ({wing_b})")
    assert not crossings, "imports that cross the wings of DESIGN §1:\n" + "\n".join(sorted(crossings))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("level", ["package", "file"])
def test_no_circles(level: str):
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported, _, _ in EDGES:
        a, b = (package_of(importer), package_of(imported)) if level == "package" else (importer, imported)
        if a != b:
            graph[a].add(b)
    found = circles(graph)
    assert not found, f"{level}s that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)
