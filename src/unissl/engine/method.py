"""The ``Method`` protocol: the only thing the training loop knows about a model.

A method is an ``nn.Module`` that owns its networks and computes its own loss. The :class:`~unissl.engine.
trainer.Trainer` calls ``forward(batch)`` and optimises ``out["loss"]``; every other scalar in the returned
dict is logged. Optional hooks are looked up with ``getattr`` on the *unwrapped* module (never on the
DDP/compiled wrapper), so a method implements only the ones it needs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Method(Protocol):
    """What a trainable method provides (``nn.Module`` subclasses satisfy it structurally).

    Required:
        ``forward(batch) -> dict``: ``batch`` maps names to tensors already on the training device
        (for image data ``{"image": (B, C, H, W), "label": (B,)}``); the result holds ``"loss"``
        (a differentiable scalar) and any number of extra scalar tensors or floats to log.

    Optional hooks (the trainer checks for them with :func:`hook`):
        ``on_train_step_end(step, total_steps)``: after each optimizer step, ``step`` counting completed
        steps from 1 (momentum/EMA teachers, schedules owned by the method).
        ``no_weight_decay() -> set[str]``: parameter names (as in ``named_parameters()``) that get no
        weight decay, on top of biases, norm weights (``ndim <= 1``) and ``nn.Embedding`` weights.
        ``log_images(batch) -> dict[str, Tensor]``: images ``(N, C, H, W)`` in ``[0, 1]`` to save as PNG grids.
    """

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, **scalar_logs}`` for one (micro-)batch."""
        ...

    def parameters(self, recurse: bool = True):  # noqa: D102 - provided by nn.Module
        ...


def hook(method: nn.Module, name: str):
    """The optional hook ``name`` of ``method`` if it defines one, else ``None``."""
    fn = getattr(method, name, None)
    return fn if callable(fn) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
