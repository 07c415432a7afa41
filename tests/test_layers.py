"""The package's layers: every module imports only from its own layer or below, and there are no
import cycles between modules (read from the source, imports inside functions included)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tvmlib"
# bottom up; a module may import from its own layer or a lower one
LAYERS = {"utils": 0, "core": 1, "nn": 1, "kernels": 1, "data": 2, "training": 3,
          "evaluation": 4, "experiments": 5, "teach": 6, "apps": 7}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """tvmlib modules imported by ``path`` (``from tvmlib.x import y``: y too, if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tvmlib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tvmlib"):
            found.add(node.module)
            for a in node.names:
                sub = PACKAGE.parent / Path(*f"{node.module}.{a.name}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    found.add(f"{node.module}.{a.name}")
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) & set(MODULES) for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    loose = [n for n in MODULES if n != "tvmlib" and layer(n) is None]
    assert not loose, f"modules outside the layer folders {sorted(LAYERS)}: {loose}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "tvmlib"))
def test_imports_go_down_the_layers(name):
    up = sorted(m for m in GRAPH[name] if m != "tvmlib" and layer(m) > layer(name))
    assert not up, f"{name} (layer {layer(name)}) imports higher layers: {up}"


def test_no_import_cycles():
    def visit(node, path, seen):
        for nxt in GRAPH[node]:
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                # a package importing its own submodules (its __init__) is not a cycle
                if not all(a.startswith(b + ".") or b.startswith(a + ".")
                           for a, b in zip(cycle, cycle[1:])):
                    raise AssertionError(" -> ".join(cycle))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, path + [nxt], seen)

    for name in MODULES:
        visit(name, [name], {name})


def test_notebooks_import_the_library_not_the_applications():
    import json
    import re

    pattern = re.compile(r"^\s*(from|import)\s+tvmlib\.apps\b", re.M)
    for nb in sorted((PACKAGE.parent / "notebooks").glob("**/*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                         if c["cell_type"] == "code")
        assert not pattern.search(code), f"{nb.name} imports an application module"
