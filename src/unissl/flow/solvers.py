"""Fixed-step ODE solvers for ``dx/dt = v(x, t)``, the sampling side of flow matching.

``velocity_fn(x (B, ...), t (B,)) -> v (B, ...)`` can be any callable (a network, a guided mixture of two
network calls, a closed form in tests). Integration runs over ``steps`` equal intervals from ``t_start``
to ``t_end``, in either direction (RepTok's decoder goes from 1 to 0, its generator from 0 to 1).
The solvers do not switch gradients off (so they can be differentiated in tests); wrap sampling calls
in ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(t_start: float, t_end: float, steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``steps + 1`` equally spaced times from ``t_start`` to ``t_end`` (float64 by default, to avoid drift;
    ``torch.float32`` gives ``torch.linspace``'s float32 values, the grid CompVis/RepTok's generator samples on)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(float(t_start), float(t_end), steps + 1, dtype=dtype)


def _grid(t_start: float, t_end: float, steps: int, dtype: torch.dtype) -> tuple[list[float], list[float]]:
    """The grid's times and its step sizes, each difference taken in the grid's dtype (as the release does)."""
    grid = time_grid(t_start, t_end, steps, dtype)
    return grid.tolist(), (grid[1:] - grid[:-1]).tolist()


def _t(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)  # (B,)


def euler(velocity_fn: VelocityFn, x: torch.Tensor, t_start: float, t_end: float, steps: int,
          return_trajectory: bool = False, grid_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Explicit Euler (first order, one velocity call per step).

    Returns the final state (B, ...) or, with ``return_trajectory``, all ``steps + 1`` states stacked
    into (steps + 1, B, ...). ``grid_dtype``: see :func:`time_grid`.
    """
    grid, dts = _grid(t_start, t_end, steps, grid_dtype)
    traj = [x]
    for t0, h in zip(grid[:-1], dts):
        x = x + h * velocity_fn(x, _t(x, t0))
        if return_trajectory:
            traj.append(x)
    return torch.stack(traj) if return_trajectory else x


def heun(velocity_fn: VelocityFn, x: torch.Tensor, t_start: float, t_end: float, steps: int,
         return_trajectory: bool = False, grid_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Heun's method (explicit trapezoid; second order, two velocity calls per step).

    Same arguments and return value as :func:`euler`.
    """
    grid, dts = _grid(t_start, t_end, steps, grid_dtype)
    traj = [x]
    for t0, t1, h in zip(grid[:-1], grid[1:], dts):
        v0 = velocity_fn(x, _t(x, t0))
        x_pred = x + h * v0  # Euler predictor
        v1 = velocity_fn(x_pred, _t(x, t1))
        x = x + 0.5 * h * (v0 + v1)  # trapezoidal corrector
        if return_trajectory:
            traj.append(x)
    return torch.stack(traj) if return_trajectory else x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {"euler": euler, "heun": heun}


def solve(solver: str, velocity_fn: VelocityFn, x: torch.Tensor, t_start: float, t_end: float,
          steps: int, return_trajectory: bool = False, grid_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dispatch to a solver by name (``"euler"`` or ``"heun"``)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[solver](velocity_fn, x, t_start, t_end, steps, return_trajectory=return_trajectory,
                           grid_dtype=grid_dtype)
