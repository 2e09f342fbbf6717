"""Square images <-> sequences of flattened patches, row-major (the ViT / DiT layout)."""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C p p) with N = (H / p) (W / p), patches in row-major order."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, C p p) -> (B, C, gh p, gw p), the inverse of :func:`patchify` for a ``grid`` of (gh, gw) patches."""
    b = x.shape[0]
    p, (gh, gw) = patch_size, grid
    x = x.reshape(b, gh, gw, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(b, channels, gh * p, gw * p)
