"""Image grids as PNG files (no torchvision needed) and the one PSNR."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unissl.errors import UnisslError
from unissl.utils.io import atomic_file


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (N,) of images (N, C, H, W) in [0, data_range]: ``10 log10(data_range^2 / MSE)``
    with the MSE over all pixels and channels of an image, in float64. The one PSNR of unissl (training logs,
    online and offline evaluation); it has no cap: identical images give +inf."""
    if x.shape != y.shape or x.ndim != 4:
        raise UnisslError(f"PSNR needs two image batches of one shape (N, C, H, W), got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)  # (N,)
    return 10.0 * torch.log10(data_range**2 / mse)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``images`` (N, C, H, W) with values in [0, 1] into one uint8 array (H', W', C)."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"make_grid expects 1 or 3 channels, got {c}")
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return arr


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1, padding: int = 2) -> Path:
    """Save ``images`` (N, C, H, W) in [0, 1] as one PNG grid, upscaled ``scale`` times (nearest)."""
    arr = make_grid(images, nrow=nrow, padding=padding)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    with atomic_file(path, "wb") as f:
        img.save(f, format="PNG")
    return path
