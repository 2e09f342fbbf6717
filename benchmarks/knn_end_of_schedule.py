"""k-NN at the end of each training schedule against the training CPU minutes it cost, per encoder, beside the
pixel lines: does a longer schedule carry Sorcen / MAGE past the raw pixels, or does the curve flatten?

Each point is one finished schedule (a cosine run to its end, not a point inside a run), averaged over its seeds:
the study's fixed k-NN (mean pooling, k = 20, T = 0.07; ``eval knn``) and the training process's CPU minutes
(``cpu_elapsed`` of its last log line). Points come from multi-seed pipeline directories (``--study``, read from
``seed<N>/eval/results/knn-<enc>.json`` and ``seed<N>/<enc>/log.jsonl``) and from a JSON of points measured
earlier (``--points``: studies whose run directories are gone, with the numbers docs/results.md reports).

    python benchmarks/knn_end_of_schedule.py --study runs/fmnist-claims-2ep \\
        --points docs/figures/knn_end_of_schedule_earlier.json --out docs/figures/knn_end_of_schedule
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from time_to_accuracy import PIXEL_KNN  # the fixed k-NN (k = 20, T = 0.07) on raw Fashion-MNIST pixels

PIXEL_KNN_TUNED = 86.34  # the same with k, T chosen on held-out train ids (docs/results.md)


def study_points(study: Path, encoders: list[str]) -> list[dict]:
    """One point per encoder of a multi-seed study: mean / sd over seeds of k-NN top-1 and training CPU minutes."""
    points = []
    for enc in encoders:
        knn, cpu, epochs = [], [], set()
        for seed_dir in sorted(d for d in study.iterdir() if re.fullmatch(r"seed\d+", d.name)):
            res, log = seed_dir / "eval" / "results" / f"knn-{enc}.json", seed_dir / enc / "log.jsonl"
            if not (res.exists() and log.exists()):
                continue
            last = json.loads(log.read_text().strip().splitlines()[-1])
            knn.append(json.loads(res.read_text())["metrics"]["top1"])
            cpu.append(last["cpu_elapsed"] / 60)
            epochs.add(round(last["epoch"], 2))
        if knn:
            points.append({"encoder": enc, "epochs": max(epochs), "knn": statistics.fmean(knn),
                           "knn_sd": statistics.stdev(knn) if len(knn) > 1 else 0.0, "n": len(knn),
                           "cpu_minutes": statistics.fmean(cpu), "source": str(study)})
    return points


def plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for enc, colour in (("sorcen", "tab:blue"), ("mage", "tab:orange")):
        pts = sorted((p for p in points if p["encoder"] == enc), key=lambda p: p["cpu_minutes"])
        if not pts:
            continue
        ax.errorbar([p["cpu_minutes"] for p in pts], [p["knn"] for p in pts], yerr=[p["knn_sd"] for p in pts],
                    marker="o", capsize=3, color=colour, label=f"{enc} (end of each schedule, mean ± sd)")
        for p in pts:
            ax.annotate(f"{p['epochs']:g} ep, n={p['n']}", (p["cpu_minutes"], p["knn"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
    ax.axhline(PIXEL_KNN, color="k", ls="--", lw=1, label=f"pixels, same k-NN ({PIXEL_KNN})")
    ax.axhline(PIXEL_KNN_TUNED, color="grey", ls=":", lw=1, label=f"pixels, k and T tuned ({PIXEL_KNN_TUNED})")
    ax.set_xlabel("training CPU minutes (one thread)")
    ax.set_ylabel("k-NN top-1 (k = 20, T = 0.07, mean pooling)")
    lengths = " / ".join(f"{e:g}" for e in sorted({p["epochs"] for p in points}))
    ax.set_title(f"Fashion-MNIST k-NN at the end of {lengths}-epoch schedules")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", action="append", default=[], help="multi-seed pipeline directory (repeatable)")
    ap.add_argument("--encoders", nargs="+", default=["sorcen", "mage"])
    ap.add_argument("--points", help="JSON list of earlier points (encoder, epochs, knn, knn_sd, n, cpu_minutes)")
    ap.add_argument("--out", required=True, help="output path without suffix: writes .json and .png")
    args = ap.parse_args()
    points = json.loads(Path(args.points).read_text()) if args.points else []
    for s in args.study:
        points += study_points(Path(s), args.encoders)
    if not points:
        raise SystemExit("knn_end_of_schedule: no points: give --study with finished knn-<enc> results or --points")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(points, indent=1) + "\n")
    plot(points, out)
    for p in sorted(points, key=lambda p: (p["encoder"], p["cpu_minutes"])):
        gap = p["knn"] - PIXEL_KNN
        print(f"{p['encoder']:8s} {p['epochs']:>4g} ep  {p['cpu_minutes']:6.1f} CPU min  k-NN {p['knn']:.2f} ± "
              f"{p['knn_sd']:.2f} (n={p['n']})  vs pixels {gap:+.2f}")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
