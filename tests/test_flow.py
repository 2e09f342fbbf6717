"""Flow-matching math: paths against closed forms, time samplers, solvers on ODEs with known solutions."""

from __future__ import annotations

import math

import pytest
import torch

from unissl.flow import LinearPath, LogitNormalTime, UniformTime, euler, heun, solve


# ---------------------------------------------------------------- paths
@pytest.mark.parametrize("data_at", [0.0, 1.0])
def test_linear_path_endpoints_and_target_is_time_derivative(data_at: float) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g)
    eps = torch.randn(4, 3, 5, 5, generator=g)
    path = LinearPath(data_at)
    data_t = torch.full((4,), data_at)
    noise_t = torch.full((4,), 1.0 - data_at)
    assert torch.allclose(path.sample(x0, data_t, eps).x_t, x0)
    assert torch.allclose(path.sample(x0, noise_t, eps).x_t, eps)
    # target = d x_t / dt by finite differences at random times
    t = torch.rand(4, generator=g) * 0.8 + 0.1
    h = 1e-3
    fd = (path.sample(x0, t + h, eps).x_t - path.sample(x0, t - h, eps).x_t) / (2 * h)
    s = path.sample(x0, t, eps)
    assert torch.allclose(s.target, fd, atol=1e-3)
    expected = eps - x0 if data_at == 0.0 else x0 - eps
    assert torch.allclose(s.target, expected)
    # one-step data estimate from the exact conditional velocity recovers the data
    assert torch.allclose(path.data_from_velocity(s.x_t, t, s.target), x0, atol=1e-5)


def test_linear_path_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        LinearPath(0.5)
    with pytest.raises(ValueError):
        LinearPath().sample(torch.zeros(2, 3), torch.zeros(3))


def _gauss_velocity(mu: float, s: float, data_at: float):
    """Exact marginal velocity of the linear path from N(mu, s^2) data to N(0, 1) noise.

    With ``a(t)`` the data weight and ``b(t)`` the noise weight, x_t ~ N(a mu, a^2 s^2 + b^2); the flow
    is affine, v(x, t) = m'(t) + sigma'(t) / sigma(t) (x - m(t)).
    """
    def coeffs(t: torch.Tensor):
        a, b, da, db = (1 - t, t, -1.0, 1.0) if data_at == 0.0 else (t, 1 - t, 1.0, -1.0)
        m, dm = a * mu, da * mu
        var = a**2 * s**2 + b**2
        dsig = (a * da * s**2 + b * db) / var.sqrt()
        return m, dm, var.sqrt(), dsig

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, dm, sig, dsig = coeffs(t.double().reshape(-1, *([1] * (x.ndim - 1))))
        return (dm + dsig / sig * (x.double() - m)).to(x.dtype)
    return v


@pytest.mark.parametrize("data_at", [0.0, 1.0])
def test_path_targets_average_to_exact_gaussian_velocity(data_at: float) -> None:
    """E[target | x_t] of LinearPath.sample equals the closed-form marginal velocity (Gaussian data)."""
    mu, s, n = 2.0, 0.5, 400_000
    g = torch.Generator().manual_seed(1)
    v = _gauss_velocity(mu, s, data_at)
    for t_val in (0.2, 0.5, 0.8):
        x0 = (mu + s * torch.randn(n, 1, generator=g)).double()
        t = torch.full((n,), t_val, dtype=torch.float64)
        ps = LinearPath(data_at).sample(x0, t, torch.randn(n, 1, generator=g).double())
        # least squares E[target | x_t] = alpha + beta x_t (exact since everything is jointly Gaussian)
        A = torch.cat([torch.ones_like(ps.x_t), ps.x_t], 1)
        coef = torch.linalg.lstsq(A, ps.target).solution.flatten()
        probe = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        exact = v(probe, torch.full((2,), t_val)).flatten()
        assert torch.allclose(coef[0], exact[0], atol=0.02), (t_val, coef, exact)
        assert torch.allclose(coef[0] + coef[1], exact[1], atol=0.02), (t_val, coef, exact)


# ---------------------------------------------------------------- time samplers
def test_logit_normal_time_moments() -> None:
    g = torch.Generator().manual_seed(0)
    t = LogitNormalTime(mean=0.5, std=0.7).sample(200_000, generator=g)
    assert t.shape == (200_000,) and t.min() > 0 and t.max() < 1
    u = torch.log(t) - torch.log1p(-t)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - 0.7) < 0.01
    t0 = LogitNormalTime().sample(200_000, generator=g)
    assert abs(t0.mean().item() - 0.5) < 0.005  # symmetric around 1/2
    with pytest.raises(ValueError):
        LogitNormalTime(std=0.0)


def test_uniform_time_moments() -> None:
    t = UniformTime().sample(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.005 and abs(t.var().item() - 1 / 12) < 0.002


# ---------------------------------------------------------------- solvers
def _linear_ode_error(solver, steps: int) -> float:
    a = -1.3
    x0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    out = solver(lambda x, t: a * x, x0, 0.0, 1.0, steps)
    return (out - x0 * math.exp(a)).abs().max().item()


def test_euler_first_order_heun_second_order_on_linear_ode() -> None:
    e = [_linear_ode_error(euler, n) for n in (10, 20, 40)]
    h = [_linear_ode_error(heun, n) for n in (10, 20, 40)]
    for k in range(2):
        assert 1.8 < e[k] / e[k + 1] < 2.2  # error halves: order 1
        assert 3.6 < h[k] / h[k + 1] < 4.4  # error quarters: order 2
    assert h[-1] < e[-1] / 50


def test_solvers_handle_time_dependent_ode_and_backward_direction() -> None:
    # dx/dt = 2 t x, x(t) = x(t0) exp(t^2 - t0^2); integrate backwards from 1 to 0
    x1 = torch.tensor([[3.0]], dtype=torch.float64)
    exact = 3.0 * math.exp(-1.0)
    out = heun(lambda x, t: 2 * t.double().reshape(-1, 1) * x, x1, 1.0, 0.0, 200)
    assert abs(out.item() - exact) < 1e-5
    traj = euler(lambda x, t: 2 * t.double().reshape(-1, 1) * x, x1, 1.0, 0.0, 4, return_trajectory=True)
    assert traj.shape == (5, 1, 1) and traj[0].item() == 3.0
    with pytest.raises(ValueError):
        solve("rk4", lambda x, t: x, x1, 0.0, 1.0, 4)
    with pytest.raises(ValueError):
        euler(lambda x, t: x, x1, 0.0, 1.0, 0)


@pytest.mark.parametrize("data_at", [0.0, 1.0])
def test_gaussian_to_gaussian_flow_transports_noise_to_data(data_at: float) -> None:
    """Integrating the exact velocity maps noise z to mu + s z exactly (affine optimal map)."""
    mu, s = 2.0, 0.5
    v = _gauss_velocity(mu, s, data_at)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0, t1 = 1.0 - data_at, data_at
    out_h = solve("heun", v, z, t0, t1, 100)
    out_e = solve("euler", v, z, t0, t1, 100)
    assert (out_h - (mu + s * z)).abs().max() < 1e-4
    err_e = (out_e - (mu + s * z)).abs().max()
    assert 1e-4 < err_e < 0.1  # Euler converges too, but visibly less accurately
