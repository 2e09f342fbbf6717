"""scripts/code_stats.py: the package of a path, lines of code, and the per-package table of two revisions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from code_stats import code_lines, package_of  # noqa: E402


def test_packages_and_code_lines() -> None:
    assert package_of("src/unissl/methods/sorcen/method.py") == "methods/sorcen"
    assert package_of("src/unissl/methods/__init__.py") == "methods"
    assert package_of("src/unissl/engine/trainer.py") == "engine"
    assert package_of("src/unissl/cli.py") == "unissl/*.py"
    text = '"""Doc."""\n\n# a comment\nimport os  # trailing\n\n    \ndef f():\n    return 1\n'
    assert code_lines(text) == 4  # the docstring, the import, the def, the return


def test_package_table_between_two_revisions_adds_up() -> None:
    """The table of HEAD against itself: no change anywhere, and the total is the sum of the rows."""
    out = subprocess.run([sys.executable, "scripts/code_stats.py", "--packages", "HEAD", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    body = [[c.strip() for c in r] for r in rows[1:]]
    total = body.pop()
    assert total[0] == "**all**" and body
    assert all(r[1] == r[2] and r[3] == "+0" and r[4] == r[5] == "0" for r in body)
    assert int(total[1]) == sum(int(r[1]) for r in body) > 1000
