"""Exponential moving average of a module's weights (``shadow <- d_n * shadow + (1 - d_n) * weight``).

The shadow starts at the initial weights, so with a fixed decay ``d`` it still holds a share ``d^n`` of
them after ``n`` updates (0.999^1000 = 37%). By default the decay is warmed up as in timm / Karras et al.:
``d_n = min(d, (1 + n) / (10 + n))`` for the n-th update (0-based), which forgets the initialisation
within a few dozen steps and reaches ``d`` after about ``9 / (1 - d)`` updates. :func:`init_share` gives
the share of the initial weights that is left, which the trainer checks before a run starts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """A shadow copy of the trainable parameters and floating-point buffers of ``module``.

    Keys are the module's ``state_dict`` names, so :meth:`state_dict` can be saved as ``ema.safetensors``
    and overlaid on the model weights (``module.load_state_dict(ema, strict=False)``). Frozen parameters
    never change, so they are not tracked; integer buffers (counters) are copied, not averaged.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0  # number of update() calls so far (saved by the trainer with its state)
        persistent = set(module.state_dict().keys())  # non-persistent buffers are never saved or loaded
        live: dict[str, torch.Tensor] = {name: p for name, p in module.named_parameters() if p.requires_grad}
        live.update({name: b for name, b in module.named_buffers() if b is not None})
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().clone() for name, t in live.items() if name in persistent
        }

    def _tracked(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The live tensors the EMA follows, keyed by state-dict name."""
        live: dict[str, torch.Tensor] = dict(module.named_parameters())
        live.update(dict(module.named_buffers()))
        try:
            return {name: live[name] for name in self.shadow}
        except KeyError as e:
            raise KeyError(f"EMA: the module has no tensor {e.args[0]!r} (a different module?)") from None

    def decay_at(self, n: int) -> float:
        """The decay of the n-th update (0-based): ``min(d, (1 + n) / (10 + n))`` with warm-up, else ``d``."""
        return decay_at(self.decay, n, self.warmup)

    def init_share(self, updates: int | None = None) -> float:
        """Share of the initial weights still in the shadow after ``updates`` (default: so far) updates."""
        return init_share(self.decay, self.updates if updates is None else updates, self.warmup)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the shadow towards the current weights of ``module``."""
        decay = self.decay_at(self.updates)
        self.updates += 1
        live = self._tracked(module)
        avg_s, avg_l = [], []
        for name, s in self.shadow.items():
            x = live[name]
            if s.is_floating_point():
                avg_s.append(s)
                avg_l.append(x.detach().to(s.dtype))
            else:
                s.copy_(x)
        if avg_s:
            # shadow + (1 - decay) * (x - shadow) == decay * shadow + (1 - decay) * x
            torch._foreach_lerp_(avg_s, avg_l, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the tracked weights of ``module`` with the shadow (e.g. before evaluation)."""
        live = self._tracked(module)
        for name, s in self.shadow.items():
            live[name].copy_(s)

    @contextlib.contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily run ``module`` with the EMA weights; the live weights come back afterwards."""
        live = self._tracked(module)
        backup = {name: live[name].detach().clone() for name in self.shadow}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, b in backup.items():
                    live[name].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors (references; clone before mutating)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadow; the key sets must match exactly."""
        missing, extra = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or extra:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        for name, s in self.shadow.items():
            s.copy_(state[name])

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow to ``device``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self


def decay_at(decay: float, n: int, warmup: bool = True) -> float:
    """EMA decay of the n-th update (0-based): ``min(decay, (1 + n) / (10 + n))`` with warm-up."""
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay


def init_share(decay: float, updates: int, warmup: bool = True) -> float:
    """``prod_{n < updates} decay_at(n)``: the weight the shadow still gives to the initial weights."""
    log_share, n = 0.0, 0
    if warmup:
        while n < updates and (1.0 + n) / (10.0 + n) < decay:
            log_share += math.log((1.0 + n) / (10.0 + n))
            n += 1
    log_share += (updates - n) * math.log(decay)
    return math.exp(log_share)
