"""The project's import graph, read from the source with ``ast`` (imports inside functions included; those under
``if TYPE_CHECKING:`` left out, as they never run), and the
checks ARCHITECTURE.md states: no layer imports a layer above it, no circle between modules.

The layers are read from ``pyproject.toml``'s ``[tool.importlinter]`` contracts, the same ones ``lint-imports``
enforces, so the two checks cannot drift apart.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file)."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def contracts(root: Path = ROOT) -> list[dict]:
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config["contracts"]


def _layer_of(module: str, contract: dict) -> int | None:
    containers = contract.get("containers") or [""]
    for container in containers:
        prefix = f"{container}." if container else ""
        for index, layer in enumerate(contract["layers"]):
            for name in (n.strip() for n in layer.split("|")):
                full = prefix + name
                if module == full or module.startswith(full + "."):
                    return index
    return None


def layer_violations(graph: dict[str, set[str]], contract: dict) -> list[str]:
    """``importer -> imported`` for each import from a lower layer (higher index) to a higher one."""
    out = []
    for importer, imported in graph.items():
        low = _layer_of(importer, contract)
        for target in imported:
            high = _layer_of(target, contract)
            if low is not None and high is not None and high < low:
                out.append(f"{importer} -> {target}")
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
