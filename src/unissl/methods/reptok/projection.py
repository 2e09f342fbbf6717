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


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA (Kornblith et al. 2019) between two sets of features ``x`` (B, D1), ``y`` (B, D2) -> scalar.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``: 1 for features
    that agree up to rotation and isotropic scale, near 0 for unrelated ones.
    """
    xc = x.double() - x.double().mean(0, keepdim=True)
    yc = y.double() - y.double().mean(0, keepdim=True)
    cross = (yc.T @ xc).pow(2).sum()
    norm = (xc.T @ xc).pow(2).sum().sqrt() * (yc.T @ yc).pow(2).sum().sqrt()
    return (cross / norm.clamp_min(1e-30)).float()


@torch.no_grad()
def token_drift(z: torch.Tensor, z_frozen: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far adapted tokens ``z`` (B, D) moved from the frozen encoder's ``z_frozen`` (B, D).

    * ``drift_1mcos``: mean ``1 - cos(z, z_frozen)`` (what the regulariser penalises);
    * ``drift_centred_1mcos``: the same after subtracting each set's batch mean, so that a shift shared by
      every image (which the generator's normalisation removes anyway) does not count;
    * ``drift_cka``: linear CKA between the two sets (1: the same geometry).
    """
    zc, fc = z.float() - z.float().mean(0, keepdim=True), z_frozen.float() - z_frozen.float().mean(0, keepdim=True)
    return {"drift_1mcos": cosine_loss(z, z_frozen), "drift_centred_1mcos": cosine_loss(zc, fc),
            "drift_cka": linear_cka(z, z_frozen)}
