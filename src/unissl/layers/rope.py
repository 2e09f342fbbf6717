"""2-D axial rotary position embedding (RoPE) for image tokens.

Each token has a position (y, x) on a canvas normalised to [-1, 1] (cell centres), so the same network
works at several grid sizes. For each head, the first half of the head dimension is rotated: one quarter
by angles ``y * f`` and one quarter by ``x * f`` for a set of frequencies ``f`` log-spaced between pi and
10 pi and spread over the heads (each head sees different frequencies, as in HDiT / RepTok's decoder).
The other half passes unchanged, which keeps some position-free capacity in every head.
Tokens at position (0, 0) are not rotated at all, so a prefix token (e.g. a condition token) can simply
be given that position or skipped.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def axial_positions(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Cell-centre coordinates of an (h, w) grid in [-1, 1] (aspect kept), row-major: (h*w, 2) as (y, x)."""
    side = max(h, w)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / side * 2 - h / side
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / side * 2 - w / side
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (h, w, 2)
    return grid.reshape(h * w, 2)


def apply_rotary(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., i], x[..., i + d])`` by ``theta[..., i]`` for i < d = theta.shape[-1].

    ``x`` (..., N, E) with E >= 2 d; ``theta`` broadcastable to (..., N, d). Remaining channels pass.
    """
    d = theta.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    x1, x2, rest = x[..., :d].to(dtype), x[..., d:2 * d].to(dtype), x[..., 2 * d:]
    cos, sin = theta.to(dtype).cos(), theta.to(dtype).sin()
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    return torch.cat([y1.to(x.dtype), y2.to(x.dtype), rest], dim=-1)


class AxialRoPE2D(nn.Module):
    """Rotary angles for 2-D positions; ``head_dim`` must be a multiple of 8."""
    freqs: torch.Tensor  # buffer

    def __init__(self, head_dim: int, n_heads: int, min_freq: float = math.pi, max_freq: float = 10 * math.pi) -> None:
        super().__init__()
        if head_dim % 8:
            raise ValueError(f"AxialRoPE2D needs head_dim % 8 == 0, got {head_dim}")
        k = head_dim // 8  # frequencies per axis and head: rotates head_dim / 2 channels in total
        freqs = torch.linspace(math.log(min_freq), math.log(max_freq), n_heads * k + 1)[:-1].exp()
        # (n_heads, k): head h gets every n_heads-th frequency, so all heads cover the whole range
        self.register_buffer("freqs", freqs.view(k, n_heads).T.contiguous(), persistent=False)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions (N, 2) -> angles (n_heads, N, head_dim // 4) for :func:`apply_rotary`."""
        f = self.freqs.to(pos.dtype)  # (H, k)
        th_y = pos[None, :, 0:1] * f[:, None, :]  # (H, N, k)
        th_x = pos[None, :, 1:2] * f[:, None, :]  # (H, N, k)
        return torch.cat([th_y, th_x], dim=-1)  # (H, N, 2k)
