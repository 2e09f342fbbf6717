"""`unissl report <run-dir>`: one self-contained HTML page (and Markdown) of a run directory."""

from __future__ import annotations

from dataclasses import dataclass

from unissl.config import arg
from unissl.report import write_report


@dataclass
class Config:
    """Write report/report.html and report/report.md inside a run directory."""

    run_dir: str = arg(positional=True, output="dir", help="the run directory to report on (e.g. runs/digits-quick)")


def run(cfg: Config) -> None:
    html, md = write_report(cfg.run_dir)
    print(f"report: {html}")
    print(f"markdown: {md}")
