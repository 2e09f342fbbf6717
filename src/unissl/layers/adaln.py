"""Adaptive RMSNorm: a conditioning vector (e.g. a time embedding) sets scale, shift and a residual gate.

``y = rms(x) * (1 + scale(c)) + shift(c)`` and ``gate(c) = 1 + g(c)``, with the projection from ``c``
zero-initialised, so at initialisation the layer is a plain RMSNorm and the gate is the identity. The
gate multiplies the residual branch; together with zero-initialised output projections every block
starts as the identity map. (The gate starts at one rather than zero: zero gate *and* zero output
projection would have no gradient.)
"""

from __future__ import annotations

import torch
from torch import nn

from unissl.layers.rmsnorm import rms_norm


class AdaRMSNorm(nn.Module):
    """RMSNorm modulated per sample by a conditioning vector; returns the normed input and a gate."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.proj = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.proj.weight)  # start as plain RMSNorm with gate 1
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, N, D), ``cond`` (B, C) -> normed ``y`` (B, N, D) and ``gate`` (B, 1, D)."""
        scale, shift, gate = self.proj(cond)[:, None, :].chunk(3, dim=-1)  # each (B, 1, D)
        y = rms_norm(x, 1.0 + scale, self.eps) + shift
        return y, 1.0 + gate
