"""Sorcen's released-code options against the project defaults, measured on Fashion-MNIST at CPU scale.

Each option of ``SorcenConfig`` that reproduces a detail of the released code (LEASE) is switched on alone
on top of the study's Sorcen setting (preset ``small``, released echo rule, momentum 0.99, batch 64, lr 1e-3,
one epoch of the stored 7x7 ids, seed 0), and the frozen encoder is scored with the linear probe of ``unissl
eval linear-probe`` (9 learning rates, head chosen on 10% of train) and a k-NN (k 20, T 0.07), both on the
mean of the image tokens. Training CPU time is reported too (process time, 1 thread). One seed: a
difference below the study's seed spread (about 0.4 probe, 0.3 kNN points) is noise.

    OMP_NUM_THREADS=1 python benchmarks/released_options.py --tokens runs/fmnist-study/tokens \\
        --out runs/released-options/a.json --only baseline teacher_init [--seed 1]

The numbers of docs/fidelity.md are in docs/figures/released_options.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

# name -> settings overrides, flat names as in sorcen.json before the split (on top of the study's setting)
OPTIONS: dict[str, dict[str, object]] = {
    "baseline": {},
    "teacher_init": {"teacher_init": "random"},
    "teacher_projector_grad": {"teacher_projector_grad": True},
    "momentum_schedule": {"momentum_schedule": "epoch", "momentum_epochs": 1600.0},
    "uniformity": {"uniformity_pool": "all", "uniformity_diagonal": True},
    "decay_embeddings": {"decay_embeddings": True},
}


def run_one(name: str, tokens: str, steps: int, seed: int) -> dict[str, float]:
    from unissl.data.token_store import TokenStore
    from unissl.engine import TrainConfig, Trainer
    from unissl.eval.knn import knn_accuracy
    from unissl.eval.probe import ProbeConfig, linear_probe
    from unissl.methods.sorcen.config import build_config
    from unissl.methods.sorcen.features import pooled_features
    from unissl.methods.sorcen.method import build_method
    from unissl.methods.sorcen.presets import arch_for_store

    store = TokenStore(tokens, "train")
    torch.manual_seed(seed)
    settings: dict[str, object] = {"teacher_projector_grad": False, **OPTIONS[name]}  # the study's setting + one
    loss = build_config({"echo_warmup_unit": "released", "momentum": 0.99, **settings})
    spe = len(store) // 64
    method = build_method(arch_for_store("small", store.codebook_size, store.grid), "sorcen", loss,
                          num_classes=store.num_classes, steps_per_epoch=spe)
    start = time.process_time()
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(run_dir=str(Path(d) / "run"), steps=steps, global_batch=64, lr=1e-3,
                          warmup_steps=min(50, steps), min_lr=1e-5, weight_decay=0.05, betas=(0.9, 0.95), clip_grad=3.0, num_workers=0,
                          ckpt_every=10**9, log_every=100, tensorboard=False, progress=False, threads=1,
                          image_every=0, seed=seed)
        Trainer(method, store, cfg).fit()
    cpu = time.process_time() - start
    model = method.model.eval()

    def feats(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = TokenStore(tokens, split)
        out, labels = [], []
        with torch.no_grad():
            for i in range(0, len(s), 1000):
                b = s.__getitems__(list(range(i, min(i + 1000, len(s)))))
                out.append(pooled_features(model, b["ids"]))
                labels.append(b["label"])
        return torch.cat(out), torch.cat(labels)

    (tx, ty), (vx, vy) = feats("train"), feats("test")
    n = int(ty.max()) + 1
    probe, _ = linear_probe(tx, ty, vx, vy, n, ProbeConfig(), progress=False)
    knn = knn_accuracy(tx, ty, vx, vy, n)
    return {"probe_top1": float(probe["top1"]), "knn_top1": float(knn["top1"]), "train_cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", required=True, help="Fashion-MNIST token store (train and test splits)")
    ap.add_argument("--only", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), help="options to run")
    ap.add_argument("--steps", type=int, default=937, help="training steps (937 = one epoch at batch 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.only:
        results[name] = run_one(name, args.tokens, args.steps, args.seed)
        r = results[name]
        print(f"{name:24s} probe {r['probe_top1']:.2f}  kNN {r['knn_top1']:.2f}  train {r['train_cpu_s']:.0f} CPU s",
              flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
