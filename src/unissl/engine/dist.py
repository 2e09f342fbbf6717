"""Distributed helpers in one place: torchrun environment, rank queries and a gradient-keeping all-gather.

Runs under ``torchrun`` read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment; a plain
``python`` run is a world of one and every helper degrades to a no-op.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from unissl.errors import UnisslError


def is_dist() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main() -> bool:
    """True on rank 0, the only rank that writes files and logs."""
    return get_rank() == 0


def init_distributed(timeout_s: float | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's environment; returns ``(rank, world, local_rank)``.

    Uses NCCL when CUDA is available (and pins this process to GPU ``LOCAL_RANK``), gloo otherwise.
    Idempotent; without ``WORLD_SIZE > 1`` it does nothing and returns ``(0, 1, 0)``.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1, 0
    if not is_dist():
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise UnisslError("WORLD_SIZE > 1 but RANK/MASTER_ADDR are not set; launch with torchrun")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if timeout_s is None:  # commands pass --train.dist-timeout; library users may set the variable
            timeout_s = float(os.environ.get("UNISSL_DIST_TIMEOUT_S", 300))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return get_rank(), get_world_size(), get_local_rank()


def shutdown_distributed() -> None:
    """Leave the process group (a no-op when there is none); call it once a run's collectives are done.

    A process that exits with its gloo group still alive can abort at interpreter teardown (gloo's worker
    threads still hold tensors of finished work, whose release then needs the GIL: SIGABRT after the run's
    outputs are written, so torchrun reports a failed job). Only on the success path: after an error the
    other ranks may still wait in a collective, and the exit code already says the run failed.
    """
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_dist():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor, no autograd; ``x`` itself when not distributed)."""
    if not is_dist():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / get_world_size()


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0 and route gradients back to their owners.

    Forward: ``y = cat([x_0, ..., x_{W-1}])``. Each rank ``s`` then computes its own loss ``L_s(y)``, and
    ``x_r`` influences every ``L_s``. The gradient a rank needs for its slice is therefore
    ``sum_s dL_s/dy[slice r]``: backward sums the incoming gradients over ranks (all-reduce) and keeps
    this rank's slice. DDP then *averages* parameter gradients over ranks, so the effective objective is
    ``mean_s L_s``: with per-rank losses averaged over local samples that is the loss averaged over the
    global batch, and with a loss that every rank computes identically on ``y`` it is that loss itself.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.sizes = dist.get_rank(), None
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        ctx.sizes = [int(s.item()) for s in sizes]
        if len(set(ctx.sizes)) == 1:
            parts = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(parts, x.contiguous())
        else:  # uneven local batches: pad to the largest, gather, then trim
            n = max(ctx.sizes)
            pad = x.new_zeros((n - x.shape[0], *x.shape[1:]))
            padded = torch.cat([x, pad]).contiguous()
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            parts = [p[:k] for p, k in zip(parts, ctx.sizes)]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``cat`` of ``x`` (B, ...) from every rank along dim 0, differentiable (see :class:`_AllGatherWithGrad`).

    Returns ``x`` unchanged when not distributed, so contrastive losses can call it unconditionally.
    """
    if not is_dist() or get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``cat`` of ``x`` (B, ...) from every rank along dim 0 without autograd (equal sizes required)."""
    if not is_dist() or get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)
