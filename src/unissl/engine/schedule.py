"""Per-step schedules: linear warm-up followed by a half-cosine.

Schedules are precomputed as one value per optimizer step (as in DINOv2 and the MAE family), so the
value used at step ``s`` is simply ``schedule[s]`` and a resumed run needs nothing but the step count.
The same function serves learning rates (decaying ``base -> final``) and momentum/EMA schedules
(rising ``base -> final``, e.g. 0.996 -> 1.0).
"""

from __future__ import annotations

import math

import numpy as np


def cosine_value(step: int, base: float, final: float, total_steps: int, warmup_steps: int = 0,
                 warmup_start: float = 0.0) -> float:
    """The schedule's value at 0-based ``step``.

    Warm-up: ``warmup_start + (base - warmup_start) * (step + 1) / warmup_steps`` for ``step < warmup_steps``
    (so step 0 does not waste an update at exactly ``warmup_start`` and the last warm-up step reaches ``base``).
    Then ``final + (base - final) * (1 + cos(pi * t / T)) / 2`` with ``t = step - warmup_steps`` and
    ``T = total_steps - warmup_steps``. Steps past the end return ``final``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * (step + 1) / warmup_steps
    if step >= total_steps:
        return final
    t, span = step - warmup_steps, total_steps - warmup_steps
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * t / span))


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """``total_steps`` values (float64) of :func:`cosine_value`, computed vectorised."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    warm = warmup_start + (base - warmup_start) * np.arange(1, warmup_steps + 1, dtype=np.float64) / max(warmup_steps, 1)
    span = total_steps - warmup_steps
    t = np.arange(span, dtype=np.float64)
    decay = final + (base - final) * 0.5 * (1.0 + np.cos(np.pi * t / max(span, 1)))
    return np.concatenate([warm[:warmup_steps], decay])


def lr_schedule(peak_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """The learning rate per step: linear warm-up from 0 to ``peak_lr``, cosine decay to ``min_lr``."""
    return cosine_schedule(peak_lr, min_lr, total_steps, warmup_steps, warmup_start=0.0)
