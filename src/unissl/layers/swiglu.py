"""SwiGLU feed-forward: ``W_out (silu(W_g x) * (W_v x))`` (Shazeer 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated feed-forward with a SiLU gate; ``zero_init_out`` makes the block output zero at start."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, bias: bool = False,
                 zero_init_out: bool = False) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=bias)  # value and gate in one matmul
        self.down = nn.Linear(hidden, out_dim or dim, bias=bias)
        if zero_init_out:
            nn.init.zeros_(self.down.weight)
            if self.down.bias is not None:
                nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D_out)
        value, gate = self.up(x).chunk(2, dim=-1)  # (..., H) each
        return self.down(value * F.silu(gate))
