"""Training through the engine changes only [cls], the projection and the decoder; every frozen encoder
weight stays bit-identical (one test per supported encoder kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unissl.data.base import InMemoryImageDataset
from unissl.engine import TrainConfig, Trainer
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer


def _dataset(n: int = 16) -> InMemoryImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 16, 16, generator=g)
    return InMemoryImageDataset("toy", "train", images, torch.zeros(n, dtype=torch.int64), ["a"])


def _train_and_compare(tok: RepTokTokenizer, run_dir: Path) -> None:
    before = {k: v.detach().clone() for k, v in tok.state_dict().items()}
    cfg = TrainConfig(run_dir=str(run_dir), steps=3, global_batch=8, lr=1e-2, warmup_steps=0, num_workers=0,
                      progress=False, tensorboard=False, ckpt_every=3, image_every=0, device="cpu")
    Trainer(tok, _dataset(), cfg).fit()
    # a backbone reloaded from its path is not written into the training checkpoint (frozen_state_prefixes)
    from unissl.engine import latest_checkpoint, load_checkpoint

    saved = set(load_checkpoint(latest_checkpoint(run_dir), with_trainer_state=False).model)
    in_ckpt = {k for k in saved if k.startswith(("encoder.backbone.", "encoder.vq."))}
    assert bool(in_ckpt) == tok.encoder.saves_backbone(), sorted(in_ckpt)[:3]
    assert {"encoder.cls", "encoder.cls_init"} <= saved
    after = tok.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith("encoder.") and k != "encoder.cls"]
    assert frozen and not changed & set(frozen), sorted(changed & set(frozen))  # bit-identical
    assert "encoder.cls" in changed
    assert any(k.startswith("projection.") for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
    assert changed <= {"encoder.cls"} | {k for k in before if k.startswith(("projection.", "decoder."))}
    assert not tok.encoder.backbone.training  # the engine's train() did not switch the backbone to training
    # z moved away from z_frozen, only because cls moved
    x = _dataset(4).__getitems__([0, 1, 2, 3])["image"]
    assert not torch.allclose(tok.encode(x), tok.encoder.frozen(x))


def test_random_encoder_only_cls_projection_decoder_change(tmp_path) -> None:
    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 16, "dim": 32, "depth": 2, "heads": 2, "patch": 4}
    tok = RepTokTokenizer(RepTokConfig(encoder=enc, image_size=16, channels=1, decoder="tiny", cos_weight=0.1))
    _train_and_compare(tok, tmp_path / "run")


def test_dinov2_encoder_only_cls_projection_decoder_change(tmp_path) -> None:
    pytest.importorskip("transformers")
    from unissl.methods.reptok.tiny import save_random_dinov2

    save_random_dinov2(tmp_path / "dino", dropout=0.5)  # dropout on: eval mode must hold through training
    torch.manual_seed(0)
    cfg = RepTokConfig(encoder={"kind": "dinov2", "path": str(tmp_path / "dino")}, image_size=16, channels=1,
                       decoder="tiny", cos_weight=0.1)
    tok = RepTokTokenizer(cfg)
    _train_and_compare(tok, tmp_path / "run")
    # resuming from that backbone-free checkpoint restores every trained weight; the backbone comes from its path
    resumed = RepTokTokenizer(cfg)
    train = TrainConfig(run_dir=str(tmp_path / "run"), steps=3, global_batch=8, lr=1e-2, warmup_steps=0,
                        num_workers=0, progress=False, tensorboard=False, ckpt_every=3, image_every=0, device="cpu",
                        resume=True)
    trainer = Trainer(resumed, _dataset(), train).prepare()
    assert trainer.step == 3
    for k, v in tok.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_sorcen_encoder_only_cls_projection_decoder_change(tmp_path) -> None:
    from test_reptok_encoders import make_tiny_sorcen_run

    run = make_tiny_sorcen_run(tmp_path)
    torch.manual_seed(0)
    tok = RepTokTokenizer(RepTokConfig(encoder={"kind": "sorcen", "path": run}, image_size=16, channels=1,
                                       decoder="tiny", cos_weight=0.1))
    _train_and_compare(tok, tmp_path / "reptok")
    # the VQ tokenizer inside the Sorcen adapter is frozen too
    assert all(not p.requires_grad for p in tok.encoder.vq.parameters())


@pytest.mark.parametrize("kind", ["sorcen", "random"])
def test_frozen_cache_gives_the_same_loss_and_gradient(tmp_path, kind) -> None:
    """The frozen encoder's outputs cached once per image: same loss and [cls] gradient as recomputing them."""
    from unissl.methods.reptok.frozen_cache import WithFrozenCache, build_frozen_cache

    if kind == "sorcen":
        from test_reptok_encoders import make_tiny_sorcen_run

        enc = {"kind": "sorcen", "path": make_tiny_sorcen_run(tmp_path)}
    else:
        enc = {"kind": "random", "image_size": 16, "dim": 32, "depth": 2, "heads": 2, "patch": 4}
    torch.manual_seed(0)
    tok = RepTokTokenizer(RepTokConfig(encoder=enc, image_size=16, channels=1, decoder="tiny", cos_weight=0.5))
    with torch.no_grad():
        tok.encoder.cls.add_(0.3 * torch.randn_like(tok.encoder.cls))  # so that the cosine term is not zero
    data = _dataset()
    path = build_frozen_cache(tok.encoder, data, tmp_path / "cache", batch_size=5)
    assert build_frozen_cache(tok.encoder, data, tmp_path / "cache") == path  # reused, not recomputed
    cached = WithFrozenCache(data, path)
    idx = [3, 0, 7, 11]
    plain, with_cache = data.__getitems__(idx), cached.__getitems__(idx)
    assert ("frozen_input" in with_cache) == (kind == "sorcen")
    results = []
    for batch in (plain, with_cache):
        tok.zero_grad()
        torch.manual_seed(1)
        out = tok(batch)
        out["loss"].backward()
        results.append((out["loss"].detach(), out["cos_loss"], tok.encoder.cls.grad.clone()))
    assert results[0][1] > 1e-3
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # another dataset (or other backbone weights) gets another key
    other = build_frozen_cache(tok.encoder, _dataset(8), tmp_path / "cache")
    assert other != path
