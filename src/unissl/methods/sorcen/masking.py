"""MAGE's masking-and-dropping scheme and Sorcen's jittered window mask, on id grids.

One masking ratio r per training step, drawn from Normal(0.55, 0.25) truncated to [0.5, 1]. Per sample
the N positions are ranked by uniform noise (an argsort, so every sample gets exactly the same counts
and no retry loop is needed): the first ceil(N * r) are masked and the first ceil(N * 0.5) of those are
dropped from the encoder input; masked-but-kept positions carry the [MASK] id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def sample_mask_ratio(mean: float = 0.55, std: float = 0.25, low: float = 0.5, high: float = 1.0,
                      generator: torch.Generator | None = None) -> float:
    """One draw of Normal(mean, std) truncated to [low, high] (inverse-CDF sampling)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    a = normal.cdf(torch.tensor((low - mean) / std, dtype=torch.float64))
    b = normal.cdf(torch.tensor((high - mean) / std, dtype=torch.float64))
    u = a + (b - a) * torch.rand((), generator=generator, dtype=torch.float64)
    r = mean + std * math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    return float(r.clamp(low, high))


@dataclass
class TokenMasking:
    """Which positions of a batch are masked and which are dropped (image positions only, no class slot)."""

    token_mask: torch.Tensor  # (B, N) bool: the target positions of the loss (dropped ones included)
    drop_mask: torch.Tensor  # (B, N) bool: removed from the encoder input; subset of token_mask
    keep_index: torch.Tensor  # (B, N - num_dropped) int64: kept positions in increasing order

    @property
    def num_masked(self) -> int:
        return int(self.token_mask[0].sum())

    @property
    def num_dropped(self) -> int:
        return self.token_mask.shape[1] - self.keep_index.shape[1]


def masking_counts(num_positions: int, ratio: float, drop_ratio: float = 0.5) -> tuple[int, int]:
    """(num_masked, num_dropped) = (ceil(N * ratio), ceil(N * drop_ratio)), with dropped <= masked."""
    num_masked = min(num_positions, math.ceil(num_positions * ratio))
    num_dropped = min(num_masked, math.ceil(num_positions * drop_ratio))
    return num_masked, num_dropped


def random_masking(batch: int, num_positions: int, ratio: float, drop_ratio: float = 0.5,
                   device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> TokenMasking:
    """Rank positions by uniform noise; mask the first ceil(N*ratio), drop the first ceil(N*drop_ratio).

    ``noise`` (B, N) replaces the uniform draw (to replay a recorded one, e.g. the released code's).
    """
    num_masked, num_dropped = masking_counts(num_positions, ratio, drop_ratio)
    if noise is None:
        noise = torch.rand(batch, num_positions, device=device, generator=generator)  # (B, N)
    elif tuple(noise.shape) != (batch, num_positions):
        raise ValueError(f"noise must be ({batch}, {num_positions}), got {tuple(noise.shape)}")
    order = noise.argsort(dim=1)  # (B, N): positions, lowest noise first
    rank = order.argsort(dim=1)  # (B, N): rank of every position
    token_mask = rank < num_masked  # (B, N)
    drop_mask = rank < num_dropped  # (B, N)
    keep_index = order[:, num_dropped:].sort(dim=1).values  # (B, N - num_dropped)
    return TokenMasking(token_mask=token_mask, drop_mask=drop_mask, keep_index=keep_index)


def window_mask(ids: torch.Tensor, side: int, mask_id: int, generator: torch.Generator | None = None,
                corners: torch.Tensor | None = None) -> torch.Tensor:
    """Keep one ``side`` x ``side`` window per sample at a random position; every id outside -> ``mask_id``.

    ``ids`` is (B, h, w); the window is clipped to the grid (``side`` larger than h or w keeps that axis).
    ``corners`` (B, 2) int (top row, left column) replaces the uniform draw of the window positions.
    """
    b, h, w = ids.shape
    sh, sw = min(side, h), min(side, w)
    if corners is None:
        top = torch.randint(0, h - sh + 1, (b, 1, 1), generator=generator).to(ids.device)  # (B, 1, 1)
        left = torch.randint(0, w - sw + 1, (b, 1, 1), generator=generator).to(ids.device)  # (B, 1, 1)
    else:
        if tuple(corners.shape) != (b, 2) or int(corners.min()) < 0 or \
                int(corners[:, 0].max()) > h - sh or int(corners[:, 1].max()) > w - sw:
            raise ValueError(f"corners must be ({b}, 2) with top <= {h - sh} and left <= {w - sw}")
        top = corners[:, 0].view(b, 1, 1).to(ids.device)  # (B, 1, 1)
        left = corners[:, 1].view(b, 1, 1).to(ids.device)  # (B, 1, 1)
    rows = torch.arange(h, device=ids.device).view(1, h, 1)
    cols = torch.arange(w, device=ids.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)  # (B, h, w)
    return torch.where(inside, ids, torch.full_like(ids, mask_id))


def sample_window_side(grid: tuple[int, int], generator: torch.Generator | None = None) -> int:
    """Window side s uniform over the integers in [ceil(h/2), h] (h = the shorter grid side)."""
    h = min(grid)
    low = math.ceil(h / 2)
    return int(torch.randint(low, h + 1, (1,), generator=generator))
