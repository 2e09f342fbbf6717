"""FLOPs of a callable with ``torch.utils.flop_counter.FlopCounterMode``, attention included on CPU.

Convention: 2 FLOPs per multiply-add, the counter's own rules for matmuls and convolutions. The CPU kernels
of ``scaled_dot_product_attention`` are not registered with the counter (it reports 0 for them), so every
attention call also adds its analytic term, ``4 B H L S d`` forward (QK^T and AV), x3 when it runs with
gradients (forward + backward), unless the counter did count attention itself (CUDA, meta tensors).
Element-wise ops (norms, activations, softmax, losses) and optimizer updates are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


class _AttentionFlops(TorchFunctionMode):
    """Records the analytic FLOPs of every ``F.scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            fwd = 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
            self.flops += fwd * (3 if torch.is_grad_enabled() and q.requires_grad else 1)
        return func(*args, **(kwargs or {}))


def count_flops(fn: Callable[[], Any]) -> tuple[int, int]:
    """(total, attention) FLOPs of ``fn()``; put the backward inside ``fn`` to count it."""
    attn = _AttentionFlops()
    with FlopCounterMode(display=False) as counter, attn:
        fn()
    counted = sum(v for k, v in counter.get_flop_counts().get("Global", {}).items()
                  if "scaled_dot_product" in str(k))
    total = int(counter.get_total_flops())
    return total + (attn.flops if counted == 0 else 0), attn.flops


def step_flops(method: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(total, attention) FLOPs of forward + backward of ``method(batch)["loss"]``; gradients are cleared."""
    got = count_flops(lambda: method(batch)["loss"].backward())
    method.zero_grad(set_to_none=True)
    return got
