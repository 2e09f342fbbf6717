"""``unissl eval verdict``: does a paper's claim "A beats B" reproduce in a multi-seed study?

Reads the result ``--a`` and the result ``--b`` (names of ``results/<name>.json`` written by any evaluation) in
every ``seed<N>`` directory of ``--study``, takes ``--metric`` from each, and prints and records:

* per arm: the mean over seeds with its 95% t interval, n, and each seed's value (with its bootstrap interval
  over samples where the result holds one, ``<metric>_ci_low`` / ``_ci_high``);
* the verdict line: the interval of ``A - B`` over seeds (Welch's t), or over samples (the difference of the two
  results' bootstrap draws) when each arm has a single seed; entirely on A's better side: "reproduces",
  entirely on the other: "does not reproduce", containing 0: "cannot tell";
* beside it, when every seed of both arms holds bootstrap draws, the interval of ``A - B`` from a two-level
  bootstrap over seeds and samples (:func:`unissl.eval.bootstrap.two_level_interval`).

The result goes to ``<study>/results/verdict-<a>-vs-<b>-<metric>.json`` and ``<study>/results.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unissl.config import arg
from unissl.errors import UnisslError
from unissl.eval.results import record_result


@dataclass
class Config:
    """The verdict on "A beats B" from the per-seed results of a study."""

    study: str = arg(help="a multi-seed pipeline's directory (with seed<N>/ directories)")
    a: str = arg(help="result name of the claimed-better arm, e.g. fd-sorcen (results/<name>.json in each seed)")
    b: str = arg(help="result name of the baseline arm, e.g. fd-mage")
    metric: str = arg(help="metric of both results, e.g. FD_domain, probe_top1, top1")
    lower_is_better: bool = arg(False, help="lower values are better (FD); default: higher (accuracies)")
    paper: str = arg("", help="the paper's numbers, quoted in the verdict line (e.g. 'FID 9.61 vs 11.1')")
    level: float = arg(0.95, help="confidence level of the intervals")

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise UnisslError(f"--level must be in (0, 1), got {self.level}")


_SEED = re.compile(r"^seed(-?\d+)$")


def find_results(study: Path, name: str) -> dict[int, dict[str, Any]]:
    """``{seed: result JSON}`` of the result ``name`` in every ``seed<N>`` directory below ``study``."""
    found: dict[int, dict[str, Any]] = {}
    for d in sorted(study.iterdir()):
        m = _SEED.match(d.name)
        if not (m and d.is_dir()):
            continue
        hits = sorted(d.rglob(f"results/{name}.json"))
        if len(hits) > 1:
            raise UnisslError(f"{d} holds several results named {name!r}: {[str(h) for h in hits]}")
        if hits:
            found[int(m.group(1))] = json.loads(hits[0].read_text())
    return found


def _value(result: dict[str, Any], metric: str, where: str) -> float:
    metrics = result.get("metrics", {})
    if metric not in metrics:
        raise UnisslError(f"{where} has no metric {metric!r} (it has {sorted(metrics)})")
    return float(metrics[metric])


def _draws(result: dict[str, Any], metric: str) -> np.ndarray | None:
    boot = (result.get("extra") or {}).get("bootstrap") or {}
    entry = boot.get(metric) if isinstance(boot, dict) else None
    return np.asarray(entry["draws"], np.float64) if isinstance(entry, dict) and entry.get("draws") else None


def run(cfg: Config) -> dict[str, float]:
    """Collect both arms over seeds, print the table and the verdict line, record them."""
    from unissl.eval.bootstrap import claim_verdict, seed_interval, two_level_interval

    study = Path(cfg.study)
    if not study.is_dir():
        raise UnisslError(f"study directory {study} not found; run its pipeline first")
    arms = {role: find_results(study, name) for role, name in (("a", cfg.a), ("b", cfg.b))}
    for role, name in (("a", cfg.a), ("b", cfg.b)):
        if not arms[role]:
            raise UnisslError(f"no result named {name!r} in {study}/seed*/**/results/; has the study finished? "
                              f"(`unissl pipeline --config ...` resumes it)")
    values = {role: {s: _value(r, cfg.metric, f"{study}/seed{s} {getattr(cfg, role)}") for s, r in res.items()}
              for role, res in arms.items()}
    lines = [f"| arm | {cfg.metric}: mean [{cfg.level:.0%} t interval over seeds] | n seeds | per seed "
             f"(bootstrap interval over samples) |", "|---|---|---|---|"]
    metrics: dict[str, float] = {}
    for role in ("a", "b"):
        vals = list(values[role].values())
        if len(vals) >= 2:
            mean, lo, hi = seed_interval(vals, cfg.level)
            cell = f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
            metrics[f"{role}_ci_low"], metrics[f"{role}_ci_high"] = lo, hi
        else:
            mean, cell = vals[0], f"{vals[0]:.3f}"
        metrics[f"{role}_mean"], metrics[f"{role}_n"] = mean, float(len(vals))
        per = []
        for s, v in values[role].items():
            m = arms[role][s]["metrics"]
            ci = (f" [{m[cfg.metric + '_ci_low']:.3f}, {m[cfg.metric + '_ci_high']:.3f}]"
                  if cfg.metric + "_ci_low" in m and cfg.metric + "_ci_high" in m else "")
            n = f", n={int(m['num_samples'])}" if "num_samples" in m else ""
            per.append(f"seed {s}: {v:.3f}{ci}{n}")
        lines.append(f"| {getattr(cfg, role)} | {cell} | {len(vals)} | {'; '.join(per)} |")
    a_vals, b_vals = list(values["a"].values()), list(values["b"].values())
    draws = {role: [_draws(r, cfg.metric) for r in arms[role].values()] for role in ("a", "b")}
    one = len(a_vals) == 1 and len(b_vals) == 1
    verdict = claim_verdict(a_vals, b_vals, cfg.lower_is_better, cfg.level,
                            draws["a"][0] if one else None, draws["b"][0] if one else None)
    line = verdict.line(cfg.metric, cfg.a, cfg.b, cfg.paper)
    metrics.update(diff=verdict.diff, diff_low=verdict.low, diff_high=verdict.high)
    if min(len(a_vals), len(b_vals)) >= 2 and all(d is not None for ds in draws.values() for d in ds):
        _, lo, hi = two_level_interval(draws["a"], draws["b"], cfg.level)  # type: ignore[arg-type]
        metrics.update(diff_two_level_low=lo, diff_two_level_high=hi)
        lines.append(f"\n{cfg.metric}, {cfg.a} - {cfg.b}: [{lo:+.3f}, {hi:+.3f}] ({cfg.level:.0%} two-level bootstrap "
                     f"over seeds and samples)")
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"verdict-{cfg.a}-vs-{cfg.b}-{cfg.metric}")
    path = record_result(study, name, metrics, {"a": cfg.a, "b": cfg.b, "metric": cfg.metric,
                                                "lower_is_better": cfg.lower_is_better, "outcome": verdict.outcome,
                                                "over": verdict.over, "line": line, "table": lines})
    print("\n".join(lines))
    print(f"verdict: {line}")
    print(f"  -> {path}")
    return metrics
