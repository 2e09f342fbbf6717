"""AdamW with the usual two parameter groups (with and without weight decay)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unissl.engine.method import Method


def no_decay_names(method: Method) -> set[str]:
    """Names of the trainable parameters that get no weight decay.

    Biases and norm weights (every parameter with ``ndim <= 1``), ``nn.Embedding`` weights (found by
    identity, so a weight tied to an output head is covered too; not when the method's
    :meth:`~Method.decays_embeddings` returns True) and the names listed by its
    :meth:`~Method.no_weight_decay` (positional embeddings, class/mask tokens, ...).
    """
    named = dict(method.named_parameters())
    extra = set(method.no_weight_decay())
    unknown = extra - set(named)
    if unknown:
        raise ValueError(f"{type(method).__name__}.no_weight_decay() names unknown parameters {sorted(unknown)}")
    embedding_ids = ({id(m.weight) for m in method.modules() if isinstance(m, nn.Embedding)}
                     if not method.decays_embeddings() else set())
    return {name for name, p in named.items()
            if p.requires_grad and (p.ndim <= 1 or id(p) in embedding_ids or name in extra)}


def param_groups(method: Method, weight_decay: float) -> list[dict]:
    """AdamW groups over the trainable parameters: ``decay`` and ``no_decay`` (empty groups dropped).

    The method's :meth:`~Method.lr_scales` (``{name: factor}``) puts those parameters in groups of their own
    with ``lr_scale`` (the trainer sets each group's lr to ``scheduled lr * lr_scale``).
    """
    skip = no_decay_names(method)
    scales: dict[str, float] = dict(method.lr_scales())
    named = dict(method.named_parameters())
    unknown = set(scales) - {n for n, p in named.items() if p.requires_grad}
    if unknown:
        raise ValueError(f"{type(method).__name__}.lr_scales() names unknown or frozen parameters {sorted(unknown)}")
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in named.items():
        if not p.requires_grad:
            continue  # frozen parts (a tokenizer, a frozen encoder) never reach the optimizer
        buckets.setdefault((name not in skip, float(scales.get(name, 1.0))), []).append(p)
    groups = []
    for (decayed, scale), params in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0,
                 "group": "decay" if decayed else "no_decay"}
        if scale != 1.0:
            group.update(lr_scale=scale, group=f"{group['group']}_x{scale:g}")
        groups.append(group)
    if not groups:
        raise ValueError(f"{type(method).__name__} has no trainable parameters")
    return groups


def build_optimizer(method: Method, lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``lr`` is the initial value (the trainer sets it every step)."""
    kw = {}
    if any(p.is_cuda for g in param_groups(method, weight_decay) for p in g["params"]):
        kw["fused"] = True
    return torch.optim.AdamW(param_groups(method, weight_decay), lr=lr, betas=(float(betas[0]), float(betas[1])),
                             eps=eps, **kw)
