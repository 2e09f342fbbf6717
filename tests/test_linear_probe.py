"""Multi-head linear probe, few-shot sampling and kNN against naive references."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from unissl.data import build_dataset
from unissl.engine.schedule import cosine_value
from unissl.eval.few_shot import few_shot, sample_per_class
from unissl.eval.knn import knn_scores
from unissl.eval.probe import (
    MultiHeadProbe,
    ProbeConfig,
    _update,
    fit_probes,
    linear_probe,
    topk_accuracy,
    train_val_split,
)


def _blobs(n: int, d: int, c: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(99)) * sep
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def test_multi_head_gradients_equal_single_head_gradients() -> None:
    torch.manual_seed(0)
    probe = MultiHeadProbe(dim=6, num_classes=4, num_heads=3).train()
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    logits = probe(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(3), reduction="sum") / 16
    gw, gb = torch.autograd.grad(loss, [probe.weight, probe.bias])
    z = F.batch_norm(F.layer_norm(x, (6,)), None, None, training=True, eps=1e-6)  # the same normalisation
    for h in range(3):
        w = probe.weight[h].detach().clone().requires_grad_(True)
        b = probe.bias[h].detach().clone().requires_grad_(True)
        ref_w, ref_b = torch.autograd.grad(F.cross_entropy(z @ w + b, y), [w, b])
        torch.testing.assert_close(gw[h], ref_w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb[h], ref_b, rtol=1e-5, atol=1e-6)


def test_sgd_update_matches_torch_sgd_per_head() -> None:
    torch.manual_seed(1)
    p = torch.randn(2, 5, 3)
    buf = torch.zeros_like(p)
    lrs, wds = torch.tensor([0.1, 0.5]), torch.tensor([0.0, 0.01])
    refs = [p[h].clone().requires_grad_(True) for h in range(2)]
    opts = [torch.optim.SGD([refs[h]], lr=float(lrs[h]), momentum=0.9, weight_decay=float(wds[h])) for h in range(2)]
    for _ in range(3):
        g = torch.randn(2, 5, 3)
        _update(p, g, buf, lrs, wds, 0.9, lars=False)
        for h in range(2):
            refs[h].grad = g[h].clone()
            opts[h].step()
    for h in range(2):
        torch.testing.assert_close(p[h], refs[h].detach())


def test_lars_update_matches_formula() -> None:
    p, g = torch.randn(1, 4, 2), torch.randn(1, 4, 2)
    buf = torch.zeros_like(p)
    p0 = p.clone()
    _update(p, g, buf, torch.tensor([0.5]), torch.tensor([0.1]), 0.9, lars=True)
    d = g + 0.1 * p0
    expected = p0 - 0.5 * (0.001 * p0.norm() / d.norm()) * d
    torch.testing.assert_close(p, expected)


def test_schedule_and_topk() -> None:
    def lr_factor(step: int, total: int, warmup: int) -> float:  # the probe's schedule: the engine's, 1 -> 0
        return cosine_value(step, 1.0, 0.0, total, warmup)

    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(99, 100, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, torch.tensor([1, 2, 1]), ks=(1, 2))
    assert acc["top1"] == pytest.approx(100 / 3) and acc["top2"] == pytest.approx(200 / 3)


def test_probe_learns_separable_data_and_not_random_labels() -> None:
    x, y = _blobs(1200, 20, 5, 1.5, seed=0)
    xt, yt = _blobs(400, 20, 5, 1.5, seed=1)
    cfg = ProbeConfig(epochs=8, batch_size=128, lrs=[0.01, 0.1, 1.0], weight_decays=[0.0, 1e-3], warmup_epochs=1)
    metrics, res = linear_probe(x, y, xt, yt, 5, dataclasses.replace(cfg, val_fraction=0.2), progress=False)
    assert metrics["top1"] > 95.0 and metrics["top5"] == 100.0
    assert len(res.grid) == 6 and res.val_top1[res.best] == max(res.val_top1)
    # labels independent of the features: chance level on the test split
    y_rand = torch.randint(0, 5, (1200,), generator=torch.Generator().manual_seed(7))
    metrics, _ = linear_probe(x, y_rand, xt, yt, 5, dataclasses.replace(cfg, val_fraction=0.2), progress=False)
    assert metrics["top1"] < 40.0


def test_diverged_head_is_never_selected() -> None:
    x, y = _blobs(600, 10, 3, 2.0, seed=2)
    cfg = ProbeConfig(epochs=3, batch_size=64, lrs=[0.1, 1e38], warmup_epochs=0, norm="none")
    res = fit_probes(x[:500], y[:500], x[500:], y[500:], 3, cfg, progress=False)
    assert res.best == 0 and res.val_top1[1] == -1.0


def test_train_val_split_is_a_partition() -> None:
    tr, va = train_val_split(100, 0.1, seed=3)
    assert len(va) == 10 and sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    tr2, _ = train_val_split(100, 0.1, seed=3)
    assert torch.equal(tr, tr2)


def test_pixels_probe_on_digits() -> None:
    train, test = build_dataset("digits", "train"), build_dataset("digits", "test")
    tx, ty = train.__getitems__(list(range(len(train)))).values()
    vx, vy = test.__getitems__(list(range(len(test)))).values()
    cfg = ProbeConfig(epochs=15, lrs=[0.03, 0.1, 0.3], warmup_epochs=1)
    metrics, _ = linear_probe(tx.flatten(1), ty, vx.flatten(1), vy, 10, cfg, progress=False)
    assert metrics["top1"] > 90.0


def test_sample_per_class_and_few_shot_summary() -> None:
    labels = torch.arange(10).repeat(30)
    idx = sample_per_class(labels, 5, seed=0, num_classes=10)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert torch.equal(idx, sample_per_class(labels, 5, seed=0, num_classes=10))
    assert not torch.equal(idx, sample_per_class(labels, 5, seed=1, num_classes=10))
    x, y = _blobs(800, 12, 4, 2.5, seed=3)
    xt, yt = _blobs(200, 12, 4, 2.5, seed=4)
    cfg = ProbeConfig(epochs=30, lrs=[0.1, 1.0], warmup_epochs=1)
    out = few_shot(x, y, xt, yt, 4, cfg, shots=[5], seeds=[0, 1, 2])
    row = out["5"]
    assert len(row["top1"]) == 3
    assert row["top1_mean"] == pytest.approx(sum(row["top1"]) / 3)
    assert row["top1_std"] == pytest.approx(torch.tensor(row["top1"]).std().item(), rel=1e-6)
    assert row["top1_mean"] > 80.0
    assert dataclasses.replace(cfg, seed=5).seed == 5


def test_knn_matches_naive_reference() -> None:
    g = torch.Generator().manual_seed(5)
    tx, ty = torch.randn(50, 8, generator=g), torch.randint(0, 3, (50,), generator=g)
    qx = torch.randn(7, 8, generator=g)
    scores = knn_scores(tx, ty, qx, 3, k=5, temperature=0.1, chunk=3)
    for i in range(7):
        sims = [float(F.cosine_similarity(qx[i], tx[j], dim=0)) for j in range(50)]
        top = sorted(range(50), key=lambda j: -sims[j])[:5]
        ref = torch.zeros(3)
        for j in top:
            ref[ty[j]] += torch.tensor(sims[j] / 0.1).exp()
        torch.testing.assert_close(scores[i], ref, rtol=1e-4, atol=1e-4)
