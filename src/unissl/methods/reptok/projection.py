"""From the SSL token to the decoder's condition, and the cosine regulariser that keeps it near the SSL one.

``h = LayerNorm(W z + b) + zero_pad(z)`` with W, b zero-initialised: at start the linear branch is the
zero vector, LayerNorm maps it to its (zero) bias, so h is exactly the SSL token padded with zeros to the
decoder width. Training can then move the condition away from z as far as it helps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import UnisslError


def zero_pad(z: torch.Tensor, width: int) -> torch.Tensor:
    """Pad the last dimension of ``z`` (..., D) with zeros to ``width`` (>= D)."""
    if z.shape[-1] > width:
        raise ValueError(f"cannot zero-pad a {z.shape[-1]}-d token to a narrower width {width}")
    return F.pad(z, (0, width - z.shape[-1]))


class ResidualProjection(nn.Module):
    """h = LayerNorm(W z + b) + zero_pad(z), with W and b zero-initialised (h = padded z at start)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if out_dim < in_dim:
            raise UnisslError(f"decoder width {out_dim} is smaller than the token width {in_dim}; "
                             "choose a wider decoder preset")
        self.out_dim = out_dim
        self.fc = nn.Linear(in_dim, out_dim)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D_z) -> (B, D_dec)
        return self.norm(self.fc(z)) + zero_pad(z, self.out_dim)


def cosine_loss(z: torch.Tensor, z_frozen: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - cos(z, z_frozen)``; ``z``, ``z_frozen`` (B, D) -> scalar."""
    return (1.0 - F.cosine_similarity(z.float(), z_frozen.float(), dim=-1)).mean()
