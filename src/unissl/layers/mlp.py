"""Small feed-forward blocks and the sinusoidal timestep embedding of the token generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by a 2-layer MLP (as DiT's TimestepEmbedder)."""

    def __init__(self, dim: int, freq_dim: int = 256, max_period: float = 10_000.0, t_scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.t_scale = t_scale  # t in [0, 1] is stretched so that the lowest frequencies still vary
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * self.t_scale)[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear on the last axis."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
