"""Time samplers for flow-matching training: where on the path each training example is drawn."""

from __future__ import annotations

from typing import Protocol

import torch


class TimeSampler(Protocol):
    """Anything that draws ``n`` training times in [0, 1]."""

    def sample(self, n: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:  # (n,)
        ...


class UniformTime:
    """t ~ U(0, 1) (the RepTok generator's choice)."""

    def sample(self, n: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` times, shape (n,), float32."""
        return torch.rand(n, generator=generator, device=device)


class LogitNormalTime:
    """t = sigmoid(u), u ~ N(mean, std^2) (SD3's logit-normal; the RepTok decoder uses mean 0, std 1).

    It concentrates training on intermediate times, where the velocity is hardest to predict.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ValueError(f"LogitNormalTime std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def sample(self, n: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` times, shape (n,), float32, strictly inside (0, 1)."""
        u = torch.randn(n, generator=generator, device=device) * self.std + self.mean
        return torch.sigmoid(u)
