"""Structure statistics of the library source: the longest functions, the function-local imports, and lines of
code per package between two git revisions.

    python scripts/code_stats.py [src/unissl] [--top 10]
    python scripts/code_stats.py --packages 5d636b6 HEAD      # lines of code per package, before and after

A function's length is its line span (``end_lineno - lineno + 1``, decorators excluded, nested functions
counted inside their parent). A function-local import is an ``import``/``from ... import`` statement inside a
function body (methods included); module-level imports under ``if TYPE_CHECKING:`` are not counted.

``--packages A B``: per package of ``src/unissl`` (each sub-package, ``methods/<name>`` separately, the top-level
modules as ``unissl/*.py``) the lines of code at revision A and at B (non-blank lines that are not ``#`` comments;
docstrings count) and the lines added / removed between them (``git diff --numstat``, every line).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import defaultdict
from pathlib import Path

PACKAGE_ROOT = "src/unissl"


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


def package_of(path: str) -> str:
    """``src/unissl/methods/sorcen/x.py`` -> ``methods/sorcen``; ``src/unissl/eval/x.py`` -> ``eval``;
    ``src/unissl/cli.py`` -> ``unissl/*.py``."""
    parts = Path(path).relative_to(PACKAGE_ROOT).parts
    if len(parts) == 1:
        return "unissl/*.py"
    return "/".join(parts[:2]) if parts[0] == "methods" and len(parts) > 2 else parts[0]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def code_lines(text: str) -> int:
    """Non-blank lines that are not ``#`` comments."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def loc_by_package(rev: str) -> dict[str, int]:
    """Lines of code of every ``.py`` file under ``src/unissl`` at ``rev``, summed per package."""
    out: dict[str, int] = defaultdict(int)
    for path in _git("ls-tree", "-r", "--name-only", rev, "--", PACKAGE_ROOT).split():
        if path.endswith(".py"):
            out[package_of(path)] += code_lines(_git("show", f"{rev}:{path}"))
    return out


def churn_by_package(old: str, new: str) -> dict[str, tuple[int, int]]:
    """(added, removed) lines per package between two revisions (``.py`` files, renames followed)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in _git("diff", "--numstat", "-M", old, new, "--", PACKAGE_ROOT).splitlines():
        added, removed, path = line.split("\t", 2)
        if " => " in path:  # a rename: count it under the new name
            head, _, tail = path.partition("{")
            middle, _, rest = tail.partition("}")
            path = head + middle.split(" => ")[-1] + rest if tail else path.split(" => ")[-1]
            path = path.replace("//", "/")
        if path.endswith(".py") and added != "-":
            out[package_of(path)][0] += int(added)
            out[package_of(path)][1] += int(removed)
    return {k: (v[0], v[1]) for k, v in out.items()}


def package_table(old: str, new: str) -> str:
    """The Markdown table of lines of code per package at ``old`` and ``new`` and the churn between them."""
    before, after, churn = loc_by_package(old), loc_by_package(new), churn_by_package(old, new)
    rows = ["| package | LOC before | LOC after | change | lines added | lines removed |", "|---|---|---|---|---|---|"]
    for pkg in sorted(set(before) | set(after)):
        b, a = before.get(pkg, 0), after.get(pkg, 0)
        add, rem = churn.get(pkg, (0, 0))
        rows.append(f"| {pkg} | {b} | {a} | {a - b:+d} | {add} | {rem} |")
    tb, ta = sum(before.values()), sum(after.values())
    ca, cr = sum(v[0] for v in churn.values()), sum(v[1] for v in churn.values())
    rows.append(f"| **all** | {tb} | {ta} | {ta - tb:+d} | {ca} | {cr} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="src/unissl")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--packages", nargs=2, metavar=("OLD", "NEW"), default=None,
                    help="lines of code per package at two git revisions, and the lines added / removed")
    args = ap.parse_args()
    if args.packages:
        old, new = args.packages
        print(f"lines of code per package of {PACKAGE_ROOT} (non-blank, non-comment), {old} -> {new}")
        print(package_table(old, new))
        return
    functions, local_imports = scan(Path(args.root))
    print(f"{len(functions)} functions, {len(local_imports)} function-local import statements")
    print(f"the {args.top} longest functions (lines):")
    for length, where in sorted(functions, reverse=True)[:args.top]:
        print(f"  {length:4d}  {where}")


if __name__ == "__main__":
    main()
