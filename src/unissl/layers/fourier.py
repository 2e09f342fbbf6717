"""Random Fourier features of a scalar (e.g. the flow time t), a smooth embedding for continuous inputs."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    """``[cos(2 pi W t), sin(2 pi W t)]`` with a fixed Gaussian ``W`` (saved with the model)."""
    weight: torch.Tensor  # buffer

    def __init__(self, in_features: int, out_features: int, std: float = 1.0) -> None:
        super().__init__()
        if out_features % 2:
            raise ValueError(f"FourierFeatures needs an even output size, got {out_features}")
        self.register_buffer("weight", torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        f = 2 * math.pi * x @ self.weight.T.to(x.dtype)
        return torch.cat([f.cos(), f.sin()], dim=-1)
