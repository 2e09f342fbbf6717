"""Few-shot linear probes: k labelled images per class, several seeds, mean and standard deviation.

The train split is cut once into a pool and a validation slice (the same cut as the linear probe);
for every (shots, seed) the probe grid is fitted on ``shots`` images per class drawn from the pool, the
head is selected on the validation slice and evaluated on the test split. Note that selecting the
learning rate on a labelled validation slice is more than a strict few-shot setting would allow; it is
the same for every extractor, so comparisons stay fair.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from unissl.errors import UnisslError
from unissl.eval.probe import ProbeConfig, fit_probes, train_val_split
from unissl.utils.progress import progress


def sample_per_class(labels: torch.Tensor, shots: int, seed: int, num_classes: int) -> torch.Tensor:
    """Indices of ``shots`` random samples of every class (seeded); error if a class has too few."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < shots:
            raise UnisslError(f"few-shot: class {c} has only {idx.numel()} train images, fewer than {shots} shots")
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[:shots]])
    return torch.cat(picked).sort().values


def few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             num_classes: int, cfg: ProbeConfig, shots: list[int], seeds: list[int],
             device: torch.device | None = None) -> dict[str, dict[str, float | list[float]]]:
    """``{"5": {"top1_mean", "top1_std", "top1": [per seed], "lr": [per seed]}, ...}`` (percent)."""
    pool, val = train_val_split(train_x.shape[0], cfg.val_fraction, cfg.seed)
    px, py, vx, vy = train_x[pool], train_y[pool], train_x[val], train_y[val]
    out: dict[str, dict[str, float | list[float]]] = {}
    bar = progress(total=len(shots) * len(seeds), desc="few-shot probes", leave=False)
    for k in shots:
        accs, lrs = [], []
        for seed in seeds:
            idx = sample_per_class(py, k, seed, num_classes)
            run_cfg = dataclasses.replace(cfg, seed=seed)
            res = fit_probes(px[idx], py[idx], vx, vy, num_classes, run_cfg, device, progress=False)
            accs.append(res.evaluate(test_x, test_y)["top1"])
            lrs.append(res.best_lr)
            bar.update()
        out[str(k)] = {"top1_mean": statistics.fmean(accs),
                       "top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "top1": accs, "lr": lrs}
    bar.close()
    return out
