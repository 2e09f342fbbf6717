"""Fréchet distance between Gaussians fitted to features (FID when the features are Inception-v3's).

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

Two ways to get ``tr((S1 S2)^{1/2})``, both in float64:

* ``method="reference"`` (the default): what the ADM evaluation suite, pytorch-fid and torch-fidelity do,
  so that numbers are comparable with published FIDs: ``scipy.linalg.sqrtm(S1 @ S2)``; if the result is
  not finite, retry with ``eps = 1e-6`` added to both diagonals; a complex result whose imaginary part
  exceeds 1e-3 on the diagonal is an error, otherwise its real part is used.
* ``method="eigh"``: without a general matrix square root. With ``R = S1^{1/2}`` (symmetric, from an
  eigen-decomposition), ``S1 S2 = R (R S2 R) R^{-1}`` is similar to the symmetric PSD ``R S2 R``, so the
  trace of the root is the sum of the square roots of its eigenvalues: stable where ``sqrtm`` of the
  product returns complex noise. On well-conditioned statistics the two agree to ~1e-8 relative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unissl.errors import UnisslError
from unissl.utils.io import atomic_file


@dataclass
class GaussianStats:
    """Mean (D,) and covariance (D, D) in float64 of a feature set of ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write ``mu``/``sigma`` as safetensors, atomically."""
        from safetensors.numpy import save

        meta = {"n": str(self.n), **(metadata or {})}
        with atomic_file(path, "wb") as f:
            f.write(save({"mu": self.mu, "sigma": self.sigma}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> GaussianStats:
        """Read statistics written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                return cls(mu=f.get_tensor("mu"), sigma=f.get_tensor("sigma"), n=int(meta.get("n", 0)))
        except Exception as e:
            raise UnisslError(f"cannot read statistics file {path} ({e}); delete it to recompute") from None


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (float64) of features (N, D), N >= 2."""
    x = feats.double().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UnisslError(f"Fréchet distance needs at least 2 feature vectors (N, D), got shape {x.shape}")
    return GaussianStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), n=x.shape[0])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^{1/2})`` for symmetric PSD ``S1``, ``S2`` via the similar matrix ``S1^½ S2 S1^½``."""
    r = sqrtm_psd(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def trace_sqrt_product_reference(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """``tr((S1 S2)^{1/2})`` as the ADM / pytorch-fid / torch-fidelity references compute it (scipy sqrtm)."""
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():  # a singular product is handled below, as the references do
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # a singular product: offset both diagonals, as the references do
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise UnisslError(f"Fréchet distance: the matrix square root has an imaginary component "
                              f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are degenerate (too few samples "
                              f"for the feature dimension?)")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "reference") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64); see the module docstring."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise UnisslError(f"Fréchet distance: mismatched statistics, mu {mu1.shape} vs {mu2.shape}, "
                          f"sigma {s1.shape} vs {s2.shape} (were they computed with the same extractor?)")
    if method not in ("reference", "eigh"):
        raise ValueError(f"method must be 'reference' or 'eigh', got {method!r}")
    diff = mu1 - mu2
    tr = trace_sqrt_product_reference(s1, s2) if method == "reference" else trace_sqrt_product(s1, s2)
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr
    return float(max(fd, 0.0))  # tiny negative values are rounding noise of identical inputs


def frechet_distance_stats(a: GaussianStats, b: GaussianStats, method: str = "reference") -> float:
    """Fréchet distance between two :class:`GaussianStats`."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method)
