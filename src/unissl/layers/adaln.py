"""Adaptive RMSNorm: a conditioning vector (e.g. a time embedding) modulates an RMSNorm per sample.

Two forms (``modulation``):

* ``"scale_shift_gate"`` (default): ``y = rms(x) * (1 + scale(c)) + shift(c)`` and ``gate(c) = 1 + g(c)``,
  one biased projection from ``c`` for all three. The gate multiplies the residual branch.
* ``"scale"`` (CompVis/RepTok's decoder): ``y = rms(x) * (1 + W c)`` with a bias-free ``W``, no shift and
  no gate (the residual branch is added as it is).

Either projection is zero-initialised, so at initialisation the layer is a plain RMSNorm (and the gate the
identity); together with zero-initialised output projections every block starts as the identity map. (The
gate starts at one rather than zero: zero gate *and* zero output projection would have no gradient.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from unissl.layers.rmsnorm import rms_norm

Modulation = Literal["scale_shift_gate", "scale"]


class AdaRMSNorm(nn.Module):
    """RMSNorm modulated per sample by a conditioning vector; returns the normed input and a gate (None for
    the scale-only form)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6, modulation: Modulation = "scale_shift_gate") -> None:
        super().__init__()
        if modulation not in ("scale_shift_gate", "scale"):
            raise ValueError(f"modulation must be 'scale_shift_gate' or 'scale', got {modulation!r}")
        self.eps = eps
        self.dim = dim
        self.modulation = modulation
        full = modulation == "scale_shift_gate"
        self.proj = nn.Linear(cond_dim, 3 * dim if full else dim, bias=full)
        nn.init.zeros_(self.proj.weight)  # start as plain RMSNorm with gate 1
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` (B, N, D), ``cond`` (B, C) -> normed ``y`` (B, N, D) and ``gate`` (B, 1, D) (None: no gate)."""
        if self.modulation == "scale":
            return rms_norm(x, 1.0 + self.proj(cond)[:, None, :], self.eps), None
        scale, shift, gate = self.proj(cond)[:, None, :].chunk(3, dim=-1)  # each (B, 1, D)
        y = rms_norm(x, 1.0 + scale, self.eps) + shift
        return y, 1.0 + gate
