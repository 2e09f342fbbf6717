"""One number formatter and one Markdown table writer for every human-readable table (results.md, study.md,
the report). The JSON files beside them keep the full values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def format_number(value: Any) -> str:
    """A compact cell text: floats with 4 significant digits (whole numbers from 1e4 on), lists joined by
    commas, everything else via ``str``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_number(v) for v in value)
    return str(value)


def markdown_row(cells: Sequence[Any]) -> str:
    """``| a | b |`` with each cell formatted and its ``|`` / newlines escaped."""
    return "| " + " | ".join(format_number(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: header, separator, one line per row."""
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(r) for r in rows)]
