"""Fréchet distance, Inception Score and precision/recall against closed forms and naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from unissl.errors import UnisslError
from unissl.eval.frechet import GaussianStats, frechet_distance, gaussian_stats, sqrtm_psd, trace_sqrt_product
from unissl.eval.generation import inception_score, knn_radii, precision_recall


def _random_spd(d: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fd_closed_form_commuting_gaussians() -> None:
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.01, 5.0, d), rng.uniform(0.01, 5.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fd_closed_form_one_dimension_and_identity() -> None:
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9.0 + 1.0, rel=1e-12)
    rng = np.random.default_rng(1)
    s = _random_spd(16, rng)
    mu = rng.normal(size=16)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The pytorch-fid style reference: scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fd_matches_scipy_sqrtm_on_random_features() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 24, generator=g, dtype=torch.float64)
    y = torch.randn(500, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g,
                                                                               dtype=torch.float64) * 0.5 + 0.3
    a, b = gaussian_stats(x), gaussian_stats(y)
    np.testing.assert_allclose(a.mu, x.mean(0).numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(a.sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-12)
    got = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    ref = _scipy_fd(a.mu, a.sigma, b.mu, b.sigma)
    assert got == pytest.approx(ref, rel=1e-6)
    assert got > 1.0


def test_trace_sqrt_product_and_sqrtm_psd() -> None:
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(10, rng), _random_spd(10, rng, 2.0)
    r = sqrtm_psd(s1)
    np.testing.assert_allclose(r @ r, s1, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)
    ref = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-8)
    # rank-deficient covariance (fewer samples than dimensions) stays finite and non-negative
    few = rng.normal(size=(5, 10))
    st = gaussian_stats(few)
    assert np.isfinite(frechet_distance(st.mu, st.sigma, st.mu, s2))


def test_gaussian_stats_round_trip(tmp_path) -> None:
    st = gaussian_stats(torch.randn(50, 7))
    st.save(tmp_path / "s.safetensors", {"extractor": "x"})
    back = GaussianStats.load(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert back.n == 50
    with pytest.raises(UnisslError):
        frechet_distance(st.mu, st.sigma, st.mu[:3], st.sigma[:3, :3])


def test_inception_score_uniform_is_one_and_onehot_is_num_classes() -> None:
    uniform = torch.full((1000, 10), 0.1)
    mean, std = inception_score(uniform, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    onehot = torch.eye(10).repeat(100, 1)  # confident and balanced in every split
    assert inception_score(onehot, splits=10)[0] == pytest.approx(10.0, rel=1e-9)
    # all samples confidently in one class: no diversity -> IS = 1
    assert inception_score(torch.eye(10)[[3] * 200], splits=4)[0] == pytest.approx(1.0, rel=1e-9)


def test_inception_score_naive_reference() -> None:
    p = torch.softmax(torch.randn(200, 7, generator=torch.Generator().manual_seed(3)) * 2, dim=1).double()
    ref = []
    for chunk in torch.tensor_split(p, 5):
        py = chunk.mean(0)
        kls = [sum(float(c[j]) * math.log(float(c[j]) / float(py[j])) for j in range(7)) for c in chunk]
        ref.append(math.exp(sum(kls) / len(kls)))
    mean, std = inception_score(p, splits=5)
    assert mean == pytest.approx(float(np.mean(ref)), rel=1e-10)
    assert std == pytest.approx(float(np.std(ref)), rel=1e-8)


def _naive_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        return np.array([sorted(np.linalg.norm(x - xi, axis=1))[k] for xi in x])

    def cov(q, s, r):
        return np.mean([any(np.linalg.norm(qi - s[j]) <= r[j] for j in range(len(s))) for qi in q])
    return cov(fake, real, radii(real)), cov(real, fake, radii(fake))


def test_precision_recall_matches_naive_reference() -> None:
    g = torch.Generator().manual_seed(4)
    real = torch.randn(60, 5, generator=g, dtype=torch.float64)
    fake = torch.randn(50, 5, generator=g, dtype=torch.float64) * 1.5 + 0.7
    p, r = precision_recall(real, fake, k=3)
    pn, rn = _naive_pr(real.numpy(), fake.numpy(), 3)
    assert (p, r) == (pytest.approx(pn), pytest.approx(rn))
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0


def test_precision_recall_extremes() -> None:
    x = torch.randn(80, 4, generator=torch.Generator().manual_seed(5))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)
    # a collapsed generator (all samples on one real point) has perfect precision, tiny recall
    p, r = precision_recall(x, x[:1].repeat(80, 1) + 1e-9, k=3)
    assert p == 1.0 and r < 0.2
    d = knn_radii(x, k=1)
    assert torch.all(d > 0)


def _pytorch_fid_reference(mu1, s1, mu2, s2, eps=1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance, restated in float64 with scipy (the published protocol)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fd_reference_method_matches_the_published_protocol_on_ill_conditioned_covariances() -> None:
    rng = np.random.default_rng(7)
    d = 48
    for cond in (1e3, 1e8, 1e12):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        w = np.geomspace(1.0, 1.0 / cond, d)
        s1 = (q * w) @ q.T
        q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
        s2 = (q2 * np.geomspace(2.0, 2.0 / cond, d)) @ q2.T
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        ref = _pytorch_fid_reference(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9, abs=1e-9)
        # the eigen-decomposition route agrees where both are well defined
        assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # rank-deficient statistics (fewer samples than dimensions): the reference's eps offset path
    few = gaussian_stats(rng.normal(size=(10, d)))
    other = gaussian_stats(rng.normal(size=(12, d)))
    ref = _pytorch_fid_reference(few.mu, few.sigma, other.mu, other.sigma)
    assert frechet_distance(few.mu, few.sigma, other.mu, other.sigma) == pytest.approx(ref, rel=1e-6)
