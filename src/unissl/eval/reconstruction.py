"""Reconstruction metrics: PSNR, SSIM (Gaussian window) and rFD (Fréchet distance of features).

SSIM follows Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed per
channel over the *valid* window positions (no padding) and averaged over positions and channels. For
images smaller than the window the window shrinks to the image (odd size), keeping sigma.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unissl.errors import UnisslError
from unissl.eval.features import features_of
from unissl.eval.frechet import frechet_distance_stats, gaussian_stats
from unissl.utils.images import psnr


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise UnisslError(f"originals {tuple(x.shape)} and reconstructions {tuple(y.shape)} must have the same "
                          "shape (N, C, H, W)")


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) in float64."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (N,) with a separable Gaussian window, valid positions only, float64."""
    _check_pair(x, y)
    n, c, h, w = x.shape
    size = min(win_size, h if h % 2 else h - 1, w if w % 2 else w - 1)
    if size < 1:
        raise UnisslError(f"images of size {h}x{w} are too small for SSIM")
    g = gaussian_window(size, sigma)
    kh, kw = g.view(1, 1, size, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # depthwise separable Gaussian, (N, C, h', w')
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    x, y = x.double(), y.double()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor, extractor: Any | None = None,
                           metric_name: str = "rFD", batch_size: int = 256) -> dict[str, float]:
    """Mean PSNR / SSIM over images and, with an extractor, the rFD between the two feature sets."""
    _check_pair(originals, reconstructions)
    p = psnr(originals, reconstructions)
    out = {"PSNR": p[torch.isfinite(p)].mean().item() if torch.isfinite(p).any() else float("inf"),
           "SSIM": ssim(originals, reconstructions).mean().item(),
           "num_images": float(originals.shape[0])}
    if extractor is not None:
        device = getattr(extractor, "device", None)
        fo = features_of(extractor, originals, batch_size, device, progress="features of originals")
        fr = features_of(extractor, reconstructions, batch_size, device, progress="features of reconstructions")
        out[metric_name] = frechet_distance_stats(gaussian_stats(fo), gaussian_stats(fr))
    return out
