"""Run a sweep of ``benchmarks/time_to_accuracy.py`` arms side by side and tabulate them.

A sweep file (``benchmarks/sweeps/*.yaml``) is a pipeline file (:mod:`unissl.pipeline`): one script stage per
arm, written once as a grid over the arms (each a name plus its benchmark flags and `unissl train sorcen`
flags). This wrapper runs it with the pipeline's scheduler (``--jobs N`` arms at once, one thread each; a
finished arm is skipped, so an interrupted sweep continues with the same command; every arm's output is in
``<out>/stages/<arm>.log``) and then writes the table (``<out>/sweep.md``): per arm the setting, ms per step,
CPU minutes per epoch, epochs run, the probe at the end (mean / class-slot pooling) and the CPU minutes at which
the mean pooling first reached the target. ``unissl pipeline --config <sweep file>`` runs the same arms.

    OMP_NUM_THREADS=1 python benchmarks/sweep.py benchmarks/sweeps/fmnist-fast.yaml --tokens runs/fmnist-tokens \\
        --jobs 2 --out runs/sweep-fast
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from unissl.errors import UnisslError
from unissl.pipeline import SCRIPT, Stage, parse_stages, resolve_pipeline, run_pipeline


def arms_of(sweep: str | Path, tokens: str | None = None) -> tuple[dict, list[Stage]]:
    """The resolved sweep pipeline (``--tokens`` replacing its ``tokens`` var) and its arms (script stages)."""
    overlay = {"extends": str(Path(sweep).resolve()), **({"vars": {"tokens": tokens}} if tokens else {})}
    spec = resolve_pipeline(overlay)
    stages = parse_stages(spec["stages"])
    if not stages or any(s.command != SCRIPT for s in stages):
        raise UnisslError(f"{sweep}: a sweep file's stages are time-to-accuracy runs (`script:` stages)")
    return spec, stages


def setting(stage: Stage) -> str:
    """An arm's flags, without the ones every arm has (its token store, label and output)."""
    args = stage.config["args"]
    parts = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    keep: list[str] = []
    skip = 0
    for part in parts:
        if skip:
            skip -= 1
        elif part in ("--tokens", "--label", "--out"):
            skip = 1
        else:
            keep.append(part)
    return shlex.join(keep[:-1] if keep and keep[-1] == "--" else keep)


def table(stages: list[Stage], out: Path, target: float) -> str:
    """The sweep's Markdown table from the arms' JSONs (``<out>/<arm>.json``)."""
    rows = ["| arm | setting | ms / step | CPU min / epoch | epochs | CPU min | probe mean | probe cls | probe released "
            f"| reached {target}% (mean) at |", "|---|---|---|---|---|---|---|---|---|---|"]
    for stage in stages:
        p = out / f"{stage.name}.json"
        if not p.is_file():
            rows.append(f"| {stage.name} | {setting(stage)} | (not run) | | | | | | | |")
            continue
        run = json.loads(p.read_text())
        last = run["curve"][-1]
        hit = run.get("hit")
        reached = f"{hit['minutes']:.1f} min (epoch {hit['epoch']:.2f})" if hit else "no"
        mean, cls, released = (f"{last[k]:.2f}" if k in last else "-" for k in ("mean", "cls", "released"))
        rows.append(f"| {stage.name} | `{setting(stage)}` | {run['ms_per_step']:.0f} | "
                    f"{run['ms_per_step'] * run['steps_per_epoch'] / 60e3:.2f} | {last['epoch']:.2f} | "
                    f"{last['minutes']:.1f} | {mean} | {cls} | {released} | {reached} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep file (a pipeline of time-to-accuracy arms)")
    ap.add_argument("--tokens", default=None, help="token store (default: the file's `tokens` var)")
    ap.add_argument("--out", default=None, help="directory of the arms' JSON / log files and sweep.md "
                                                "(default: the file's `out`)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="run only these arms")
    ap.add_argument("--target", type=float, default=84.6)
    args = ap.parse_args()
    try:
        spec, stages = arms_of(args.sweep, args.tokens)
        out = Path(args.out or spec.get("out") or "runs/sweep")
        run_pipeline(stages, out, jobs=args.jobs, only=args.only or None)
    except UnisslError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    text = (f"Sweep `{args.sweep}`, one thread per arm, {args.jobs} at once.\n\n" + table(stages, out, args.target)
            + "\n")
    (out / "sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
