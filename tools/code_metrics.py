"""Code-shape figures for the architecture issue: longest function and module, public names
without a docstring, lines over 110 characters, and import cycles (function-level imports
included; ``if TYPE_CHECKING:`` imports left out, since they never run).

    python tools/code_metrics.py [--package sae_circuits]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import networkx as nx


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in ``base`` itself
                found.add(base)
    return {name for name in found if name in known and name != module}


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function after its docstring (the code a reader has to follow)."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    first = body[1] if has_doc and len(body) > 1 else body[0]
    return (node.end_lineno or first.lineno) - first.lineno + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="sae_circuits")
    root = Path(parser.parse_args().package)
    files = sorted(root.rglob("*.py"))
    trees = {path: ast.parse(path.read_text()) for path in files}
    modules = {_module_name(path, root): path for path in files}
    longest_fn = max(
        (
            (node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}")
            for path, tree in trees.items()
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno
        ),
    )
    longest_code = max(
        (_code_lines(node), f"{path}:{node.lineno} {node.name}")
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    )
    longest_module = max((len(path.read_text().splitlines()), str(path)) for path in files)
    public, undocumented = 0, []
    for path, tree in trees.items():
        if any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(root).parts):
            continue
        for node in tree.body:
            for item in [node, *(node.body if isinstance(node, ast.ClassDef) else [])]:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    if item.name.startswith("_"):
                        continue
                    public += 1
                    if ast.get_docstring(item) is None:
                        undocumented.append(f"{path}:{item.lineno} {item.name}")
    long_lines = sum(len(line) > 110 for path in files for line in path.read_text().splitlines())
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _imports(trees[path], name, path.name == "__init__.py", set(modules)):
            graph.add_edge(name, target)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    print(f"modules: {len(files)}; longest module: {longest_module[0]} lines ({longest_module[1]})")
    print(f"longest function: {longest_fn[0]} lines ({longest_fn[1]})")
    print(f"longest function without its docstring: {longest_code[0]} lines ({longest_code[1]})")
    print(f"public functions/classes/methods: {public}; without a docstring: {len(undocumented)}")
    for item in undocumented:
        print(f"  {item}")
    print(f"lines over 110 characters: {long_lines}")
    print(f"import cycles (strongly connected groups of modules): {len(cycles)}")
    for cycle in cycles:
        print(f"  {' <-> '.join(cycle)}")


if __name__ == "__main__":
    main()
