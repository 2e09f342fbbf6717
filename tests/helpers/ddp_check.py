"""Run under ``torchrun --nproc_per_node=2``: checks all_gather_with_grad and trains the toy method with DDP.

Writes ``<out>/gather.json`` (max gradient errors against single-process references, from rank 0), the
toy run under ``<out>/run`` and ``<out>/nan_rank<r>.txt`` (the error each rank got when rank 1's loss is NaN). Usage: ``python -m torch.distributed.run --nproc_per_node=2 ddp_check.py <out>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.toy import ToyConfig, ToyMethod, build  # noqa: E402
from unissl.config import parse_config  # noqa: E402
from unissl.engine import Trainer, all_gather_with_grad, dist  # noqa: E402
from unissl.errors import UnisslError  # noqa: E402


def _rowwise_ce(q: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row InfoNCE-like term ``logsumexp(q k^T) - q k_target`` (the shape of contrastive losses)."""
    logits = q @ keys.T  # (B, N)
    return torch.logsumexp(logits, dim=1) - logits.gather(1, targets[:, None]).squeeze(1)  # (B,)


def gather_errors(rank: int, world: int) -> dict[str, float]:
    """Max |grad - reference grad| for three uses of the differentiable all-gather."""
    g = torch.Generator().manual_seed(0)
    x_all = torch.randn(8, 4, generator=g, dtype=torch.float64)  # the global batch, known to every rank
    w0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out: dict[str, float] = {}

    def reference(loss_fn) -> torch.Tensor:
        w = w0.clone().requires_grad_(True)
        loss_fn(x_all @ w).backward()
        return w.grad

    # (a) each rank: mean over its local rows against all gathered keys; DDP-style mean of grads.
    sizes = [4, 4]
    lo = sum(sizes[:rank])
    w = w0.clone().requires_grad_(True)
    z_local = x_all[lo:lo + sizes[rank]] @ w  # (4, 3)
    z = all_gather_with_grad(z_local)  # (8, 3)
    out["forward"] = float((z - x_all @ w0).abs().max())
    idx = torch.arange(lo, lo + sizes[rank])
    _rowwise_ce(z_local, z, idx).mean().backward()
    grad = w.grad.clone()
    torch_dist.all_reduce(grad)
    grad /= world
    ref = reference(lambda zz: _rowwise_ce(zz, zz, torch.arange(8)).mean())
    out["local_mean"] = float((grad - ref).abs().max())

    # (b) every rank computes the same loss of the gathered tensor; DDP-style mean of grads.
    w = w0.clone().requires_grad_(True)
    z = all_gather_with_grad(x_all[lo:lo + sizes[rank]] @ w)
    f = lambda zz: (zz.sin() * torch.arange(1.0, 9.0, dtype=zz.dtype)[:, None]).sum() + zz.pow(2).mean()  # noqa: E731
    f(z).backward()
    grad = w.grad.clone()
    torch_dist.all_reduce(grad)
    grad /= world
    out["shared_loss"] = float((grad - reference(f)).abs().max())

    # (c) uneven local batches (3 and 5 rows), summed losses: summed grads equal the global sum's grad.
    sizes = [3, 5]
    lo = sum(sizes[:rank])
    w = w0.clone().requires_grad_(True)
    z_local = x_all[lo:lo + sizes[rank]] @ w
    z = all_gather_with_grad(z_local)
    out["uneven_forward"] = float((z - x_all @ w0).abs().max())
    _rowwise_ce(z_local, z, torch.arange(lo, lo + sizes[rank])).sum().backward()
    grad = w.grad.clone()
    torch_dist.all_reduce(grad)
    out["uneven_sum"] = float((grad - reference(lambda zz: _rowwise_ce(zz, zz, torch.arange(8)).sum())).abs().max())
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    extra = sys.argv[2:]
    rank, world, _ = dist.init_distributed()
    errors = gather_errors(rank, world)
    cfg = parse_config(ToyConfig, ["--train.run-dir", str(out_dir / "run"), *extra])
    method, data = build(cfg)
    Trainer(method, data, cfg.train).fit()

    # A NaN on one rank only must stop every rank at the same step (no hang in a collective).
    nan_cfg = parse_config(ToyConfig, ["--train.run-dir", str(out_dir / "nan"), "--train.ckpt-every", "3"])
    _, data = build(nan_cfg)
    try:
        Trainer(ToyMethod(nan_at=5 if rank == 1 else 0), data, nan_cfg.train).fit()
        message = "no error"
    except UnisslError as e:
        message = str(e)
    (out_dir / f"nan_rank{rank}.txt").write_text(message)
    if rank == 0:
        (out_dir / "gather.json").write_text(json.dumps({"world": world, **errors}))
    # both ranks reach here before the group is torn down: a rank that exits while the other still has gloo
    # work in flight was seen to abort in C++ teardown ("terminate called without an active exception")
    torch_dist.barrier()
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
