"""Bootstrap intervals of the Fréchet distance and the claim verdict: against naive recomputation and closed
forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unissl.errors import UnisslError
from unissl.eval.bootstrap import (
    claim_verdict,
    fd_bootstrap,
    percentile_interval,
    seed_interval,
    two_level_interval,
    welch_interval,
)
from unissl.eval.frechet import GaussianStats, frechet_distance_stats, gaussian_stats


def test_every_draw_is_the_fd_of_the_explicit_resample() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    ref = gaussian_stats(torch.randn(400, 5, generator=g, dtype=torch.float64) + 0.3)
    draws = fd_bootstrap(x, ref, resamples=7, seed=3, chunk=4)
    idx_gen = torch.Generator().manual_seed(3)  # the same draws of indices, chunk by chunk
    idx = torch.cat([torch.randint(0, 300, (b, 300), generator=idx_gen) for b in (4, 3)])
    naive = [frechet_distance_stats(gaussian_stats(x[i]), ref) for i in idx]
    np.testing.assert_allclose(draws, naive, rtol=1e-7, atol=1e-9)


def test_interval_covers_the_closed_form_fd_at_about_its_nominal_rate() -> None:
    # samples ~ N(mu, diag(1, 2)) against the exact statistics of N(0, I):
    # FD = |mu|^2 + tr(S1) + tr(S2) - 2 tr(S1^1/2) = 1 + 3 + 2 - 2 (1 + sqrt 2)
    truth = 1.0 + 3.0 + 2.0 - 2.0 * (1.0 + math.sqrt(2.0))
    ref = GaussianStats(mu=np.zeros(2), sigma=np.eye(2), n=10**9)
    rng = np.random.default_rng(0)
    hits, reps = 0, 120
    for r in range(reps):
        x = rng.normal(size=(2000, 2)) * np.sqrt([1.0, 2.0]) + np.array([1.0, 0.0])
        lo, hi = percentile_interval(fd_bootstrap(x, ref, resamples=200, seed=r))
        hits += lo <= truth <= hi
    assert 0.85 <= hits / reps <= 1.0, hits / reps


def test_bootstrap_spread_matches_the_spread_over_fresh_sample_sets() -> None:
    ref = GaussianStats(mu=np.zeros(3), sigma=np.eye(3), n=10**9)
    rng = np.random.default_rng(1)

    def draw() -> np.ndarray:
        return rng.normal(size=(1500, 3)) * np.array([1.0, 1.5, 0.7]) + np.array([0.5, 0.0, -0.2])

    fresh = [frechet_distance_stats(gaussian_stats(draw()), ref) for _ in range(200)]
    boot = fd_bootstrap(draw(), ref, resamples=400, seed=5)
    assert np.std(boot) == pytest.approx(np.std(fresh), rel=0.25)


def test_seed_and_welch_intervals_against_hand_values() -> None:
    mean, lo, hi = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    diff, lo, hi = welch_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # equal variances: df = 4
    half = 2.7764451051977987 * math.sqrt(2 / 3)
    assert (diff, lo, hi) == pytest.approx((-1.0, -1.0 - half, -1.0 + half))
    with pytest.raises(UnisslError, match="at least 2 seeds"):
        seed_interval([1.0])


def test_claim_verdict_outcomes() -> None:
    lower = claim_verdict([5.0, 5.1, 4.9], [6.0, 6.1, 5.9], lower_is_better=True)
    assert lower.outcome == "reproduces" and lower.high < 0 and "seeds (3, 3)" in lower.over
    assert claim_verdict([6.0, 6.1, 5.9], [5.0, 5.1, 4.9], lower_is_better=True).outcome == "does not reproduce"
    assert claim_verdict([5.0, 6.0, 4.0], [5.5, 4.5, 6.5], lower_is_better=True).outcome == "cannot tell"
    assert claim_verdict([86.0, 86.2, 85.9], [85.0, 85.1, 84.9], lower_is_better=False).outcome == "reproduces"
    one = claim_verdict([5.0], [6.0], True, a_draws=np.full(50, 5.0) + np.linspace(-.1, .1, 50),
                        b_draws=np.full(50, 6.0) + np.linspace(-.1, .1, 50))
    assert one.outcome == "reproduces" and "bootstrap" in one.over
    assert "FD_domain, Sorcen - MAGE: -1.000" in one.line("FD_domain", "Sorcen", "MAGE")
    with pytest.raises(UnisslError, match="2 seeds per arm"):
        claim_verdict([5.0], [6.0, 6.1], True)


def test_two_level_interval_exact_when_seeds_have_no_sample_spread() -> None:
    """Draws equal to their seed's value: only the seed level is left. Arm a = {0, 1}, b = {0, 0}: a resampled
    mean of a is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval of a - b is exactly [0, 1]."""
    diff, lo, hi = two_level_interval([np.zeros(5), np.ones(5)], [np.zeros(5), np.zeros(5)])
    assert (diff, lo, hi) == (0.5, 0.0, 1.0)
    with pytest.raises(UnisslError, match="2 seeds per arm"):
        two_level_interval([np.zeros(5)], [np.zeros(5), np.zeros(5)])


def test_two_level_interval_adds_the_sample_spread_and_covers_near_nominal() -> None:
    """Sample-level spread widens the interval; over simulated studies (12 seeds per arm, seed sd 1, each seed's
    estimate off by N(0, 0.5) with bootstrap draws of that spread) it covers the true difference near 95%."""
    rng = np.random.default_rng(0)
    seeds = [np.full(200, v) for v in rng.normal(size=3)]
    narrow = two_level_interval(seeds, seeds)
    wide = two_level_interval([d + rng.normal(0, 1, 200) for d in seeds], seeds)
    assert wide[2] - wide[1] > narrow[2] - narrow[1]
    hits, trials = 0, 150
    for t in range(trials):
        arms = []
        for true in (1.0, 0.0):
            values = true + rng.normal(0, 1, 12) + rng.normal(0, 0.5, 12)  # seed effect, then sample noise
            arms.append([v + rng.normal(0, 0.5, 100) for v in values])
        _, lo, hi = two_level_interval(arms[0], arms[1], resamples=1000, seed=t)
        hits += lo <= 1.0 <= hi
    assert 0.85 <= hits / trials <= 0.995, hits / trials
