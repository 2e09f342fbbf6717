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


def rotary_tables(theta: torch.Tensor, width: int, n_prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation of :func:`apply_rotary` as two per-channel tables over all tokens, prefix included.

    ``theta`` (H, N, d) -> ``cos``, ``sin`` (H, n_prefix + N, width) such that
    ``apply_rotary_tables(x, cos, sin, rotary_permutation(width, d))`` equals rotating the last N tokens of
    ``x`` with :func:`apply_rotary` and leaving the first ``n_prefix`` (and every channel past 2 d) as they
    are: there ``cos = 1`` and ``sin = 0``.
    """
    h, n, d = theta.shape
    cos = torch.ones(h, n_prefix + n, width, dtype=theta.dtype, device=theta.device)
    sin = torch.zeros_like(cos)
    c, s = theta.cos(), theta.sin()
    cos[:, n_prefix:, :d], cos[:, n_prefix:, d:2 * d] = c, c
    sin[:, n_prefix:, :d], sin[:, n_prefix:, d:2 * d] = -s, s
    return cos, sin


def rotary_permutation(width: int, d: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Channel order that pairs each rotated channel with its partner: [d..2d-1, 0..d-1, 2d..width-1]."""
    return torch.cat([torch.arange(d, 2 * d), torch.arange(d), torch.arange(2 * d, width)]).to(device)


def apply_rotary_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x * cos + x[..., perm] * sin``: :func:`apply_rotary` as one gather and two fused element-wise ops
    (no slicing and no concatenation of the activations). ``x`` (..., N, E), tables broadcastable to it."""
    return torch.addcmul(x * cos, x.index_select(-1, perm), sin)


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

    def tables(self, pos: torch.Tensor, width: int, n_prefix: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cos, sin, perm) of :func:`rotary_tables` for positions ``pos`` (N, 2), cached: the angles depend
        only on the positions and the fixed frequencies, so every step after the first reuses them."""
        key = (pos.data_ptr(), pos._version, tuple(pos.shape), pos.dtype, pos.device, width, n_prefix)
        cached = getattr(self, "_tables", None)
        if cached is None or cached[0] != key:
            theta = self.forward(pos)  # (H, N, d)
            cos, sin = rotary_tables(theta, width, n_prefix)
            cached = (key, (cos, sin, rotary_permutation(width, theta.shape[-1], pos.device)))
            self._tables = cached
        return cached[1]
