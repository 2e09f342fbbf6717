"""Paths between two tokens: linear and spherical interpolation."""

from __future__ import annotations

import torch


def lerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(1 - w) a + w b`` for tokens a, b (D,) and weights w (K,) -> (K, D)."""
    w = w.to(a.dtype)[:, None]
    return (1 - w) * a[None] + w * b[None]


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation (Shoemake) of tokens a, b (D,) at weights w (K,) -> (K, D).

    Follows the great circle between the two directions, so intermediate tokens keep a norm close to the
    endpoints' (a straight line through the middle of the sphere shrinks it); falls back to :func:`lerp`
    for (anti-)parallel tokens.
    """
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(eps)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return lerp(a, b, w)
    w = w.to(a.dtype)[:, None]
    return (torch.sin((1 - w) * omega) * a[None] + torch.sin(w * omega) * b[None]) / torch.sin(omega)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}
