"""Random draws shared by the samplers."""

from __future__ import annotations

import torch


def gumbel_noise(shape: torch.Size | tuple[int, ...], device: torch.device | str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise ``-log(-log u)``, ``u ~ U(0, 1)`` kept away from 0 and 1.

    With a (CPU) ``generator`` the uniforms are drawn on the CPU and moved to ``device``, so a seed gives the
    same noise on every device. ``argmax(x + gumbel_noise)`` samples from ``softmax(x)`` (the Gumbel-max trick).
    """
    if generator is not None:
        u = torch.rand(shape, generator=generator).to(device)
    else:
        u = torch.rand(shape, device=device)
    return -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
