"""Evaluation results: one JSON file per evaluation plus a growing Markdown table per run directory.

``record_result(run_dir, "linear_probe_pixels", {"top1": 84.1, ...}, extra={...})`` writes
``run_dir/results/linear_probe_pixels.json`` and appends one row to ``run_dir/results.md``::

    | time (UTC) | evaluation | metrics | details |
    |---|---|---|---|
    | 2026-11-23 12:00 | linear_probe_pixels | top1=84.10, top5=99.60 | extractor=pixels, dataset=fashion-mnist |

Both files are rewritten atomically (a crash leaves the previous complete version).
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

from unissl.errors import UnisslError
from unissl.utils.format import format_number, markdown_row
from unissl.utils.io import atomic_file, git_revision, write_json

TABLE_HEADER = "| time (UTC) | evaluation | metrics | details |\n|---|---|---|---|\n"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _cells(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_number(v)}" for k, v in d.items() if not isinstance(v, (dict, list))) or "-"


def record_result(run_dir: str | Path, name: str, metrics: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``results/<name>.json`` and append a row to ``results.md`` in ``run_dir``; return the JSON path.

    Args:
        run_dir: the run directory (created if missing).
        name: file-safe name of the evaluation (letters, digits, ``_.-``).
        metrics: scalar metrics shown in the table (nested values are kept in the JSON only).
        extra: details (extractor, dataset, hyperparameters, per-head numbers); scalars go into the
            table's last column, everything goes into the JSON.
    """
    if not _NAME_RE.match(name):
        raise UnisslError(f"result name {name!r} is not file-safe; use letters, digits, '_', '.' or '-'")
    run_dir = Path(run_dir)
    now = _dt.datetime.now(_dt.timezone.utc)
    payload = {"name": name, "metrics": metrics, "extra": extra or {},
               "time_utc": now.isoformat(timespec="seconds"), "git_revision": git_revision()}
    json_path = run_dir / "results" / f"{name}.json"
    write_json(json_path, payload)

    table = run_dir / "results.md"
    old = table.read_text() if table.is_file() else ""
    if not old.strip():
        old = "# Evaluation results\n\n" + TABLE_HEADER
    elif not old.endswith("\n"):
        old += "\n"
    row = markdown_row([now.strftime('%Y-%m-%d %H:%M'), name, _cells(metrics), _cells(extra or {})]) + "\n"
    with atomic_file(table, "w") as f:
        f.write(old + row)
    return json_path
