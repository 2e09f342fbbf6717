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
        ``frozen_state_prefixes() -> tuple[str, ...]``: ``state_dict`` key prefixes of frozen parts that the
        method rebuilds from their own source when it is constructed (a pretrained backbone, a VAE, an online
        tokenizer). They are left out of training checkpoints and of saved models; loading accepts their
        absence and nothing else (see :func:`saved_state` and :func:`load_saved_state`).
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


def frozen_prefixes(method: nn.Module) -> tuple[str, ...]:
    """The method's ``frozen_state_prefixes()`` (empty when it has none)."""
    fn = hook(unwrap(method), "frozen_state_prefixes")
    return tuple(fn()) if fn is not None else ()


def saved_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """``method.state_dict()`` without its frozen parts (``frozen_state_prefixes``)."""
    skip = frozen_prefixes(method)
    return {k: v for k, v in unwrap(method).state_dict().items() if not (skip and k.startswith(skip))}


def load_saved_state(method: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`saved_state` (or a full state) strictly: only keys of frozen parts may be missing.

    Raises ``RuntimeError`` (as ``load_state_dict(strict=True)`` does) naming the first offending keys.
    """
    skip = frozen_prefixes(method)
    missing, unexpected = unwrap(method).load_state_dict(state, strict=False)
    missing = [k for k in missing if not (skip and k.startswith(skip))]
    if missing or unexpected:
        raise RuntimeError(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected keys "
                           f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
