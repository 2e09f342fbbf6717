"""A toy dataset and method for engine tests: a small MLP regressing fixed synthetic data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unissl.config import arg
from unissl.engine import Method, TrainConfig


class ToyDataset:
    """``n`` fixed samples ``{"x": (D,), "y": ()}`` with ``y = x @ w + 0.1 * noise`` (seeded); ``poison`` is
    the index of a sample whose target is infinite (a corrupt record: every batch holding it has a
    non-finite loss)."""

    def __init__(self, n: int = 64, dim: int = 8, seed: int = 123, poison: int = -1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.randn(dim, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, generator=g)
        if poison >= 0:
            self.y[poison] = float("inf")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx]}  # (B, D), (B,)


class ToyMethod(Method):
    """MLP regression; ``noise`` adds input noise from the global torch RNG (so resume must restore it).

    ``nan_at`` makes the loss NaN from that optimizer step on (1-based), counted by a buffer that the
    ``on_train_step_end`` hook advances.
    """

    def __init__(self, dim: int = 8, hidden: int = 16, noise: float = 0.0, nan_at: int = 0, depth: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, 1))
        if depth:  # a deep linear net: trains at a small rate, climbs by orders of magnitude then overflows at a high one
            self.net = nn.Sequential(nn.Linear(dim, hidden), *[nn.Linear(hidden, hidden) for _ in range(depth - 2)],
                                     nn.Linear(hidden, 1))
        self.noise = noise
        self.nan_at = nan_at
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]  # (B, D)
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        pred = self.net(x).squeeze(-1)  # (B,)
        loss = (pred - batch["y"]).pow(2).mean()
        if self.nan_at and int(self.steps_done) + 1 >= self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "abs_err": (pred - batch["y"]).abs().mean().detach()}

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        self.steps_done.fill_(step)

    def log_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"][:4].sigmoid()  # (4, D) -> (4, 1, 2, D/2) in [0, 1]
        return {"inputs": x.reshape(4, 1, 2, -1)}


@dataclass
class ToyConfig:
    """Settings of the toy training script (tests/helpers/train_toy.py)."""

    n: int = arg(40, help="dataset size")
    noise: float = arg(0.0, help="input noise std")
    sleep: float = arg(0.0, help="seconds to sleep after every step (to be killable mid-run)")
    poison: int = arg(-1, help="index of a sample with an infinite target (-1: none)")
    depth: int = arg(0, help="a deep linear net of this many layers instead of the small MLP (0: the MLP)")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=20, global_batch=8, base_lr=0.05 * 256 / 8, weight_decay=0.01, warmup_steps=3, ckpt_every=5,
        log_every=1, num_workers=0, tensorboard=False, progress=False, device="cpu"))


def build(cfg: ToyConfig) -> tuple[ToyMethod, ToyDataset]:
    """The seeded method and the dataset of a toy run."""
    torch.manual_seed(cfg.train.seed)
    return ToyMethod(noise=cfg.noise, depth=cfg.depth), ToyDataset(cfg.n, poison=cfg.poison)
