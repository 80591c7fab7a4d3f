"""Read a package's imports from its source (``ast``) and judge them against its layers.

A module may import its own layer and the layers below it, never one above; no group of
modules may import each other in a cycle. Imports inside functions count too: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(package_dir: Path, path: Path) -> str:
    """``colo_fixtures/lab/embedded.py`` → ``colo_fixtures.lab.embedded`` (a package's
    ``__init__`` → the package)."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Every module of the package → the package's modules it imports."""
    files = {module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module, node.level)
                for alias in node.names:  # ``from pkg import module`` names a module
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files
                                else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _absolute(name: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = name.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[:len(anchor) - (level - 1)]
    return ".".join([*anchor, module] if module else anchor)


def layer_of(module: str, root: str, layers: tuple[str, ...]) -> int | None:
    """The index of the layer ``module`` belongs to (None: the package root itself)."""
    rest = module.removeprefix(root).lstrip(".").split(".")[0]
    return layers.index(rest) if rest in layers else None


def upward_imports(graph: dict[str, set[str]], root: str,
                   layers: tuple[str, ...]) -> list[str]:
    """One line per import of a higher layer, and per module that is in no layer."""
    found = []
    for module, targets in sorted(graph.items()):
        if module == root:
            continue
        mine = layer_of(module, root, layers)
        if mine is None:
            found.append(f"{module} is in no layer (one of: {', '.join(layers)})")
            continue
        for target in sorted(targets):
            theirs = layer_of(target, root, layers)
            if theirs is not None and theirs > mine:
                found.append(f"{module} ({layers[mine]}) imports {target} "
                             f"({layers[theirs]}, a higher layer)")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import one another, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
