"""The layout of nerve's code (README, "How it is built"): no import cycle, imports only
downward by part, and no module too large to read.

Every module of ``nerved/`` and ``nervectl/`` is parsed (nothing is imported), and every
import statement counts, at any depth: inside a function, under ``if TYPE_CHECKING:``
(a cycle a type checker follows is still a cycle for whoever reads the code).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("nerved", "nervectl")
MAX_LINES = 500

# Modules others are shrinking now; the lead removes them from this list once they fit.
TOO_LARGE_FOR_NOW: set[str] = set()

PARTS = (
    "nerved.master",
    "nerved.worker",
    "nerved.code",
    "nerved.containment",
    "nerved.control",
    "nerved.store",
    "nerved.config",
)
SHARED_LEAVES = tuple(
    f"nerved.{name}"
    for name in (
        "channel",
        "wire",
        "states",
        "outcome",
        "loop",
        "process",
        "paths",
        "logs",
        "journal",
        "credentials",
        "words",
    )
)


@dataclass(frozen=True)
class Module:
    name: str  # nerved.control.server
    path: Path
    is_package: bool

    @property
    def relative(self) -> str:
        return self.path.relative_to(REPO).as_posix()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the module of nerve's it imports (the longest known prefix)
    line: int


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The module of nerve's that importing ``name`` runs last: ``name`` itself, or the
    package it is an attribute of (``nerved.store.Store`` is ``nerved.store``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: Module) -> Iterator[Import]:
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from nerved.control import server``: the submodule; ``from nerved.store
            # import Store``: the package.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            known = _known(target)
            if known is not None and known != module.name:
                yield Import(module.name, known, node.lineno)


IMPORTS = [imp for module in MODULES.values() for imp in _imports(module)]


def _within(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def _cycles() -> list[list[str]]:
    """One cycle per strongly connected component of the import graph (Tarjan's), as the
    modules met going round it."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for name in sorted(graph):
        if name not in index:
            visit(name)

    cycles = []
    for component in components:
        start = min(component)
        # A shortest way back to ``start`` inside the component (breadth first).
        came_from: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following = []
            for node in frontier:
                for nxt in sorted(graph[node] & component):
                    if nxt not in came_from:
                        came_from[nxt] = node
                        following.append(nxt)
            frontier = following
        path = [start]
        node = came_from[start]
        while node != start:
            path.append(node)
            node = came_from[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_the_parse_sees_the_layout() -> None:
    """A guard for the test itself: it found the modules and the imports it judges."""
    assert "nerved.master.daemon" in MODULES
    assert "nervectl.cli" in MODULES
    assert any(
        imp.source == "nerved.cli" and _within(imp.target, "nerved.master") for imp in IMPORTS
    )
    # imports under TYPE_CHECKING and inside functions count
    assert any(imp.source == "nerved" and imp.target == "nerved.api" for imp in IMPORTS)
    assert any(imp.source == "nerved.cli" and imp.target == "nerved.code.check" for imp in IMPORTS)


def test_no_import_cycle() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# (importer, what it must not import, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("nerved.worker", ("nerved.master", "nerved.control"), "a worker runs after the fork"),
    (
        "nerved.store",
        ("nerved.master", "nerved.worker", "nerved.control", "nerved.config", "nerved.code"),
        "the store is below every part that uses it",
    ),
    ("nerved.control", ("nerved.master", "nerved.worker"), "control sees the daemon as an Engine"),
    (
        "nervectl",
        (
            "nerved.master",
            "nerved.store",
            "nerved.control",
            "nerved.worker",
            "nerved.containment",
            "nerved.code",
        ),
        "the client speaks to the daemon over the socket only",
    ),
    *[(leaf, PARTS, "a shared leaf is below every part") for leaf in SHARED_LEAVES],
]


def _breaches(source_part: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{MODULES[imp.source].relative}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if _within(imp.source, source_part) and any(_within(imp.target, part) for part in forbidden)
    ]


@pytest.mark.parametrize(
    ("source_part", "forbidden", "why"), RULES, ids=[rule[0] for rule in RULES]
)
def test_imports_go_down(source_part: str, forbidden: tuple[str, ...], why: str) -> None:
    assert any(_within(name, source_part) for name in MODULES), f"no {source_part}: update the rule"
    breaches = _breaches(source_part, forbidden)
    assert not breaches, f"{why}:\n" + "\n".join(breaches)


def test_nothing_but_the_entry_point_imports_the_master() -> None:
    breaches = [
        f"{MODULES[imp.source].relative}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if _within(imp.target, "nerved.master")
        and not _within(imp.source, "nerved.master")
        and imp.source != "nerved.cli"
    ]
    assert not breaches, "only nerved/cli.py may import nerved.master:\n" + "\n".join(breaches)


def test_no_module_is_too_large() -> None:
    sizes = {
        module.relative: len(module.path.read_text().splitlines()) for module in MODULES.values()
    }
    too_large = [
        f"{path}: {lines} lines"
        for path, lines in sorted(sizes.items())
        if lines > MAX_LINES and path not in TOO_LARGE_FOR_NOW
    ]
    assert not too_large, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(
        too_large
    )
    stale = sorted(path for path in TOO_LARGE_FOR_NOW if sizes.get(path, 0) <= MAX_LINES)
    assert not stale, f"fit now, take them off TOO_LARGE_FOR_NOW: {stale}"
