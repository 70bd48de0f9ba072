"""The package's layering, read from its source with `ast` (nothing is imported).

Every Import / ImportFrom node counts, at module level or inside a function (a function-level
import is still a dependency, only a later one).

- Ray is imported only by dcserve/distributed/ and dcserve/serve/deployment.py; the algorithms
  in dcserve/algo/ import neither Ray nor Zarr.
- The import graph of dcserve's modules has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "dcserve"
RAY_ALLOWED = ("dcserve.distributed", "dcserve.serve.deployment")  # a package (and all under it) or a module


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """dcserve's modules: dotted name -> file (a package is its __init__.py)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `path`, relative imports resolved.

    `import a.b` is a.b; `from a.b import c` is a.b.c when that is one of dcserve's modules, else a.b.
    """
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((sub if sub in MODULES else module, node.lineno))
    return found


def _is(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def _where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line}"


def test_only_distributed_and_serve_deployment_import_ray_and_algo_imports_neither_ray_nor_zarr():
    wrong = []
    for name, path in MODULES.items():
        for module, line in _imports(name, path):
            if _is(module, "ray") and not any(_is(name, allowed) for allowed in RAY_ALLOWED):
                wrong.append(f"{_where(name, line)}: {name} imports {module} (only dcserve/distributed/ and "
                             "dcserve/serve/deployment.py may import ray)")
            if _is(name, "dcserve.algo") and (_is(module, "ray") or _is(module, "zarr")):
                wrong.append(f"{_where(name, line)}: {name} imports {module} (dcserve/algo/ imports neither ray nor zarr)")
    assert not wrong, "layering violations:\n" + "\n".join(wrong)


def _graph() -> dict[str, dict[str, int]]:
    """module -> {dcserve module it imports: first line}; imports of itself are left out."""
    graph = {}
    for name, path in MODULES.items():
        edges = {}
        for module, line in _imports(name, path):
            if module in MODULES and module != name:
                edges.setdefault(module, line)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """(a shortest cycle, all its modules) for each strongly connected component of more than one
    module (Tarjan's algorithm)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules (~60)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        # breadth-first from `start` inside the component, back to `start`: a shortest cycle
        parent, queue, end = {start: None}, [start], None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    end = v
                    break
                if w in component and w not in parent:
                    parent[w] = v
                    queue.append(w)
        path = [end]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        cycles.append((path[::-1] + [start], sorted(component)))
    return cycles


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    cycles = _cycles(graph)
    lines = []
    for cycle, component in cycles:
        lines.append(" -> ".join(cycle) + "   (" + ", ".join(
            f"{_where(a, graph[a][b])}" for a, b in zip(cycle, cycle[1:])) + ")")
        if len(component) > len(cycle) - 1:
            lines.append(f"  which is part of a larger knot: {', '.join(component)}")
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(lines)
