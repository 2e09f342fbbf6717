"""Structure statistics of the library source: the longest functions and the function-local imports.

    python scripts/code_stats.py [src/unissl] [--top 10]

A function's length is its line span (``end_lineno - lineno + 1``, decorators excluded, nested functions
counted inside their parent). A function-local import is an ``import``/``from ... import`` statement inside a
function body (methods included); module-level imports under ``if TYPE_CHECKING:`` are not counted.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def scan(root: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """(length, "path:line name") per function, and "path:line" per function-local import."""
    functions: list[tuple[int, str]] = []
    local_imports: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and inner is not node:
                        local_imports.append(f"{rel}:{inner.lineno}")
    return functions, sorted(set(local_imports))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="src/unissl")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    functions, local_imports = scan(Path(args.root))
    print(f"{len(functions)} functions, {len(local_imports)} function-local import statements")
    print(f"the {args.top} longest functions (lines):")
    for length, where in sorted(functions, reverse=True)[:args.top]:
        print(f"  {length:4d}  {where}")


if __name__ == "__main__":
    main()
