"""One number formatter and one Markdown table writer for every human-readable table (results.md, study.md,
the report). The JSON files beside them keep the full values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def format_number(value: Any, significant: int | None = None) -> str:
    """A compact cell text. Floats: at most 4 decimals (4 significant digits below 0.01 and from 1e5 on), or
    ``significant`` significant digits (the summaries' short form, whole numbers from 1e4 on); lists joined by
    commas; everything else via ``str``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if significant is not None:
            return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.{significant}g}"
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(format_number(v, significant) for v in value)
    return str(value)


def markdown_row(cells: Sequence[Any]) -> str:
    """``| a | b |`` with each cell formatted and its ``|`` / newlines escaped."""
    return "| " + " | ".join(format_number(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: header, separator, one line per row."""
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(r) for r in rows)]
