"""Linear probe on frozen features, MAGE protocol, many heads fitted in one pass.

Head of every probe: parameter-free norm (LayerNorm without affine, or standardisation with train
statistics) -> ``BatchNorm1d(affine=False)`` -> ``Linear``. The BatchNorm has no parameters, so its
output is shared by all heads; the heads differ only in (learning rate, weight decay) and are stored as
one stacked weight ``(H, D, C)``. One pass over the cached features trains the whole grid: the summed
loss gives every head exactly its own gradient, and a per-head SGD/LARS update applies each head's lr
and weight decay. The best head is chosen on a held-out validation slice of the train split and
evaluated once on the test split (as dinov2's ``eval/linear.py`` does, written here from scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unissl.config import arg
from unissl.engine.schedule import cosine_value
from unissl.errors import ConfigError, UnisslError
from unissl.utils.progress import progress as progress_bar

Norm = Literal["layernorm", "standardize", "none"]


@dataclass
class ProbeConfig:
    """Hyper-parameters of the multi-head linear probe (lr = base lr * batch_size / 256)."""

    lrs: list[float] = arg([0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                           help="grid of base learning rates (lr = base * batch_size / 256); LARS needs ~100x "
                                "larger ones, e.g. 1 3 10 30 100")
    weight_decays: list[float] = arg([0.0], help="grid of weight decays (crossed with lrs)")
    optimizer: Literal["sgd", "lars"] = arg("sgd", help="SGD with momentum, or LARS (trust ratio 0.001)")
    epochs: int = arg(90, help="passes over the (cached) train features")
    min_steps: int = arg(0, help="raise epochs so that at least this many steps run (tiny train sets)")
    batch_size: int = arg(256, help="features per step")
    momentum: float = arg(0.9, help="momentum")
    warmup_epochs: float = arg(10.0, help="linear warm-up (in epochs of the nominal schedule), then cosine")
    norm: Norm = arg("layernorm", help="parameter-free norm before the BatchNorm: layernorm (no affine), "
                                       "standardize (train mean/std) or none")
    seed: int = arg(0, help="seed of the validation split, head init and batch order")
    val_fraction: float = arg(0.1, help="share of the train split held out to select the head")

    def __post_init__(self) -> None:
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ConfigError("lrs", f"must be a non-empty list of positive numbers, got {self.lrs}")
        if not self.weight_decays or any(w < 0 for w in self.weight_decays):
            raise ConfigError("weight_decays", f"must be non-negative, got {self.weight_decays}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")


class MultiHeadProbe(nn.Module):
    """Norm -> BatchNorm1d(affine=False) -> H independent linear heads, stacked as (H, D, C)."""
    mean: torch.Tensor  # buffer
    std: torch.Tensor  # buffer

    def __init__(self, dim: int, num_classes: int, num_heads: int, norm: Norm = "layernorm",
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        # MAGE initialises its probe head with a truncated normal of std 0.01 and zero bias.
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_heads, dim, num_classes), std=0.01))
        self.bias = nn.Parameter(torch.zeros(num_heads, num_classes))
        self.register_buffer("mean", mean if mean is not None else torch.zeros(dim))
        self.register_buffer("std", std if std is not None else torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter-free norm followed by the BatchNorm: (B, D) -> (B, D)."""
        if self.norm == "layernorm":
            x = F.layer_norm(x, x.shape[-1:])
        elif self.norm == "standardize":
            x = (x - self.mean) / self.std
        return self.bn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> logits (H, B, C)."""
        z = self.normalize(x)  # (B, D)
        return torch.einsum("bd,hdc->hbc", z, self.weight) + self.bias[:, None, :]


@torch.no_grad()
def _update(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor,
            momentum: float, lars: bool) -> None:
    """One SGD(+momentum) or LARS step with per-head lr and weight decay; dim 0 of every tensor is the head."""
    shape = (-1,) + (1,) * (p.ndim - 1)
    d = grad + wd.view(shape) * p
    if lars:
        # LARS (You et al.; MoCo v3 / MAGE variant): scale each head's update by 0.001 * ||w|| / ||d||.
        dims = tuple(range(1, p.ndim))
        wn, dn = p.norm(dim=dims), d.norm(dim=dims)
        trust = torch.where((wn > 0) & (dn > 0), 0.001 * wn / dn, torch.ones_like(wn))
        d = d * trust.view(shape)
    buf.mul_(momentum).add_(d)
    p.sub_(lr.view(shape) * buf)


@dataclass
class ProbeResult:
    """Outcome of a grid of probes: the selected head and every head's validation accuracy."""

    probe: MultiHeadProbe
    grid: list[tuple[float, float]]  # (base lr, weight decay) of each head
    val_top1: list[float]  # per head, percent
    best: int  # index of the selected head

    @property
    def best_lr(self) -> float:
        return self.grid[self.best][0]

    @property
    def best_wd(self) -> float:
        return self.grid[self.best][1]

    @torch.no_grad()
    def logits(self, feats: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Logits (N, C) of the selected head."""
        self.probe.eval()
        w, b = self.probe.weight[self.best], self.probe.bias[self.best]
        return torch.cat([self.probe.normalize(feats[i:i + batch_size]) @ w + b
                          for i in range(0, feats.shape[0], batch_size)])

    def evaluate(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Top-1 / top-5 accuracy (percent) of the selected head."""
        return topk_accuracy(self.logits(feats), labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` from logits or scores (N, C); k larger than C counts as C."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = (logits.topk(kk, dim=1).indices == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


@torch.no_grad()
def _head_top1(probe: MultiHeadProbe, feats: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> list[float]:
    probe.eval()
    correct = torch.zeros(probe.weight.shape[0])
    for i in range(0, feats.shape[0], batch_size):
        pred = probe(feats[i:i + batch_size]).argmax(-1)  # (H, B)
        correct += (pred == labels[i:i + batch_size]).sum(1).float()
    return (100.0 * correct / feats.shape[0]).tolist()


def fit_probes(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
               num_classes: int, cfg: ProbeConfig, device: torch.device | None = None,
               progress: bool = True) -> ProbeResult:
    """Train the (lr x weight decay) grid on ``train`` and select the best head on ``val``."""
    if train_x.ndim != 2 or train_x.shape[0] != train_y.shape[0]:
        raise UnisslError(f"linear probe: features {tuple(train_x.shape)} and labels {tuple(train_y.shape)} "
                          "do not match")
    if val_x.shape[0] == 0:
        raise ConfigError("val_fraction", "leaves the linear probe's validation slice empty; raise it")
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    grid = [(lr, wd) for wd in cfg.weight_decays for lr in cfg.lrs]
    n, dim = train_x.shape
    std, mean = torch.std_mean(train_x.double(), dim=0)
    probe = MultiHeadProbe(dim, num_classes, len(grid), cfg.norm, mean.float(), std.float().clamp_min(1e-6)).to(device)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the last incomplete batch (BatchNorm needs > 1 sample)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    warmup = min(total, int(round(cfg.warmup_epochs / cfg.epochs * total)))
    lr0 = torch.tensor([lr * bs / 256 for lr, _ in grid], device=device)
    wd = torch.tensor([w for _, w in grid], device=device)
    zero = torch.zeros_like(wd)
    bufs = [torch.zeros_like(probe.weight), torch.zeros_like(probe.bias)]
    x_all, y_all = train_x.float(), train_y.long()
    step = 0
    bar = progress_bar(total=total, desc=f"probe x{len(grid)} heads", disable=not progress, leave=False)
    for _ in range(epochs):
        probe.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            logits = probe(x)  # (H, B, C)
            # Summing the heads' mean losses gives each head the gradient of its own loss.
            loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(grid)), reduction="sum") / y.shape[0]
            gw, gb = torch.autograd.grad(loss, [probe.weight, probe.bias])
            lr = lr0 * cosine_value(step, 1.0, 0.0, total, warmup)  # the engine's warm-up + cosine
            lars = cfg.optimizer == "lars"
            _update(probe.weight.data, gw, bufs[0], lr, wd, cfg.momentum, lars)
            # Biases: no weight decay and no LARS adaptation (as in MAGE / MoCo v3).
            _update(probe.bias.data, gb, bufs[1], lr, zero, cfg.momentum, False)
            step += 1
            bar.update()
    bar.close()
    val_top1 = _head_top1(probe, val_x.float().to(device), val_y.long().to(device))
    # A head whose lr was too large may diverge; it can never be selected (the others are unaffected).
    finite = torch.isfinite(probe.weight).flatten(1).all(1) & torch.isfinite(probe.bias).all(1)
    val_top1 = [v if ok else -1.0 for v, ok in zip(val_top1, finite.tolist())]
    if max(val_top1) < 0:
        raise ConfigError("lrs", "every linear-probe head diverged (non-finite weights); lower them")
    best = max(range(len(grid)), key=lambda i: (val_top1[i], -i))
    return ProbeResult(probe=probe.cpu(), grid=grid, val_top1=val_top1, best=best)


def train_val_split(num: int, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a seeded random split of ``range(num)``."""
    if not 0.0 < val_fraction < 1.0:
        raise UnisslError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(num * val_fraction)))
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, cfg: ProbeConfig, device: torch.device | None = None,
                 progress: bool = True) -> tuple[dict[str, float], ProbeResult]:
    """The full protocol: split ``cfg.val_fraction`` off train, fit the grid, report test top-1/top-5."""
    tr, va = train_val_split(train_x.shape[0], cfg.val_fraction, cfg.seed)
    result = fit_probes(train_x[tr], train_y[tr], train_x[va], train_y[va], num_classes, cfg, device, progress)
    metrics = result.evaluate(test_x, test_y)
    metrics["val_top1"] = result.val_top1[result.best]
    return metrics, result
