"""Across-seed summary of a multi-seed pipeline: every metric as mean, spread and per-seed values.

A multi-seed pipeline (``seeds: [0, 1, 2]`` in its YAML) writes one directory per seed, ``<out>/seed<s>``.
:func:`summarize` reads the same evaluation results in each of them, plus the wall-clock of every training
run (seconds per epoch, from its ``log.jsonl``) and of every stage, and writes ``<out>/study.json`` and
``<out>/study.md``. The spread is the sample standard deviation over seeds (ddof = 1).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any, NamedTuple

from unissl.engine.logger import read_log
from unissl.errors import UnisslError
from unissl.report import collect_metrics, result_origins
from unissl.utils.format import format_number, markdown_table
from unissl.utils.io import atomic_file, write_json

_SEED_DIR = re.compile(r"^seed(-?\d+)$")
_SETTINGS = {"steps", "num_images", "num_samples", "seed"}  # counts and settings stored next to metrics


def seed_dirs(out: str | Path) -> dict[int, Path]:
    """``{seed: directory}`` of the per-seed directories of a study, sorted by seed."""
    out = Path(out)
    found = {int(m.group(1)): p for p in out.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name))}
    return dict(sorted(found.items()))


def _seconds_per_epoch(run_dir: Path) -> dict[str, float]:
    """Training seconds per epoch of every run below ``run_dir`` (CPU seconds where the log has them), from
    the last record of its log."""
    times: dict[str, float] = {}
    for log in sorted(run_dir.rglob("log.jsonl")):
        rows = read_log(log)
        # CPU seconds of the training process when logged (immune to other processes on a shared machine),
        # else wall-clock seconds
        key = "cpu_elapsed" if rows and "cpu_elapsed" in rows[-1] else "elapsed"
        if rows and rows[-1].get("epoch") and key in rows[-1]:
            times[str(log.parent.relative_to(run_dir))] = float(rows[-1][key]) / float(rows[-1]["epoch"])
    return times


class MetricKey(NamedTuple):
    """Where a number comes from (a result name, a run, a file) and what it measures."""

    source: str
    metric: str


def seed_metrics(run_dir: Path) -> dict[MetricKey, float]:
    """Every numeric metric of one seed's directory, keyed by (source, metric)."""
    flat: dict[MetricKey, float] = {}
    found = collect_metrics(run_dir)
    for origin, (rel, scalars) in zip(result_origins(found), found):
        # a result is known by its name, unless several directories record results under the same name
        if origin is None:
            source = str(scalars.get("name", rel))
        else:
            source = f"{origin} {scalars['name']}"  # e.g. "rec-l0 reptok-reconstruction"
        is_record = any(k.startswith("metrics.") for k in scalars)  # a flat legacy file has no "metrics" part
        for k, v in scalars.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if is_record and not k.startswith("metrics."):
                continue  # "extra" fields of a result are settings, not measurements
            if k.removeprefix("metrics.") in _SETTINGS:
                continue
            flat[MetricKey(source, k.removeprefix("metrics."))] = float(v)
    for key, seconds in _seconds_per_epoch(run_dir).items():
        flat[MetricKey(f"train {key}", "seconds_per_epoch")] = seconds
    for marker in sorted((run_dir / "stages").glob("*.json")):
        try:
            record = json.loads(marker.read_text())
        except json.JSONDecodeError:
            continue
        seconds = record.get("seconds")
        if record.get("status") == "done" and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            flat[MetricKey(f"stage {marker.stem}", "seconds")] = float(seconds)  # an adopted record may have no time
    return flat


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(out: str | Path) -> dict[str, Any]:
    """Write ``study.json`` and ``study.md`` for the seed directories of ``out``; returns the summary."""
    out = Path(out)
    if not out.is_dir():
        raise UnisslError(f"study directory {out} not found")
    dirs = seed_dirs(out)
    if not dirs:
        raise UnisslError(f"no seed<N> directories in {out}; run the pipeline with `seeds: [...]` first")
    per_seed = {s: seed_metrics(d) for s, d in dirs.items()}
    keys = sorted(set().union(*per_seed.values()))
    rows: list[dict[str, Any]] = []
    for key in keys:
        vals = {s: m[key] for s, m in per_seed.items() if key in m}
        mean, std = mean_std(list(vals.values()))
        rows.append({"source": key.source, "metric": key.metric, "mean": mean, "std": std, "n": len(vals),
                     "values": {str(s): v for s, v in vals.items()}})
    summary = {"seeds": list(dirs), "rows": rows}
    write_json(out / "study.json", summary)
    seeds = list(dirs)
    lines = [f"# Study summary: {out.name}", "",
             f"Seeds {seeds}; mean ± sample std over the seeds that have the metric (n).", "",
             *markdown_table(["source", "metric", "mean ± std", "n", *(f"seed {s}" for s in seeds)],
                             [[r["source"], r["metric"], f"{format_number(r['mean'], 4)} ± {format_number(r['std'], 4)}",
                               r["n"], *(format_number(r["values"][str(s)], 4) if str(s) in r["values"] else ""
                                         for s in seeds)] for r in rows])]
    with atomic_file(out / "study.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


