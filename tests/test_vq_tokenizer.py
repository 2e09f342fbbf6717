"""VQ tokenizer: shapes, nearest-code lookup, EMA / straight-through updates, restarts, training, I/O, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from unissl.errors import UnisslError
from unissl.tokenizers import (
    PRESETS,
    VectorQuantizer,
    VQTokenizer,
    VQTokenizerMethod,
    load_tokenizer,
    preset,
)
from unissl.utils.images import psnr


@pytest.fixture
def one_thread():
    """Training tests run single-threaded (faster than 2 contended threads on a shared CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(**kw) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(dataclasses.replace(preset("tiny"), **kw))


def _naive_nearest(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """argmin over codes of the explicit Euclidean distance, one vector at a time."""
    return torch.stack([torch.argmin(((codes - v) ** 2).sum(1)) for v in z])


def test_encode_decode_shapes_and_range():
    tok = _tiny().eval()
    x = torch.rand(5, 3, 8, 8)
    ids = tok.encode(x)
    assert ids.dtype == torch.int64 and ids.shape == (5, *tok.grid) == (5, 4, 4)
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size
    y = tok.decode(ids)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # the training forward quantizes exactly like encode
    assert torch.equal(tok(x).ids, ids)
    assert (tok.image_size, tok.channels, tok.codebook_size) == (8, 3, 16)


@pytest.mark.parametrize("kind", ["ema", "st"])
@pytest.mark.parametrize("l2", [True, False])
def test_quantizer_picks_nearest_code(kind: str, l2: bool):
    torch.manual_seed(1)
    q = VectorQuantizer(32, 6, kind=kind, l2_norm=l2).eval()
    z = torch.randn(3, 6, 2, 5)  # (B, D, h, w)
    out = q(z)
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    codes = q.codebook.detach()
    if l2:
        z_flat, codes = F.normalize(z_flat, dim=1), F.normalize(codes, dim=1)
    ref = _naive_nearest(z_flat, codes).view(3, 2, 5)
    assert torch.equal(out.ids, ref)
    # quantized output carries the chosen code vectors
    assert torch.allclose(out.z_q.permute(0, 2, 3, 1).reshape(-1, 6), codes[ref.view(-1)], atol=1e-6)


def test_st_loss_and_gradients_match_the_vqvae_objective():
    torch.manual_seed(2)
    q = VectorQuantizer(8, 4, kind="st", l2_norm=False, beta=0.25).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    e = q.codebook.detach()[out.ids.view(-1)]
    ref = ((z_flat - e) ** 2).mean() * (1 + 0.25)  # codebook term + beta * commitment (same value)
    assert torch.allclose(out.loss, ref, atol=1e-6)
    (out.z_q.sum() + out.loss).backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    # straight-through: d(sum z_q)/dz = 1 plus the commitment gradient 2*beta*(z-e)/N
    n = z_flat.numel()
    expect = 1 + 2 * 0.25 * (z_flat - e) / n
    assert torch.allclose(z.grad.permute(0, 2, 3, 1).reshape(-1, 4), expect, atol=1e-5)


def test_ema_update_closed_form():
    torch.manual_seed(3)
    k, d, decay, eps = 4, 3, 0.9, 1e-5
    q = VectorQuantizer(k, d, kind="ema", l2_norm=False, decay=decay, eps=eps).train()
    count0, sum0 = q.ema_count.clone(), q.ema_sum.clone()
    z = torch.randn(1, d, 4, 4)
    out = q(z)
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    ids = out.ids.view(-1)
    counts = torch.stack([(ids == j).sum() for j in range(k)]).float()
    sums = torch.stack([z_flat[ids == j].sum(0) for j in range(k)])
    ec = decay * count0 + (1 - decay) * counts
    es = decay * sum0 + (1 - decay) * sums
    n = ec.sum()
    smoothed = (ec + eps) / (n + k * eps) * n
    assert torch.allclose(q.codebook, es / smoothed[:, None], atol=1e-6)
    e_before = sum0 / count0[:, None]  # the codebook the lookup used (before this step's update)
    assert torch.allclose(out.loss, 0.25 * ((z_flat - e_before[ids]) ** 2).mean(), atol=1e-6)


@pytest.mark.parametrize("kind", ["ema", "st"])
def test_dead_code_restart_revives_unused_codes(kind: str):
    torch.manual_seed(4)
    q = VectorQuantizer(16, 4, kind=kind, l2_norm=True, dead_after=3).train()
    with torch.no_grad():  # every code but 0 points away from the data: only code 0 is ever used
        q.codebook.data[:] = -1.0
        q.codebook.data[0] = 1.0
        if kind == "ema":  # the EMA codebook is recomputed from its running sums
            q.ema_sum.copy_(q.codebook * q.ema_count[:, None])
    z = torch.rand(8, 4, 4, 4) + 0.1  # positive latents: code 0 is nearest for all of them
    for _ in range(3):
        out = q(z)
    assert out.ids.unique().tolist() == [0]
    assert q.restart_dead_codes() == 15
    # restarted codes are copies of (normalised) latents of the batch
    cand = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    new = F.normalize(q.codebook[1:].detach(), dim=1)
    dist = ((new[:, None] - cand[None]) ** 2).sum(-1).min(1).values  # (15,)
    assert float(dist.max()) < 1e-10
    assert int(q.code_age.max()) == 0
    used_after = q.eval()(z).ids.unique().numel()
    assert used_after > 4


def test_training_reduces_loss_on_real_digits(one_thread):
    from unissl.data import build_dataset

    ds = build_dataset("digits", "train")
    torch.manual_seed(0)
    method = VQTokenizerMethod(VQTokenizer(preset("digits")))
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    first, last = [], []
    for step in range(30):
        batch = ds.__getitems__(torch.randint(0, len(ds), (32,), generator=g).tolist())
        out = method(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        method.on_train_step_end(step + 1, 1000)
        (first if step < 5 else last if step >= 25 else []).append(out["rec_loss"].item())
        assert set(out) == {"loss", "rec_loss", "vq_loss", "psnr", "usage", "perplexity"}
        assert all(torch.isfinite(v) for v in out.values())
    assert sum(last) / len(last) < 0.5 * sum(first) / len(first)
    # PSNR is the per-image -10 log10(MSE) of the clamped reconstruction
    x = batch["image"][:4]
    rec = method.tokenizer.decode(method.tokenizer.encode(x))
    mse = ((rec - x) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(rec, x), -10 * torch.log10(mse.double()), atol=1e-4, rtol=0)
    imgs = method.log_images(batch)["reconstruction"]
    assert imgs.shape == (32, 1, 8, 8) and torch.equal(imgs[0], batch["image"][0])
    assert torch.allclose(imgs[1], method.tokenizer.decode(method.tokenizer.encode(batch["image"][:1]))[0],
                          atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_forward_backward(name: str):
    torch.manual_seed(0)
    cfg = preset(name)
    method = VQTokenizerMethod(VQTokenizer(cfg))
    x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size)
    out = method({"image": x, "label": torch.zeros(2, dtype=torch.long)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in method.parameters() if p.requires_grad)
    assert method.tokenizer.grid == (cfg.image_size // cfg.downsample,) * 2


def test_fmnist_preset_meets_the_brief():
    cfg = preset("fmnist")
    assert cfg.grid[0] >= 7 and cfg.codebook_size >= 512


@pytest.mark.parametrize("kind", ["ema", "st"])
def test_save_load_round_trip(tmp_path, kind: str):
    tok = _tiny(quantizer=kind)
    tok.train()
    tok(torch.rand(4, 3, 8, 8))  # change EMA state so the buffers matter
    tok.eval()
    x = torch.rand(6, 3, 8, 8)
    ids = tok.encode(x)
    tok.save_pretrained(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["format"] == "unissl-vq" and meta["grid"] == [4, 4]
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, VQTokenizer) and not loaded.training
    assert torch.equal(loaded.encode(x), ids)
    assert torch.allclose(loaded.decode(ids), tok.decode(ids))
    sha = hashlib.sha256((tmp_path / "tok" / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.checksum() == sha == tok.checksum() == meta["checksum"]
    ident = loaded.identity()
    assert ident["kind"] == "vq" and ident["codebook_size"] == 16 and ident["checksum"] == sha
    # a fresh (never saved) tokenizer hashes its state dict: equal weights -> equal checksum
    assert _tiny().checksum() == _tiny().checksum() != _tiny(codebook_size=32).checksum()


def test_decode_and_encode_validation():
    tok = _tiny().eval()
    ok = torch.zeros(2, 4, 4, dtype=torch.long)
    tok.decode(ok)
    with pytest.raises(UnisslError, match=r"\[0, 16\)"):
        tok.decode(ok + 16)
    with pytest.raises(UnisslError, match=r"\[0, 16\)"):
        tok.decode(ok - 1)
    with pytest.raises(UnisslError, match="int64"):
        tok.decode(ok.float())
    with pytest.raises(UnisslError, match=r"\(B, 4, 4\)"):
        tok.decode(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(UnisslError, match=r"\(B, 3, 8, 8\)"):
        tok.encode(torch.rand(2, 1, 8, 8))
    with pytest.raises(UnisslError, match=r"\(B, 3, 8, 8\)"):
        tok.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(UnisslError, match="float"):
        tok.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_loading_errors(tmp_path):
    with pytest.raises(UnisslError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    tok = _tiny()
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UnisslError, match="safetensors"):
        load_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text("{not json")
    with pytest.raises(UnisslError, match="not valid JSON"):
        load_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UnisslError, match="unknown tokenizer format"):
        load_tokenizer(tmp_path / "tok")
    with pytest.raises(UnisslError, match="unknown VQ preset"):
        preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(preset("fmnist"), image_size=30)


def test_cli_trains_saves_and_evaluates(tmp_path, one_thread, capsys):
    from unissl.cli import main

    run = tmp_path / "run"
    argv = ["tokenizer", "train", "--dataset", "digits", "--preset", "tiny", "--codebook-size", "8",
            "--train.steps", "4", "--train.warmup-steps", "0", "--train.global-batch", "32", "--train.run-dir", str(run),
            "--no-train.progress", "--no-train.tensorboard", "--out", str(tmp_path / "copy")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((run / "tokenizer_eval.json").read_text())
    assert res["images"] == 297 and res["codebook_size"] == 8 and res["grid"] == [4, 4]
    assert f"PSNR {res['psnr']:.2f} dB" in printed and 0 < res["usage"] <= 1
    assert (run / "reconstructions.png").is_file()
    record = json.loads((run / "results" / "tokenizer_eval.json").read_text())  # what the report reads
    assert record["metrics"]["psnr"] == res["psnr"] and record["extra"]["codebook_size"] == 8
    tok = load_tokenizer(run / "tokenizer")
    assert tok.checksum() == res["checksum"] == load_tokenizer(tmp_path / "copy").checksum()
    # the eval numbers are reproducible from the saved tokenizer (digits grey -> 3 channels for "tiny")
    from unissl.data import build_dataset
    from unissl.tokenizers.evaluate import evaluate

    again = evaluate(tok, build_dataset("digits", "test", image_size=8, channels=3))
    assert abs(again["psnr"] - res["psnr"]) < 1e-4 and again["usage"] == res["usage"]
    # user errors exit with status 2
    assert main(["tokenizer", "train", "--preset", "fmnist", "--image-size", "30",
                 "--train.run-dir", str(tmp_path / "bad")]) == 2
    assert "divisible" in capsys.readouterr().err
