"""The linear (rectified-flow / conditional-OT) probability path between data and Gaussian noise.

Two time conventions are in use in RepTok and both are expressed by ``data_at``, the time at which the
path sits on the data:

* ``data_at=0`` (RepTok decoder): ``x_t = (1 - t) x + t eps``, target velocity ``dx_t/dt = eps - x``;
  sampling integrates from ``t=1`` (noise) to ``t=0`` (data).
* ``data_at=1`` (RepTok generator, the official code's convention): ``x_t = t x + (1 - t) eps``,
  target ``x - eps``; sampling integrates from ``t=0`` to ``t=1``.

In both cases the target is the exact time derivative of ``x_t``, so the network learns the velocity
field that an ODE solver (:mod:`unissl.flow.solvers`) integrates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PathSample:
    """One draw from the path: the noisy point, its time, the noise used and the regression target."""

    x_t: torch.Tensor  # (B, ...) point on the path
    t: torch.Tensor  # (B,) time of each sample
    noise: torch.Tensor  # (B, ...) the Gaussian endpoint eps
    target: torch.Tensor  # (B, ...) d x_t / dt, the velocity to regress


def expand_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample times (B,) to (B, 1, ..., 1) so they broadcast against ``like`` (B, ...)."""
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"times must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class LinearPath:
    """Straight line between a data point and Gaussian noise; ``data_at`` (0 or 1) is where the data is."""

    def __init__(self, data_at: float = 0.0) -> None:
        if data_at not in (0.0, 1.0):
            raise ValueError(f"data_at must be 0 or 1, got {data_at}")
        self.data_at = float(data_at)

    @property
    def noise_at(self) -> float:
        """The time at which the path is pure noise (where sampling starts)."""
        return 1.0 - self.data_at

    def sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> PathSample:
        """Points ``x_t`` and target velocities for data ``x0`` (B, ...) at times ``t`` (B,)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != data shape {tuple(x0.shape)}")
        tt = expand_time(t, x0)  # (B, 1, ..., 1)
        if self.data_at == 0.0:
            x_t = (1.0 - tt) * x0 + tt * noise
            target = noise - x0
        else:
            x_t = tt * x0 + (1.0 - tt) * noise
            target = x0 - noise
        return PathSample(x_t=x_t, t=t, noise=noise, target=target)

    def data_from_velocity(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The data estimate implied by a velocity ``v`` at ``(x_t, t)`` (one-step jump to the data end)."""
        tt = expand_time(t, x_t)
        # data_at=0: x = x_t - t v ; data_at=1: x = x_t + (1 - t) v
        return x_t - tt * v if self.data_at == 0.0 else x_t + (1.0 - tt) * v
