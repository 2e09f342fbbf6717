"""CPU minutes for a Sorcen `small` encoder on Fashion-MNIST to reach the pixel linear probe (84.6%).

Trains Sorcen (or MAGE) on the stored 7x7 ids with the engine and, every ``--probe-every`` steps, runs the
project's linear probe (the same protocol as ``unissl eval linear-probe``: 9 learning rates, head chosen on
a held-out 10% of train) on the frozen encoder's features of the stored train / test ids. Training time is
the process CPU time of the training steps only (``time.process_time`` is immune to other processes on a
shared machine; with one thread it equals the wall-clock of an idle core); probing is not counted.
Prints the curve (minutes, epoch, probe top-1 of the mean-pooled image tokens and of the class slot) and the
first point where either pooling is at or above the target (the last step is always probed); ``--out`` writes it as JSON and a PNG.

    unissl tokenize --tokenizer runs/fmnist-vq --dataset fashion-mnist --out runs/fmnist-tokens
    OMP_NUM_THREADS=1 python benchmarks/time_to_accuracy.py --tokens runs/fmnist-tokens --minutes 40 \\
        --out runs/time-to-accuracy/sorcen.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def probe_top1(model, store_dir: str, epochs: int) -> dict[str, float]:
    """Linear-probe test top-1 (%) of ``model``'s frozen features of the stored ids, for two poolings:
    ``mean`` (mean of the image tokens after the final norm, the ``sorcen`` extractor) and ``cls`` (the
    class slot)."""
    from unissl.data.token_store import TokenStore
    from unissl.eval.probe import ProbeConfig, linear_probe

    def feats(split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        store = TokenStore(store_dir, split)
        out: dict[str, list[torch.Tensor]] = {"mean": [], "cls": []}
        labels = []
        with torch.no_grad():
            for s in range(0, len(store), 1000):
                b = store.__getitems__(list(range(s, min(s + 1000, len(store)))))
                h = model.encode(b["ids"]).float()  # (B, 1 + N, D)
                out["mean"].append(h[:, 1:].mean(1))
                out["cls"].append(h[:, 0])
                labels.append(b["label"])
        return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)

    model.eval()
    (tx, ty), (vx, vy) = feats("train"), feats("test")
    model.train()
    result = {}
    for pool in ("mean", "cls"):
        metrics, _ = linear_probe(tx[pool], ty, vx[pool], vy, int(ty.max()) + 1, ProbeConfig(epochs=epochs),
                                  progress=False)
        result[pool] = float(metrics["top1"])
    return result


def plot_curve(curve: list[dict[str, float]], target: float, path: Path, title: str) -> None:
    """Probe top-1 against training CPU minutes, both poolings, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pool in ("mean", "cls"):
        ax.plot([c["minutes"] for c in curve], [c[pool] for c in curve], marker="o", label=f"{pool} pooling")
    ax.axhline(target, color="gray", linestyle="--", label=f"pixel probe {target}%")
    ax.set_xlabel("training CPU minutes (1 thread)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compare(paths: list[str], target: float, out: Path) -> None:
    """Several curves (the JSONs ``--out`` wrote) side by side: best pooling against epochs and CPU minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for p in paths:
        run = json.loads(Path(p).read_text())
        curve, name = run["curve"], run["args"]["method"]
        for ax, x in zip(axes, ("epoch", "minutes")):
            ax.plot([c[x] for c in curve], [c["top1"] for c in curve], marker="o", label=name)
    for ax, label in zip(axes, ("epoch", "training CPU minutes (1 thread)")):
        ax.axhline(target, color="gray", linestyle="--", label=f"pixel probe {target}%")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("linear probe top-1 (%), best pooling")
    fig.suptitle("Fashion-MNIST, preset small, batch 64, 8-epoch cosine schedule", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", nargs="+", default=None, metavar="JSON",
                    help="only plot these curves (from --out) side by side into --out (a PNG)")
    ap.add_argument("--tokens", default=None, help="Fashion-MNIST token store (train and test splits)")
    ap.add_argument("--method", default="sorcen", choices=["sorcen", "mage"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=10.0, help="length of the schedule (cosine horizon)")
    ap.add_argument("--minutes", type=float, default=40.0, help="stop after this much training CPU time")
    ap.add_argument("--probe-every", type=int, default=937, help="steps between probes (937 = one epoch)")
    ap.add_argument("--probe-epochs", type=int, default=90)
    ap.add_argument("--target", type=float, default=84.6, help="pixel linear probe on Fashion-MNIST (%)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the curve as JSON here")
    args = ap.parse_args()
    if args.compare:
        if not args.out:
            ap.error("--compare needs --out FILE.png")
        plot_compare(args.compare, args.target, Path(args.out))
        print(f"wrote {args.out}")
        return
    if args.tokens is None:
        ap.error("--tokens is required (unless --compare)")
    torch.set_num_threads(args.threads)

    from unissl.data.token_store import TokenStore
    from unissl.engine import Callback, TrainConfig, Trainer
    from unissl.methods.sorcen.method import SorcenLossConfig, SorcenMethod
    from unissl.methods.sorcen.presets import arch_for_store

    store = TokenStore(args.tokens, "train")
    arch = arch_for_store(args.preset, store.codebook_size, store.grid)
    torch.manual_seed(0)
    # the setting of docs/results.md (before teacher_projector_grad became the default)
    loss = SorcenLossConfig(echo_warmup_unit="released", momentum=0.99, teacher_projector_grad=False)
    spe = len(store) // args.batch
    method = SorcenMethod(arch, args.method, loss, num_classes=store.num_classes, steps_per_epoch=spe)
    curve: list[dict[str, float]] = []

    class Clock(Callback):
        """Counts training CPU time; probes every ``probe_every`` steps (probe time excluded)."""

        def __init__(self) -> None:
            self.cpu, self.mark = 0.0, time.process_time()

        def on_step_end(self, trainer, step, logs) -> None:
            now = time.process_time()
            self.cpu += now - self.mark
            if step % args.probe_every == 0 or step == trainer.total_steps:
                probes = probe_top1(trainer.method.model, args.tokens, args.probe_epochs)
                top1 = max(probes.values())
                curve.append({"step": step, "epoch": step / spe, "minutes": self.cpu / 60, "top1": top1, **probes})
                print(f"step {step:6d}  epoch {step / spe:5.2f}  train CPU {self.cpu / 60:6.1f} min  "
                      f"probe top-1 mean {probes['mean']:.2f}%  cls {probes['cls']:.2f}%", flush=True)
                if self.cpu / 60 >= args.minutes or top1 >= args.target:
                    trainer.step = trainer.total_steps  # stop: the loop ends after this step
            self.mark = time.process_time()

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(run_dir=str(Path(d) / "run"), epochs=args.epochs, global_batch=args.batch, lr=args.lr,
                          warmup_steps=50, min_lr=1e-5, weight_decay=0.05, betas=(0.9, 0.95), clip_grad=3.0,
                          num_workers=0, ckpt_every=10**9, log_every=100, tensorboard=False, progress=False,
                          threads=args.threads, image_every=0)
        Trainer(method, store, cfg, callbacks=[Clock()]).fit()
    hit = next((c for c in curve if c["top1"] >= args.target), None)
    print(f"{args.method} {args.preset}, batch {args.batch}, lr {args.lr}, 1 thread: "
          + (f"reached {args.target}% after {hit['minutes']:.1f} CPU minutes (epoch {hit['epoch']:.2f})" if hit else
             f"did not reach {args.target}% within {curve[-1]['minutes'] if curve else 0:.1f} CPU minutes "
             f"(best {max((c['top1'] for c in curve), default=0):.2f}%)"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "curve": curve, "hit": hit}, indent=1))
        if curve:
            plot_curve(curve, args.target, out.with_suffix(".png"),
                       f"{args.method} {args.preset}, batch {args.batch}, lr {args.lr}, Fashion-MNIST")


if __name__ == "__main__":
    main()
