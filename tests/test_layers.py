"""The layers of docs/design.md, checked on the code: who may import whom, and no import cycles.

Every import counts, the ones inside functions too (a function-level import hides a cycle from
Python, not from the design). Read with `ast`, nothing is imported."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pix3d", "relpose", "trainables", "search", "analysis", "benchmarks")

# docs/design.md, "Layers, and who may import whom": the project packages each may import
# (third-party packages are not checked here: the table lists them for readers).
MAY_IMPORT = {
    "pix3d": {"pix3d"},
    "relpose": {"relpose", "pix3d"},
    "trainables": {"trainables", "pix3d", "relpose"},
    "search": {"search", "pix3d", "relpose", "trainables", "analysis"},
    "analysis": {"analysis", "pix3d"},
    "benchmarks": set(PACKAGES),
}
# pix3d never imports these: one run works from a plain Python shell.
PIX3D_NEVER = {"ray", "mlflow"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def runtime_nodes(path: Path):
    """Every node of the file except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
               for child in node.body for n in ast.walk(child)}
    return (node for node in ast.walk(tree) if id(node) not in skipped)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (submodules resolved), inside
    functions too."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in runtime_nodes(path):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]  # `import a.b.c` names a module, or an attribute of one
            if target and target != name:
                found.add(target)
    return found


def third_party_of(path: Path) -> set[str]:
    found = set()
    for node in runtime_nodes(path):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_function_level_imports_included():
    found = cycles(import_graph())
    assert found == [], "import cycles (every import counted, function-level too): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_each_layer_imports_only_what_the_design_allows():
    wrong = []
    for module, targets in import_graph().items():
        package = module.split(".")[0]
        for target in targets:
            if target.split(".")[0] not in MAY_IMPORT[package]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports docs/design.md does not allow: " + ", ".join(sorted(wrong))


def test_pix3d_never_imports_ray_or_mlflow():
    wrong = sorted(f"{name} -> {sorted(third_party_of(path) & PIX3D_NEVER)}"
                   for name, path in project_modules().items()
                   if name.split(".")[0] == "pix3d" and third_party_of(path) & PIX3D_NEVER)
    assert wrong == []


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    """The checker itself can fail: two modules that import each other, one inside a function."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from search import run\n"
    path = tmp_path / "x.py"
    path.write_text(source)
    assert imports_of("analysis.x", path, {"search.run": path, "search": path}) == {"search.run"}


def test_no_module_is_over_400_lines_and_each_says_what_it_owns():
    """docs/design.md: no module over 400 lines; each opens with a docstring saying what it owns."""
    long = {name: n for name, path in project_modules().items()
            if (n := len(path.read_text().splitlines())) > 400}
    bare = sorted(name for name, path in project_modules().items()
                  if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text())))
    assert long == {} and bare == [], (long, bare)
