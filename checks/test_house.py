"""The workshop's own code keeps its shape: who imports whom is a tree."""

from __future__ import annotations

import ast
from pathlib import Path

from workshop.lessons import ROOT

PACKAGES = ("workshop", "bench", "checks")


def imports_of(path: Path, package: str) -> set[str]:
    """The workshop modules a file imports (absolute or relative), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = f"{package}.{node.module}" if node.level and node.module else package if node.level else node.module
            if base and base.split(".")[0] in PACKAGES:
                found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES}
    return found


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import circle in {module: modules it imports}, as a path, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]):
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph.get(name, ())):
            if found := visit(dep, path + [name]):
                return found
        done.add(name)
        return None

    return next((found for name in sorted(graph) if (found := visit(name, []))), None)


def test_no_import_circle():
    modules = {f"{pkg}.{p.stem}" if p.stem != "__init__" else pkg: (p, pkg)
               for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    assert len(modules) > 20, f"only {len(modules)} modules found: is the walk looking in the right place?"
    graph = {name: imports_of(path, pkg) & set(modules) - {name} for name, (path, pkg) in modules.items()}
    found = circle(graph)
    assert not found, f"an import circle: {' -> '.join(found)}"


def test_the_circle_check_sees_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("from workshop import a\n")
    graph = {"workshop.a": imports_of(tmp_path / "a.py", "workshop") - {"workshop.b.x"},
             "workshop.b": imports_of(tmp_path / "b.py", "workshop") - {"workshop"}}
    assert circle(graph) == ["workshop.a", "workshop.b", "workshop.a"]
