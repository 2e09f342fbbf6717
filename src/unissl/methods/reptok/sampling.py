"""Sampling from the RepTok token generator: ODE solve over z, classifier-free guidance, decoding.

The generator's flow runs from noise at t=0 to data at t=1 (``data_at=1``). Classifier-free guidance
mixes the conditional and unconditional velocities, ``v = v_u + s (v_c - v_u)``, but only while
``t`` is inside the *guidance interval* (RepTok: s = 1.5 for t in [0.3, 0.9]); elsewhere the plain
conditional velocity is used, which saves the second network call and avoids over-saturating the
beginning (global layout) and end (fine detail) of the trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from unissl.config import arg
from unissl.errors import ConfigError, UnisslError
from unissl.flow import solve
from unissl.flow.solvers import VelocityFn
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, Cond, concat_cond
from unissl.methods.reptok.text import text_condition
from unissl.methods.reptok.text_encoder import FrozenTextEncoder
from unissl.utils.images import save_grid
from unissl.utils.io import atomic_file


@dataclass
class SamplingConfig:
    """How to integrate the generator's ODE."""

    steps: int = arg(50, help="generator ODE steps")
    solver: Literal["euler", "heun"] = arg("euler", help="ODE solver of the generator")
    cfg_scale: float = arg(1.5, help="classifier-free guidance scale (1: no guidance)")
    cfg_interval: tuple[float, float] = arg((0.3, 0.9), help="guidance only for t in [t_min, t_max] (RepTok's "
                                                             "default; 0 1 guides the whole trajectory)")
    time_grid: Literal["model", "float64", "float32"] = arg(
        "model", help="the ODE's time grid: float32 is the release's torch.linspace grid (its t=0.29999998 falls "
                      "outside [0.3, 0.9]); model: the generator preset's (float32 for the released presets)")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError("steps", f"must be >= 1, got {self.steps}")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError("cfg_interval", f"must satisfy 0 <= t_min <= t_max <= 1, got {lo} {hi}")


class ConditionalVelocity(Protocol):
    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor: ...


def guided_velocity(velocity: ConditionalVelocity, cond: Cond, null_cond: Cond, scale: float,
                    interval: tuple[float, float] = (0.0, 1.0)) -> VelocityFn:
    """A ``velocity_fn(x, t)`` for the solvers with CFG ``scale`` applied only for t in ``interval``.

    ``t`` is the solver's (B,) time (equal across the batch). With ``scale == 1`` or ``t`` outside the
    interval this is exactly the conditional velocity (one network call). The bounds are compared with ``t``
    in ``t``'s dtype, as the release compares its float32 grid time with Python floats.
    """
    t_min, t_max = interval

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_now = t.reshape(-1)[0]  # 0-dim, in the solver's dtype
        if scale == 1.0 or bool(t_now < t_min) or bool(t_now > t_max):
            return velocity(x, t, cond)
        v = velocity(torch.cat([x, x]), torch.cat([t, t]), concat_cond(cond, null_cond))  # (2B, D)
        v_c, v_u = v.chunk(2)
        return v_u + scale * (v_c - v_u)

    return fn


@torch.no_grad()
def sample_tokens(method: TokenGeneratorMethod, cond: Cond, cfg: SamplingConfig | None = None,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens z (B, D) in the tokenizer's (de-normalised) space for a batch of conditions.

    ``cond`` is ``{"label": (B,)}`` or a text condition; ``noise`` (B, D) overrides the Gaussian start.
    """
    cfg = cfg or SamplingConfig()
    n = next(iter(cond.values())).shape[0]
    dev = method.z_mean.device
    if noise is None:
        noise = torch.randn(n, method.cfg.token_dim, generator=generator, device="cpu").to(dev)
    fn = guided_velocity(method.velocity, cond, method.null_condition(cond), cfg.cfg_scale, cfg.cfg_interval)
    grid = cfg.time_grid if cfg.time_grid != "model" else GENERATOR_PRESETS[method.cfg.preset].time_grid
    z = solve(cfg.solver, fn, noise, t_start=0.0, t_end=1.0, steps=cfg.steps,  # noise at 0 -> data at 1
              grid_dtype=torch.float32 if grid == "float32" else torch.float64)
    return method.denormalize(z)


class TokenDecoder(Protocol):
    """What sampling needs from the RepTok tokenizer."""

    def decode(self, z: torch.Tensor, steps: int = ...) -> torch.Tensor: ...


@torch.no_grad()
def decode_tokens(tokenizer: TokenDecoder, z: torch.Tensor, steps: int | None = None,
                  batch_size: int = 256) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] from tokens (B, D) through the tokenizer's flow decoder."""
    out = []
    for i in range(0, z.shape[0], batch_size):
        zb = z[i:i + batch_size]
        img = tokenizer.decode(zb) if steps is None else tokenizer.decode(zb, steps=steps)
        out.append(img.float().clamp(0, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def class_condition(labels: torch.Tensor) -> Cond:
    """``{"label": (B,)}`` for class-conditional sampling."""
    return {"label": labels.long()}


def resolve_classes(requested: list[str] | None, classes: list[str]) -> list[int]:
    """Class names (case-insensitive) or indices -> indices; ``None`` -> every class."""
    if requested is None or requested == ["all"]:
        return list(range(len(classes)))
    lower = [c.lower() for c in classes]
    out = []
    for r in requested:
        if r.isdigit() and int(r) < len(classes):
            out.append(int(r))
        elif r.lower() in lower:
            out.append(lower.index(r.lower()))
        else:
            raise UnisslError(f"unknown class {r!r}; use an index < {len(classes)} or one of {classes}")
    return out


def sample_conditions(method: TokenGeneratorMethod, n: int, classes: list[str] | None = None,
                      prompts: list[str] | None = None, device: torch.device | str = "cpu",
                      name: str = "this generator") -> tuple[Cond, torch.Tensor]:
    """The condition batch for ``n`` samples per prompt (text generators) or per class (class names or
    indices; all classes by default), and what each of the N samples asks for: its prompt's index or its
    class (N,) int64 on CPU."""
    gcfg = method.cfg
    if prompts is not None:
        if gcfg.conditioning != "text":
            raise ConfigError("prompt", f"{name} is a class-conditional generator: give classes instead")

        states, mask = FrozenTextEncoder(gcfg.text_encoder).to(device).encode(prompts)  # (P, L, H), (P, L)
        idx = torch.arange(len(prompts)).repeat_interleave(n)  # (N,)
        return text_condition(states[idx.to(device)], mask[idx.to(device)]), idx
    if gcfg.conditioning != "class":
        raise ConfigError("prompt", f"{name} is a text-conditional generator: it needs prompts")
    wanted = resolve_classes([str(c) for c in classes] if classes is not None else None,
                             gcfg.classes or [str(i) for i in range(gcfg.num_classes)])
    labels = torch.tensor(wanted).repeat_interleave(n)  # (N,)
    return class_condition(labels.to(device)), labels


@torch.no_grad()
def sample_images(method: TokenGeneratorMethod, tokenizer: TokenDecoder, conds: Cond, cfg: SamplingConfig,
                  decode_steps: int | None = None, batch_size: int = 256,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample tokens for every row of ``conds`` and decode them: (N, C, H, W) in [0, 1], in batches."""
    n = next(iter(conds.values())).shape[0]
    images = []
    for s in range(0, n, batch_size):
        part = {k: v[s:s + batch_size] for k, v in conds.items()}
        z = sample_tokens(method, part, cfg, generator=generator)  # (b, D) in the tokenizer's space
        images.append(decode_tokens(tokenizer, z, steps=decode_steps))
    return torch.cat(images)


def write_samples(images: torch.Tensor, labels: torch.Tensor, out: Path, name: str, nrow: int,
                  extra: dict[str, Any] | None = None) -> Path:
    """``<out>/<name>.png`` (a grid) and ``<out>/<name>.npz`` (uint8 ``images``, ``labels``, ``extra``)."""
    import numpy as np

    save_grid(images, out / f"{name}.png", nrow=nrow, scale=2)
    arrays = {"images": (images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy(),
              "labels": labels.long().numpy(), **(extra or {})}
    with atomic_file(out / f"{name}.npz", "wb") as f:
        np.savez(f, **arrays)
    return out / f"{name}.npz"

