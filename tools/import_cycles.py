"""Fail when the import graph of the given packages has a cycle (`make lint`).

Every `import x` / `from x import y` in a module counts, also inside functions and under
TYPE_CHECKING: a lazy import that closes a cycle is still a cycle in the design.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # `from gateway.parse import x` depends on gateway.parse (and on gateway.parse.x if a module)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def main(roots: list[str]) -> int:
    files = {module_name(path): path for root in roots for path in sorted(Path(root).rglob("*.py"))}
    known = set(files)
    # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
    graph = {
        name: {dep for dep in imports_of(path, name, known) if not (path.name == "__init__.py" and dep.startswith(name + "."))}
        for name, path in files.items()
    }
    cycle = find_cycle(graph)
    if cycle:
        print("import cycle: " + " -> ".join(cycle))
        return 1
    print(f"no import cycle among {len(files)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gateway", "store"]))
