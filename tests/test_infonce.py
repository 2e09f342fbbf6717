"""InfoNCE / NT-Xent / uniformity against naive loops and closed forms, and the cross-rank gather."""

from __future__ import annotations

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from unissl.methods.sorcen.losses import info_nce, nt_xent, uniformity_loss


def naive_info_nce(q: torch.Tensor, k: torch.Tensor, t: float, offset: int = 0) -> torch.Tensor:
    """-log softmax of the positive, one query at a time."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    total = 0.0
    for i in range(q.shape[0]):
        scores = [float(q[i] @ k[j]) / t for j in range(k.shape[0])]
        total += -(scores[i + offset] - math.log(sum(math.exp(s) for s in scores)))
    return torch.tensor(total / q.shape[0])


def test_info_nce_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.3, 1.0):
        assert torch.allclose(info_nce(q, k, t), naive_info_nce(q, k, t), atol=1e-5)


def test_info_nce_is_log_batch_on_uninformative_inputs():
    for b in (2, 7, 64):
        q = torch.ones(b, 4)
        k = torch.ones(b, 4)
        assert torch.allclose(info_nce(q, k, 0.3), torch.tensor(math.log(b)), atol=1e-5)


def test_info_nce_is_small_for_perfect_pairs():
    k = torch.eye(8)
    assert info_nce(k.clone(), k, 0.05) < 1e-6


def test_nt_xent_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n, t, total = 5, 0.2, 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        scores = {j: float(z[i] @ z[j]) / t for j in range(2 * n) if j != i}
        total += -(scores[pos] - math.log(sum(math.exp(s) for s in scores.values())))
    assert torch.allclose(nt_xent(a, b, t), torch.tensor(total / (2 * n)), atol=1e-5)
    # identical views of one direction: every candidate ties -> log(2B - 1)
    ones = torch.ones(n, 3)
    assert torch.allclose(nt_xent(ones, ones, t), torch.tensor(math.log(2 * n - 1)), atol=1e-5)


def test_uniformity_closed_forms():
    assert uniformity_loss(torch.eye(4)) == 0.0  # orthogonal features
    assert torch.allclose(uniformity_loss(torch.ones(5, 3) * 2.0), torch.tensor(1.0))  # collapse
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos = 1/sqrt(2) -> squared 0.5
    assert torch.allclose(uniformity_loss(x), torch.tensor(0.5))


# ------------------------------------------------------------------ 2-process gloo: gather keeps gradients
WORLD, B, C, T = 2, 3, 4, 0.3


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(WORLD, B, C, generator=g), torch.randn(WORLD, B, C, generator=g)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        queries, keys = _data()
        k = keys[rank].clone().requires_grad_(True)
        loss = info_nce(queries[rank], k, T)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": k.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_keeps_gradients_across_two_gloo_ranks():
    queries, keys = _data()
    # Reference in one process: rank r scores its queries against all W*B keys (positive at r*B + i);
    # the gradient a rank's keys receive is the sum over every rank's loss.
    k_all = keys.reshape(WORLD * B, C).clone().requires_grad_(True)
    losses = [F.cross_entropy(F.normalize(queries[r], dim=-1) @ F.normalize(k_all, dim=-1).T / T,
                              torch.arange(B) + r * B) for r in range(WORLD)]
    local_grad = torch.autograd.grad(losses[0], k_all, retain_graph=True)[0].view(WORLD, B, C)
    sum(losses).backward()
    ref_grad = k_all.grad.view(WORLD, B, C)
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(port, tmp), nprocs=WORLD, join=True)
        got = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for r in range(WORLD):
        assert torch.allclose(got[r]["loss"], losses[r].detach(), atol=1e-5)
        assert torch.allclose(got[r]["grad"], ref_grad[r], atol=1e-5)
    # rank 0's keys also get gradient from rank 1's loss: without the reduction the test would fail
    assert not torch.allclose(got[0]["grad"], local_grad[0], atol=1e-4)
