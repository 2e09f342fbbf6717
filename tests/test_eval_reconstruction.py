"""PSNR and SSIM against closed forms and a naive windowed reference; rFD plumbing."""

from __future__ import annotations

import math

import pytest
import torch

from unissl.errors import UnisslError
from unissl.eval.features import PixelExtractor
from unissl.eval.reconstruction import gaussian_window, reconstruction_metrics, ssim
from unissl.utils.images import psnr


def test_psnr_closed_form() -> None:
    x = torch.rand(3, 1, 8, 8) * 0.5
    d = 0.1
    expected = -20 * math.log10(d)  # MSE = d^2 with data range 1
    torch.testing.assert_close(psnr(x, x + d), torch.full((3,), expected, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()


def _naive_ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> float:
    """Loop over every valid window position of one single-channel image (float64)."""
    g = gaussian_window(size, sigma)
    w = g[:, None] * g[None, :]
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size].double(), y[i:i + size, j:j + size].double()
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).item())
    return sum(vals) / len(vals)


def test_ssim_known_values_and_naive_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images: the structure/contrast term is C2/C2 = 1, the luminance term is closed form
    a, b = 0.2, 0.7
    c1 = 0.01**2
    full = dict(dtype=torch.float64)
    got = ssim(torch.full((1, 1, 16, 16), a, **full), torch.full((1, 1, 16, 16), b, **full))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim(x, y)
    ref = sum(_naive_ssim(x[0, c], y[0, c]) for c in range(3)) / 3
    assert s[0].item() == pytest.approx(ref, rel=1e-9)
    assert 0.0 < s[0].item() < 1.0
    # more noise, lower SSIM; symmetric in its arguments
    y2 = (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(x, y2) < s).all()
    torch.testing.assert_close(ssim(x, y), ssim(y, x))


def test_ssim_small_images_and_errors() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert ssim(x, x).allclose(torch.ones(2, dtype=torch.float64))  # window shrinks to 7x7
    with pytest.raises(UnisslError, match="same shape"):
        ssim(x, x[:1])


def test_reconstruction_metrics_with_rfd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 8, 8, generator=g)
    same = reconstruction_metrics(x, x.clone(), PixelExtractor(), "rFD")
    assert same["SSIM"] == pytest.approx(1.0) and same["rFD"] == pytest.approx(0.0, abs=1e-8)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    m = reconstruction_metrics(x, noisy, PixelExtractor(), "rFD")
    assert m["rFD"] > 0.1 and m["SSIM"] < 1.0
    assert m["PSNR"] == pytest.approx(psnr(x, noisy).mean().item())
    assert "rFD" not in reconstruction_metrics(x, noisy)
