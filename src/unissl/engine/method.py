"""The ``Method`` base class: the only thing the training loop knows about a model.

A method is an :class:`~torch.nn.Module` subclass of :class:`Method` that owns its networks and computes its
own loss. The :class:`~unissl.engine.trainer.Trainer` calls ``forward(batch)`` and optimises ``out["loss"]``;
every other scalar in the returned dict is logged. The engine's hooks are typed methods of the base class
with no-op defaults, called on the *unwrapped* module (never on the DDP/compiled wrapper); a method overrides
the ones it needs and nothing is looked up by name.
"""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """Base class of every trainable method (Sorcen / MAGE, the RepTok tokenizer and generator, the VQ tokenizer).

    ``forward(batch) -> dict`` (required): ``batch`` maps names to tensors already on the training device
    (for image data ``{"image": (B, C, H, W), "label": (B,)}``); the result holds ``"loss"`` (a
    differentiable scalar) and any number of extra scalar tensors or floats to log.
    """

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, **scalar_logs}`` for one (micro-)batch."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(batch)")

    def on_train_step_end(self, step: int, total_steps: int) -> None:
        """After each optimizer step, ``step`` counting completed steps from 1 (momentum/EMA teachers,
        schedules owned by the method). Default: nothing."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``named_parameters()``) without weight decay, on top of biases, norm weights
        (``ndim <= 1``) and ``nn.Embedding`` weights. Default: none."""
        return set()

    def decays_embeddings(self) -> bool:
        """True: ``nn.Embedding`` weights are decayed too (only 1-D parameters and :meth:`no_weight_decay`
        are exempt). Default: False."""
        return False

    def lr_scales(self) -> dict[str, float]:
        """``{parameter name: factor}``: those parameters get optimizer groups of their own whose lr is the
        scheduled lr times the factor (e.g. RepTok's [cls]). Default: none."""
        return {}

    def log_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images ``(N, C, H, W)`` in ``[0, 1]`` by name, saved as PNG grids under ``run_dir/images/`` (called
        on rank 0, in eval mode). Default: none."""
        return {}

    def frozen_state_prefixes(self) -> tuple[str, ...]:
        """``state_dict`` key prefixes of frozen parts that the method rebuilds from their own source when it
        is constructed (a pretrained backbone, a VAE, an online tokenizer). They are left out of training
        checkpoints and saved models; loading accepts their absence and nothing else (:func:`saved_state`,
        :func:`load_saved_state`). Default: none."""
        return ()

    def compile_networks(self, **kwargs) -> list[nn.Module] | None:
        """What ``--train.compile`` compiles: a method that knows its networks compiles them in place and
        returns them, so that Python state read in its forward (mask ratios, progress) never guards a graph.
        Default: ``None``, and the trainer compiles the whole method."""
        return None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def unwrap_method(model: nn.Module) -> Method:
    """:func:`unwrap`, checked to be a :class:`Method` (``TypeError`` naming the class otherwise)."""
    inner = unwrap(model)
    if not isinstance(inner, Method):
        raise TypeError(f"{type(inner).__name__} is not a unissl.engine.Method; subclass Method to train or "
                        f"save it")
    return inner


def saved_state(method: nn.Module) -> dict[str, torch.Tensor]:
    """``method.state_dict()`` without its frozen parts (``frozen_state_prefixes``)."""
    inner = unwrap_method(method)
    skip = tuple(inner.frozen_state_prefixes())
    return {k: v for k, v in inner.state_dict().items() if not (skip and k.startswith(skip))}


def load_saved_state(method: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`saved_state` (or a full state) strictly: only keys of frozen parts may be missing.

    Raises ``RuntimeError`` (as ``load_state_dict(strict=True)`` does) naming the first offending keys.
    """
    inner = unwrap_method(method)
    skip = tuple(inner.frozen_state_prefixes())
    missing, unexpected = inner.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (skip and k.startswith(skip))]
    if missing or unexpected:
        raise RuntimeError(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected keys "
                           f"{unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
