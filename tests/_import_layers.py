"""The project's import graph, read from the source with `ast` (nothing is imported): who imports whom, and the two
rules the layout keeps.

- **Layers.** `modeling_mmmmodal` (the files shipped with every checkpoint) < `processing` (the data side) <
  `mmmmodal` (the command and its apps) < `benchmarks`, `examples` < `tests`. A module imports from its own layer
  or a lower one, never upward.
- **No circles.** No two project modules import each other, directly or through others. Imports inside functions
  count too: a lazy import hides a circle from Python's import machinery, not from a reader.
- **Deprecated aliases** (`DEPRECATED`: old paths that re-export code which moved, with a FutureWarning) may import
  upward, since the code they name now lives higher up; no project module imports them.

    python tests/_import_layers.py        # prints every upward import and every circle; exits 1 if there is one
"""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"modeling_mmmmodal": 0, "processing": 1, "mmmmodal": 2, "benchmarks": 3, "examples": 3, "tests": 4}
DEPRECATED = {"processing.collate": "mmmmodal.training", "processing.packing": "mmmmodal.training.packing"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every .py file under the layered top-level folders (not tests/data/, which holds
    frozen copies of old code files inside a saved checkpoint)."""
    return {module_name(path, root): path for top in LAYERS for path in sorted((root / top).rglob("*.py"))
            if "__pycache__" not in path.parts and not path.relative_to(root).parts[:2] == ("tests", "data")}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name `from <...> import` names in `module` (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in the file. `from pkg import name` counts as importing the
    submodule `pkg.name` when there is one, else `pkg`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a non-module tail: the deepest module named
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def upward_imports(graph: dict[str, set[str]], deprecated=DEPRECATED) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a) and a not in deprecated)


def deprecated_imports(graph: dict[str, set[str]], deprecated=DEPRECATED) -> list[tuple[str, str]]:
    """Project modules that still import an old path instead of where its code lives now."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if b in deprecated)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
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
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def main() -> int:
    graph = import_graph()
    upward, groups, old = upward_imports(graph), circles(graph), deprecated_imports(graph)
    for a, b in upward:
        print(f"upward: {a} (layer {layer(a)}) imports {b} (layer {layer(b)})")
    for a, b in old:
        print(f"deprecated: {a} imports {b} (now {DEPRECATED[b]})")
    for group in groups:
        print("circle: " + " <-> ".join(group))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports: "
          f"{len(upward)} upward, {len(groups)} circle(s), {len(old)} of a deprecated path")
    return 1 if upward or groups or old else 0


if __name__ == "__main__":
    sys.exit(main())
