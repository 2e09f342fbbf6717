"""AdamW with the usual two parameter groups (with and without weight decay)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unissl.engine.method import hook


def no_decay_names(method: nn.Module) -> set[str]:
    """Names of the trainable parameters that get no weight decay.

    Biases and norm weights (every parameter with ``ndim <= 1``), ``nn.Embedding`` weights (found by
    identity, so a weight tied to an output head is covered too) and the names listed by the method's
    optional ``no_weight_decay()`` hook (positional embeddings, class/mask tokens, ...).
    """
    named = dict(method.named_parameters())
    extra = set(hook(method, "no_weight_decay")() if hook(method, "no_weight_decay") else ())
    unknown = extra - set(named)
    if unknown:
        raise ValueError(f"{type(method).__name__}.no_weight_decay() names unknown parameters {sorted(unknown)}")
    embedding_ids = {id(m.weight) for m in method.modules() if isinstance(m, nn.Embedding)}
    return {name for name, p in named.items()
            if p.requires_grad and (p.ndim <= 1 or id(p) in embedding_ids or name in extra)}


def param_groups(method: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: ``decay`` and ``no_decay`` (empty groups dropped)."""
    skip = no_decay_names(method)
    decay, no_decay = [], []
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue  # frozen parts (a tokenizer, a frozen encoder) never reach the optimizer
        (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"{type(method).__name__} has no trainable parameters")
    return groups


def build_optimizer(method: nn.Module, lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``lr`` is the initial value (the trainer sets it every step)."""
    kw = {}
    if any(p.is_cuda for g in param_groups(method, weight_decay) for p in g["params"]):
        kw["fused"] = True
    return torch.optim.AdamW(param_groups(method, weight_decay), lr=lr, betas=(float(betas[0]), float(betas[1])),
                             eps=eps, **kw)
