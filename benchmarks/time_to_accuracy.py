"""CPU minutes for a Sorcen (or MAGE / MAGE-C) encoder on Fashion-MNIST to reach the pixel linear probe (84.6%).

Trains any ``unissl train sorcen`` configuration with the engine (``--config`` YAML, then any of the
command's flags after ``--``) and, every ``--probe-every`` steps and at the last step, runs the project's linear
probe (the protocol of ``unissl eval linear-probe``: 9 learning rates, head chosen on a held-out 10% of train)
on the frozen encoder's features of the stored train / test ids. Training time is the process CPU time of the
training steps only (``time.process_time`` is immune to other processes on a shared machine; with one thread
it equals the wall-clock of an idle core); probing is not counted.

Four poolings are probed by default: ``mean`` (the image tokens after the final norm: the ``sorcen`` extractor
that ``unissl eval linear-probe`` and the study use), ``cls`` (the class slot), ``released`` (the released linear
probe's pooling, the ``sorcen-released`` extractor) and ``blocks`` (the mean of every block concatenated, the
``sorcen-blocks`` extractor of the main job); ``--pools`` may add ``grid`` (every block's tokens pooled to a
2x2 grid, concatenated: the ``sorcen-grid`` extractor, this project's protocol, not the released one). The
target is met when the ``--hit-pool`` pooling reaches it (default ``mean``; ``best`` counts any). Prints the
curve (minutes, epoch, both probes) and the first point at or above the target; ``--out`` writes it as JSON and
a PNG.

    unissl tokenize --tokenizer runs/fmnist-vq --dataset fashion-mnist --out runs/fmnist-tokens
    # the fast setting (configs/sorcen/fmnist-fast.yaml), 15 CPU minutes:
    OMP_NUM_THREADS=1 python benchmarks/time_to_accuracy.py --tokens runs/fmnist-tokens \\
        --config configs/sorcen/fmnist-fast.yaml --minutes 15 --out runs/time-to-accuracy/fast.json
    # the setting of docs/results.md (no --config), with any flag of `unissl train sorcen` after --:
    OMP_NUM_THREADS=1 python benchmarks/time_to_accuracy.py --tokens runs/fmnist-tokens --epochs 8 --minutes 60 \\
        --out runs/time-to-accuracy/sorcen-8ep.json -- --train.lr 0.002
    # architecture overrides on the preset (the sweep of benchmarks/sweep.py uses them):
    ... --arch dim=128,depth=6,heads=4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

PIXEL_PROBE = 84.6  # linear probe on raw Fashion-MNIST pixels (docs/results.md: 84.56%)
PIXEL_KNN = 84.59  # k-NN (k = 20, T = 0.07) on raw Fashion-MNIST pixels (docs/results.md)

# The documented setting of docs/results.md's 8-epoch curves, used when no --config is given.
LEGACY = ["--method", "sorcen", "--preset", "small",
          "--sorcen.echo.warmup-unit", "released", "--sorcen.teacher.momentum", "0.99",
          "--sorcen.teacher.projector-grad", "false",
          "--train.epochs", "10", "--train.global-batch", "64", "--train.lr", "0.001", "--train.warmup-steps", "50",
          "--train.min-lr", "1e-5", "--train.weight-decay", "0.05", "--train.betas", "0.9", "0.95",
          "--train.clip-grad", "3.0"]


POOLS = ("mean", "cls", "released", "blocks", "grid")
DEFAULT_POOLS = POOLS[:4]  # grid is asked for by name (--pools): one probe more, on 4x the blocks features


def store_features(model, store_dir: str, pools: tuple[str, ...] = DEFAULT_POOLS):
    """Frozen features of the stored train / test ids for each pooling: ``({pool: (N, D)}, labels)`` per split.

    ``mean`` (:func:`pooled_features` after the final norm: the ``sorcen`` extractor), ``cls`` (the class slot),
    ``released`` (the released linear probe's pooling: the final norm dropped, LayerNorm after the mean: the
    ``sorcen-released`` extractor), ``blocks`` (the ``mean`` of every block, concatenated: the
    ``sorcen-blocks`` extractor) and ``grid`` (every block's tokens pooled to a 2x2 grid, concatenated: the
    ``sorcen-grid`` extractor)."""
    from unissl.data.token_store import TokenStore
    from unissl.methods.sorcen.features import pooled_features

    def feats(split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        store = TokenStore(store_dir, split)
        out: dict[str, list[torch.Tensor]] = {pool: [] for pool in pools}
        labels = []
        with torch.no_grad():
            for s in range(0, len(store), 1000):
                b = store.__getitems__(list(range(s, min(s + 1000, len(store)))))
                h = model.encode(b["ids"].long()).float()  # (B, 1 + N, D) after the final norm
                for pool in pools:
                    if pool == "mean":
                        out[pool].append(h[:, 1:].mean(1))  # = pooled_features(model, ids)
                    elif pool == "cls":
                        out[pool].append(h[:, 0])
                    else:  # released, blocks, grid
                        out[pool].append(pooled_features(model, b["ids"], pool))
                labels.append(b["label"])
        return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)

    model.eval()
    try:
        return feats("train"), feats("test")
    finally:
        model.train()


def probe_top1(model, store_dir: str, epochs: int, pools: tuple[str, ...] = DEFAULT_POOLS,
               features=None) -> dict[str, float]:
    """Linear-probe test top-1 (%) of ``model``'s frozen features of the stored ids, per pooling
    (:func:`store_features`; pass ``features`` to reuse them)."""
    from unissl.eval.probe import ProbeConfig, linear_probe

    (tx, ty), (vx, vy) = features or store_features(model, store_dir, pools)
    result = {}
    for pool in pools:
        metrics, _ = linear_probe(tx[pool], ty, vx[pool], vy, int(ty.max()) + 1, ProbeConfig(epochs=epochs),
                                  progress=False)
        result[pool] = float(metrics["top1"])
    return result


def knn_selected(train: dict[str, torch.Tensor], train_y: torch.Tensor, test: dict[str, torch.Tensor],
                 test_y: torch.Tensor, ks: tuple[int, ...], temperatures: tuple[float, ...],
                 val_fraction: float = 0.1, seed: int = 0) -> dict[str, float | int | str]:
    """The weighted k-NN (``unissl eval knn``'s protocol) with k, T and the pooling chosen on held-out train.

    Protocol: a seeded ``val_fraction`` of the train ids is held out; every (pooling, k, T) classifies it with
    the other train ids as neighbours; the best validation top-1 (ties: the first in grid order) picks the
    setting, which then classifies the test split with all train ids as neighbours. The test split never
    chooses anything. Returns ``knn`` (test top-1 %, chosen setting), ``knn_val``, ``knn_pool``, ``knn_k``,
    ``knn_T`` and ``knn_fixed`` (mean pooling, k = 20, T = 0.07: the study's fixed protocol, if ``mean`` is
    among the poolings)."""
    import torch.nn.functional as F

    from unissl.eval.knn import knn_accuracy

    n = train_y.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    nval = max(1, int(round(val_fraction * n)))
    val, fit = perm[:nval], perm[nval:]
    c = int(train_y.max()) + 1
    best: tuple[float, str, int, float] | None = None
    for pool in train:
        # the neighbours of every held-out id once, at the largest k (knn_scores' votes, for every k and T)
        fx, qx = F.normalize(train[pool][fit].float(), dim=1), F.normalize(train[pool][val].float(), dim=1)
        sims, labels = [], []
        for i in range(0, nval, 1024):
            sim, idx = (qx[i:i + 1024] @ fx.T).topk(min(max(ks), fx.shape[0]), dim=1)  # (q, kmax), descending
            sims.append(sim)
            labels.append(train_y[fit][idx].long())
        sim_all, lab_all = torch.cat(sims), torch.cat(labels)
        for k in ks:
            for t in temperatures:
                votes = torch.zeros(nval, c).scatter_add_(1, lab_all[:, :k], (sim_all[:, :k] / t).exp())
                acc = 100.0 * float((votes.argmax(1) == train_y[val].long()).double().mean())
                if best is None or acc > best[0]:
                    best = (acc, pool, k, t)
    if best is None:
        raise SystemExit("kNN: no pooling / k / temperature to try")
    _, pool, k, t = best
    out: dict[str, float | int | str] = {
        "knn": float(knn_accuracy(train[pool], train_y, test[pool], test_y, c, k, t)["top1"]),
        "knn_val": best[0], "knn_pool": pool, "knn_k": k, "knn_T": t}
    if "mean" in train:
        out["knn_fixed"] = float(knn_accuracy(train["mean"], train_y, test["mean"], test_y, c, 20, 0.07)["top1"])
    return out


def pixel_knn(ks: tuple[int, ...], temperatures: tuple[float, ...],
              dataset: str = "fashion-mnist") -> dict[str, float | int | str]:
    """:func:`knn_selected` on the raw pixels of ``dataset`` (the same grid and protocol: the fair line)."""
    from unissl.data.datasets import build_dataset

    def pixels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = build_dataset(dataset, split)
        b = ds.__getitems__(list(range(len(ds))))
        return b["image"].float().flatten(1) / (255.0 if not b["image"].is_floating_point() else 1.0), b["label"]

    (tx, ty), (vx, vy) = pixels("train"), pixels("test")
    return knn_selected({"pixels": tx}, ty, {"pixels": vx}, vy, ks, temperatures)


def parse_arch(text: str | None) -> dict[str, int]:
    """``dim=128,depth=6`` -> {"dim": 128, "depth": 6} (fields of :class:`SorcenArch`)."""
    if not text:
        return {}
    from unissl.methods.sorcen.presets import SorcenArch

    names = {f.name for f in dataclasses.fields(SorcenArch)} - {"codebook_size", "grid"}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in names or not value:
            raise SystemExit(f"--arch: {part!r} is not NAME=VALUE with NAME one of {sorted(names)}")
        out[key] = float(value) if key in ("mlp_ratio", "dropout") else int(value)
    return out


def build_config(args: argparse.Namespace, extra: list[str]):
    """The ``unissl train sorcen`` Config: --config (or the documented setting), the shortcut flags, then ``extra``."""
    from unissl.commands.train_sorcen import Config
    from unissl.config import parse_config

    argv = ["--config", args.config] if args.config else list(LEGACY)
    for flag, value in (("--method", args.method), ("--preset", args.preset), ("--train.global-batch", args.batch),
                        ("--train.lr", args.lr), ("--train.epochs", args.epochs)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--tokens", args.tokens, *extra]
    return parse_config(Config, argv, prog="time_to_accuracy")


def time_steps(method, data, batch: int, steps: int = 12, skip: int = 3) -> float:
    """CPU ms of one training step (forward, backward, AdamW, the step-end hook) of a copy of ``method`` on
    real batches; the first ``skip`` steps are not counted."""
    import copy

    m = copy.deepcopy(method).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    start = 0.0
    for i in range(steps + skip):
        if i == skip:
            start = time.process_time()
        b = data.__getitems__(list(range(i * batch, (i + 1) * batch)))
        out = m(b)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        m.on_train_step_end(i + 1, 10**6)
    return 1e3 * (time.process_time() - start) / steps


def plot_curve(curve: list[dict[str, float]], target: float, path: Path, title: str) -> None:
    """Probe top-1 against training CPU minutes, both poolings, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if curve and all("knn" in c for c in curve):
        ax.plot([c["minutes"] for c in curve], [c["knn"] for c in curve], marker="s", label="k-NN (selected)")
    for pool in POOLS:
        if all(pool in c for c in curve):
            ax.plot([c["minutes"] for c in curve], [c[pool] for c in curve], marker="o", label=f"{pool} pooling")
    ax.axhline(target, color="gray", linestyle="--", label=f"pixel probe {target}%")
    ax.set_xlabel("training CPU minutes (1 thread)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_compare(paths: list[str], target: float, out: Path, pool: str = "top1") -> None:
    """Several curves (the JSONs ``--out`` wrote) side by side against epochs and CPU minutes; ``pool`` is
    ``top1`` (best pooling), ``mean`` or ``cls``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    line_name = "pixel probe"
    for p in paths:
        run = json.loads(Path(p).read_text())
        if pool == "knn" and run.get("knn_target") is not None:
            target, line_name = float(run["knn_target"]), "pixel k-NN"
        curve, name = run["curve"], run.get("label") or run["args"]["method"]
        for ax, x in zip(axes, ("epoch", "minutes")):
            ax.plot([c[x] for c in curve], [c[pool] for c in curve], marker="o", label=name)
    for ax, label in zip(axes, ("epoch", "training CPU minutes (1 thread)")):
        ax.axhline(target, color="gray", linestyle="--", label=f"{line_name} {target:.2f}%")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("k-NN top-1 (%), setting chosen on held-out train" if pool == "knn" else
                       f"linear probe top-1 (%), {'best pooling' if pool == 'top1' else pool + ' pooling'}")
    fig.suptitle("Fashion-MNIST, Sorcen family on 7x7 VQ ids", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Flags after `--` are `unissl train sorcen` flags (e.g. -- --train.lr 0.002).")
    ap.add_argument("--compare", nargs="+", default=None, metavar="JSON",
                    help="only plot these curves (from --out) side by side into --out (a PNG)")
    ap.add_argument("--compare-pool", default="top1", choices=["top1", "knn", *POOLS],
                    help="the curve to compare: a probe pooling, top1 (best pooling) or knn (the selected k-NN, "
                         "against the runs' k-NN line)")
    ap.add_argument("--tokens", default=None, help="Fashion-MNIST token store (train and test splits)")
    ap.add_argument("--config", default=None, help="a `unissl train sorcen` YAML (default: docs/results.md's setting)")
    ap.add_argument("--method", default=None, choices=["sorcen", "mage", "mage-c", "mage-aug"])
    ap.add_argument("--preset", default=None)
    ap.add_argument("--arch", default=None, help="override preset fields, e.g. dim=128,depth=6,heads=4")
    ap.add_argument("--batch", type=int, default=None, help="shortcut for --train.global-batch")
    ap.add_argument("--lr", type=float, default=None, help="shortcut for --train.lr")
    ap.add_argument("--epochs", type=float, default=None, help="shortcut for --train.epochs (the cosine horizon)")
    ap.add_argument("--minutes", type=float, default=40.0, help="stop after this much training CPU time")
    ap.add_argument("--budget", type=float, default=None,
                    help="fit the schedule to this many CPU minutes: time a few steps first, set the cosine "
                         "horizon (--train.epochs) so that it ends at the budget, stop at 1.1x the budget")
    ap.add_argument("--probe-every", type=int, default=0, help="steps between probes (0: only the last step)")
    ap.add_argument("--probe-epochs", type=int, default=90)
    ap.add_argument("--target", type=float, default=PIXEL_PROBE, help="pixel linear probe on Fashion-MNIST (%%)")
    ap.add_argument("--hit-pool", default="mean", choices=["mean", "blocks", "grid", "best"],
                    help="which pooling must reach the target: mean (the study's extractor), blocks (the main "
                         "job's sorcen-blocks extractor), grid (sorcen-grid; name it in --pools) or the best "
                         "of those probed")
    ap.add_argument("--pools", default=",".join(DEFAULT_POOLS),
                    help="comma-separated poolings to probe (each costs a probe) out of " + ",".join(POOLS)
                         + "; default " + ",".join(DEFAULT_POOLS))
    ap.add_argument("--no-stop", action="store_true", help="keep training after the target is reached")
    ap.add_argument("--knn-k", type=int, nargs="*", default=[],
                    help="k-NN at every probe point with these k (and --knn-t, over --pools), the setting chosen on "
                         "10%% of train held out (knn_selected); e.g. --knn-k 10 20 50")
    ap.add_argument("--knn-t", type=float, nargs="+", default=[0.07], help="k-NN vote temperatures of the grid")
    ap.add_argument("--knn-target", type=float, default=PIXEL_KNN, help="the pixel k-NN line (%%)")
    ap.add_argument("--pixel-knn", action="store_true",
                    help="first run the same k-NN grid and selection on the raw pixels and use it as --knn-target")
    ap.add_argument("--stop-on", default="probe", choices=["probe", "knn"],
                    help="which line stops the run when passed (unless --no-stop)")
    ap.add_argument("--skip-probe", action="store_true", help="no linear probe (k-NN only; needs --knn-k)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default=None, help="name of this curve in tables and plots")
    ap.add_argument("--out", default=None, help="write the curve as JSON here (and a PNG beside it)")
    args, extra = ap.parse_known_args()
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.compare:
        if not args.out:
            ap.error("--compare needs --out FILE.png")
        plot_compare(args.compare, args.target, Path(args.out), args.compare_pool)
        print(f"wrote {args.out}")
        return
    if args.tokens is None:
        ap.error("--tokens is required (unless --compare)")
    torch.set_num_threads(args.threads)

    from unissl.commands import train_sorcen
    from unissl.config import to_dict
    from unissl.engine import Callback, Trainer
    from unissl.methods.sorcen import presets

    cfg = build_config(args, extra)
    arch_over = parse_arch(args.arch)
    if arch_over:  # a preset with these fields replaced, registered under a temporary name
        name = f"{cfg.preset}+{args.arch}"
        presets.PRESETS[name] = dataclasses.replace(presets.get_preset(cfg.preset), **arch_over)
        cfg.preset = name
    method, data, info = train_sorcen.build(cfg)
    spe = cfg.train.steps_per_epoch(len(data))
    if args.budget:
        ms = time_steps(method, data, cfg.train.global_batch)
        cfg.train = dataclasses.replace(cfg.train, epochs=round(args.budget * 60e3 / ms / spe, 3))
        args.minutes = 1.1 * args.budget
        print(f"budget {args.budget:g} CPU min at {ms:.0f} ms/step (timed): {cfg.train.epochs:g} epochs", flush=True)
        method, data, info = train_sorcen.build(cfg)  # the same seeded initial weights, untouched by the timing
    label = args.label or f"{cfg.method} {cfg.preset}, batch {cfg.train.global_batch}, lr {cfg.train.peak_lr():g}"
    curve: list[dict[str, float]] = []
    hit_key = "top1" if args.hit_pool == "best" else args.hit_pool
    pools = tuple(x for x in args.pools.split(",") if x)
    ks, temps = tuple(args.knn_k), tuple(args.knn_t)
    if (args.skip_probe or args.stop_on == "knn" or args.pixel_knn) and not ks:
        raise SystemExit("--skip-probe, --stop-on knn and --pixel-knn need a k-NN grid (--knn-k ...)")
    if args.pixel_knn:
        line = pixel_knn(ks, temps)
        args.knn_target = float(line["knn"])
        print("pixel k-NN (same grid and selection): " + "  ".join(f"{k} {v}" for k, v in line.items()), flush=True)
    if not pools or any(x not in POOLS for x in pools) or (hit_key != "top1" and hit_key not in pools):
        raise SystemExit(f"--pools {args.pools!r}: a comma-separated subset of {POOLS} holding --hit-pool")

    class Clock(Callback):
        """Counts training CPU time; probes every ``probe_every`` steps and at the end (probe time excluded)."""

        def __init__(self) -> None:
            self.cpu, self.mark = 0.0, time.process_time()

        def on_step_end(self, trainer, step, logs) -> None:
            now = time.process_time()
            self.cpu += now - self.mark
            over = self.cpu / 60 >= args.minutes
            if (args.probe_every and step % args.probe_every == 0) or step == trainer.total_steps or over:
                feats = store_features(trainer.method.model, args.tokens, pools)
                probes = {} if args.skip_probe else probe_top1(trainer.method.model, args.tokens, args.probe_epochs,
                                                               pools, feats)
                knn = knn_selected(feats[0][0], feats[0][1], feats[1][0], feats[1][1], ks, temps) if ks else {}
                point = {"step": step, "epoch": step / spe, "minutes": self.cpu / 60,
                         "top1": max(probes.values(), default=0.0), **probes, **knn}
                curve.append(point)
                if args.out:  # the points so far, in case the run is cut (the final write replaces it)
                    partial = Path(args.out).with_suffix(".partial.json")
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps({"label": label, "knn_target": args.knn_target if ks else None,
                                                   "curve": curve}, indent=1, default=str))
                print(f"step {step:6d}  epoch {step / spe:5.2f}  train CPU {self.cpu / 60:6.2f} min  "
                      + ("probe top-1 " + "  ".join(f"{k} {v:.2f}%" for k, v in probes.items()) if probes else "")
                      + (f"  k-NN {knn['knn']:.2f}% ({knn['knn_pool']}, k={knn['knn_k']}, T={knn['knn_T']}; "
                         f"fixed k=20 T=0.07 mean: {knn.get('knn_fixed', float('nan')):.2f}%)" if knn else ""),
                      flush=True)
                passed = (float(point["knn"]) >= args.knn_target if args.stop_on == "knn"
                          else float(point[hit_key]) >= args.target)
                if over or (passed and not args.no_stop):
                    trainer.step = trainer.total_steps  # stop: the loop ends after this step
            self.mark = time.process_time()

    with tempfile.TemporaryDirectory() as d:
        cfg.train = dataclasses.replace(cfg.train, run_dir=str(Path(d) / "run"), ckpt_every=10**9, log_every=100,
                                        tensorboard=False, progress=False, threads=args.threads, image_every=0,
                                        resume=False, resume_from=None, num_workers=0)
        trainer = Trainer(method, data, cfg.train, callbacks=[Clock()])
        total = trainer.total_steps
        trainer.fit()
    hit = next((c for c in curve if c[hit_key] >= args.target), None) if not args.skip_probe else None
    knn_hit = next((c for c in curve if float(c["knn"]) >= args.knn_target), None) if ks else None
    if ks:
        print(f"k-NN line {args.knn_target:.2f}%: " + (
            f"passed after {knn_hit['minutes']:.1f} CPU minutes (epoch {knn_hit['epoch']:.2f}, {knn_hit['knn']:.2f}%)"
            if knn_hit else f"not passed; best {max(float(c['knn']) for c in curve):.2f}%" if curve else "no point"))
    last = curve[-1] if curve else {"minutes": 0.0, "step": 0}
    ms_per_step = 60e3 * last["minutes"] / max(int(last["step"]), 1)
    print(f"{label}, 1 thread, {ms_per_step:.0f} ms/step ({ms_per_step * spe / 60e3:.2f} CPU min/epoch): "
          + (f"reached {args.target}% ({args.hit_pool} pooling) after {hit['minutes']:.1f} CPU minutes "
             f"(epoch {hit['epoch']:.2f})" if hit else
             f"did not reach {args.target}% within {last['minutes']:.1f} CPU minutes "
             "(best " + ", ".join(f"{k} {max((c.get(k, 0) for c in curve), default=0):.2f}%" for k in pools)
             + ")"))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cfg_dict = to_dict(cfg)
        cfg_dict["train"]["run_dir"] = None
        out.write_text(json.dumps({"args": {**vars(args), "method": cfg.method, "extra": extra}, "label": label,
                                   "config": cfg_dict, "arch": dataclasses.asdict(info["arch"]),
                                   "steps_per_epoch": spe, "total_steps": total, "ms_per_step": ms_per_step,
                                   "curve": curve, "hit": hit, "knn_hit": knn_hit,
                                   "knn_target": args.knn_target if ks else None}, indent=1, default=str))
        if curve:
            plot_curve(curve, args.target, out.with_suffix(".png"), label)


if __name__ == "__main__":
    main()
