"""The house's layout: `compiler/` is layered subpackages with one-way imports and no cycles.

Imports are read with `ast` from every module (imports inside functions count too: a lazy
import is still a dependency). The layers, bottom first, are the ones docs/architecture.md
draws; a module may import its own package and the packages below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[2]

# bottom first; packages on one line of this list may not import each other
LAYERS = (
    ("core",),
    ("schema",),
    ("analysis",),
    ("reading",),
    ("planning",),
    ("output",),
    ("review", "authoring"),
    ("cli",),
)
RANK = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
FORBIDDEN_IN_COMPILER = ("runtime", "torch", "transformers", "coremltools", "ray", "numpy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module this file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph(root: str) -> nx.DiGraph:
    modules = {_module_name(p): p for p in (REPO / root).rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(path):
            if target in modules and target != name:
                g.add_edge(name, target)
    return g


def _not_parent_package(g: nx.DiGraph) -> nx.DiGraph:
    """Edges to one's own package `__init__` (a side effect of importing any submodule) are not dependencies."""
    return nx.DiGraph([(a, b) for a, b in g.edges if not a.startswith(b + ".")])


@pytest.mark.parametrize("root", ["compiler", "runtime"])
def test_no_import_cycles(root):
    g = _not_parent_package(_graph(root))
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles in {root}/: {cycles}"


def test_compiler_is_layered_one_way():
    wrong = []
    for path in (REPO / "compiler").rglob("*.py"):
        name = _module_name(path)
        parts = name.split(".")
        if len(parts) < 3 and path.name != "__init__.py":
            wrong.append(f"{name}: a module directly in compiler/ (put it in the subpackage that says what it is)")
            continue
        if len(parts) < 2:
            continue
        own = parts[1]
        assert own in RANK, f"compiler/{own}/ is not in the layer list of this test and docs/architecture.md"
        for target in _imports(path):
            tparts = target.split(".")
            if tparts[0] in FORBIDDEN_IN_COMPILER:
                wrong.append(f"{name} imports {target} (the compiler never imports the runtime or heavy libraries)")
            if tparts[0] != "compiler" or len(tparts) < 2 or tparts[1] == own:
                continue
            other = tparts[1]
            if RANK.get(other, -1) >= RANK[own]:
                wrong.append(f"{name} ({own}, layer {RANK[own]}) imports {target} ({other}, layer {RANK.get(other)})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_layers_are_the_ones_the_docs_draw():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for names in LAYERS:
        for pkg in names:
            assert f"`compiler/{pkg}/`" in text, f"docs/architecture.md does not describe compiler/{pkg}/"
    on_disk = {p.name for p in (REPO / "compiler").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(RANK), f"subpackages on disk {sorted(on_disk)} != layers {sorted(RANK)}"
