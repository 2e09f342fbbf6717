"""Run a sweep of ``benchmarks/time_to_accuracy.py`` arms side by side and tabulate them.

A sweep file (YAML) names the arms; every arm is one time-to-accuracy run (its own process, one thread) with
the sweep's common arguments plus its own::

    common: --config configs/sorcen/small-fmnist.yaml --budget 7.5
    arms:
      - {name: base}
      - {name: lr2e-3, args: "-- --train.lr 0.002"}

``--jobs N`` runs N arms at once (the machine has 2 cores: 2). An arm whose JSON exists is not rerun, so an
interrupted sweep continues with the same command. The table (``<out>/sweep.md``) lists per arm the setting,
ms per step, CPU minutes per epoch, epochs run, the probe at the end (mean / class-slot pooling) and the CPU
minutes at which the mean pooling first reached the target.

    OMP_NUM_THREADS=1 python benchmarks/sweep.py benchmarks/sweeps/fmnist-fast.yaml --tokens runs/fmnist-tokens \\
        --jobs 2 --out runs/sweep-fast
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def run_arm(arm: dict, common: list[str], tokens: str, out: Path) -> tuple[str, int]:
    """One arm in its own process (one thread); its output goes to ``<out>/<name>.log``. In ``common`` and in
    the arm's ``args`` alike, flags before ``--`` are the benchmark's, flags after it `unissl train sorcen`'s."""
    name = arm["name"]
    result = out / f"{name}.json"
    if result.is_file():
        return name, 0
    bench: list[str] = []
    flags: list[str] = []
    for part in (common, shlex.split(arm.get("args", ""))):  # in each: benchmark flags [-- train flags]
        cut = part.index("--") if "--" in part else len(part)
        bench += part[:cut]
        flags += part[cut + 1:]
    cmd = [sys.executable, str(HERE / "time_to_accuracy.py"), "--tokens", tokens, "--label", name,
           "--out", str(result), *bench, *(["--", *flags] if flags else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out / f"{name}.log", "w") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return name, rc


def table(arms: list[dict], out: Path, target: float) -> str:
    """The sweep's Markdown table from the arms' JSONs."""
    rows = ["| arm | setting | ms / step | CPU min / epoch | epochs | CPU min | probe mean | probe cls | probe released "
            f"| reached {target}% (mean) at |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        p = out / f"{arm['name']}.json"
        if not p.is_file():
            rows.append(f"| {arm['name']} | {arm.get('args', '')} | (not run) | | | | | | | |")
            continue
        run = json.loads(p.read_text())
        last = run["curve"][-1]
        hit = run.get("hit")
        reached = f"{hit['minutes']:.1f} min (epoch {hit['epoch']:.2f})" if hit else "no"
        released = f"{last['released']:.2f}" if "released" in last else "-"
        rows.append(f"| {arm['name']} | `{arm.get('args', '') or '(common)'}` | {run['ms_per_step']:.0f} | "
                    f"{run['ms_per_step'] * run['steps_per_epoch'] / 60e3:.2f} | {last['epoch']:.2f} | "
                    f"{last['minutes']:.1f} | {last['mean']:.2f} | {last['cls']:.2f} | "
                    f"{released} | "
                    f"{reached} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep YAML (common: ..., arms: [...])")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True, help="directory of the arms' JSON / log files and sweep.md")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="run only these arms")
    ap.add_argument("--target", type=float, default=84.6)
    args = ap.parse_args()
    spec = yaml.safe_load(Path(args.sweep).read_text())
    arms, common = spec["arms"], shlex.split(spec.get("common", ""))
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f"{args.sweep}: arm names must be unique")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [a for a in arms if args.only is None or a["name"] in args.only]
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, rc in pool.map(lambda a: run_arm(a, common, args.tokens, out), todo):
            print(f"[{(time.time() - t0) / 60:6.1f} min] {name}: {'done' if rc == 0 else f'failed (rc {rc}), see {out / name}.log'}",
                  flush=True)
    text = (f"Sweep `{args.sweep}` (common: `{spec.get('common', '')}`), one thread per arm, {args.jobs} at once.\n\n"
            + table(arms, out, args.target) + "\n")
    (out / "sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
