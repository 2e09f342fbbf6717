"""RMSNorm: divide by the root-mean-square over the last dimension, then a learned per-channel gain."""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last dimension, computed in at least float32."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    inv = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * inv * scale.to(dtype)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain initialised to one (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return rms_norm(x, self.scale, self.eps)

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, eps={self.eps}"
