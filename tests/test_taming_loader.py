"""taming/MAGE VQGAN loader: key layout, loading, load_tokenizer dispatch, error paths (the numerics against MAGE's
own VQModel: tests/test_released_sorcen.py)."""

from __future__ import annotations

import json

import pytest
import torch

from unissl.errors import UnisslError
from unissl.tokenizers import TamingConfig, TamingVQGAN, load_taming_checkpoint, load_tokenizer

# small widths, same structure and key names as MAGE's checkpoint (5 levels, 2 blocks, no attention)
SMALL = TamingConfig(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=8, embed_dim=8, n_embed=16,
                     resolution=32, norm_groups=4)


def reference_layout(ch: int, ch_mult: tuple[int, ...], nrb: int, z: int, n_embed: int, cin: int = 3,
                     cout: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a MAGE VQGAN state dict, spelled out independently of the model code."""
    out: dict[str, tuple[int, ...]] = {}

    def res(prefix: str, a: int, b: int) -> None:
        out[f"{prefix}.norm1.weight"] = out[f"{prefix}.norm1.bias"] = (a,)
        out[f"{prefix}.conv1.weight"] = (b, a, 3, 3)
        out[f"{prefix}.norm2.weight"] = out[f"{prefix}.norm2.bias"] = (b,)
        out[f"{prefix}.conv2.weight"] = (b, b, 3, 3)
        if a != b:
            out[f"{prefix}.nin_shortcut.weight"] = (b, b, 1, 1)

    out["encoder.conv_in.weight"] = (ch, cin, 3, 3)
    w = ch
    for i, m in enumerate(ch_mult):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", w, ch * m)
            w = ch * m
    res("encoder.mid.block_1", w, w)
    res("encoder.mid.block_2", w, w)
    out["encoder.norm_out.weight"] = out["encoder.norm_out.bias"] = (w,)
    out["encoder.conv_out.weight"], out["encoder.conv_out.bias"] = (z, w, 1, 1), (z,)
    out["quantize.embedding.weight"] = (n_embed, z)
    out["decoder.conv_in.weight"], out["decoder.conv_in.bias"] = (w, z, 3, 3), (w,)
    res("decoder.mid.block_1", w, w)
    res("decoder.mid.block_2", w, w)
    for i in reversed(range(len(ch_mult))):
        for j in range(nrb):
            res(f"decoder.up.{i}.block.{j}", w, ch * ch_mult[i])
            w = ch * ch_mult[i]
        if i > 0:
            out[f"decoder.up.{i}.upsample.conv.weight"], out[f"decoder.up.{i}.upsample.conv.bias"] = (w, w, 3, 3), (w,)
    out["decoder.norm_out.weight"] = out["decoder.norm_out.bias"] = (w,)
    out["decoder.conv_out.weight"], out["decoder.conv_out.bias"] = (cout, w, 3, 3), (cout,)
    return out


def random_state(cfg: TamingConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    layout = reference_layout(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.n_embed)
    state = {}
    for k, shape in layout.items():
        if k.endswith(("norm1.weight", "norm2.weight", "norm_out.weight")):
            state[k] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 10
            state[k] = torch.randn(shape, generator=g) / fan_in**0.5
    return state


def test_full_size_mage_layout_keys_and_shapes():
    with torch.device("meta"):
        model = TamingVQGAN(TamingConfig())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = reference_layout(128, (1, 1, 2, 2, 4), 2, 256, 1024)
    assert got == ref
    assert got["quantize.embedding.weight"] == (1024, 256)
    assert got["encoder.down.2.block.0.nin_shortcut.weight"] == (256, 256, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in got and "encoder.down.0.downsample.conv.weight" not in got
    assert (model.grid, model.image_size, model.codebook_size, model.channels) == ((16, 16), 256, 1024, 3)


def test_loads_written_checkpoint_frozen_with_its_checksum(tmp_path):
    # what the loaded VQGAN computes is proven against MAGE's own VQModel in tests/test_released_sorcen.py
    sd = random_state(SMALL)
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": sd}, path)
    tok = load_taming_checkpoint(path, config=SMALL)
    assert tok.grid == (2, 2) and not tok.training
    assert all(torch.equal(v, sd[k]) for k, v in tok.state_dict().items())
    assert not any(p.requires_grad for p in tok.parameters())
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = tok.encode(x)
    assert ids.dtype == torch.int64 and ids.shape == (3, 2, 2)
    img = tok.decode(ids)
    assert img.shape == (3, 3, 32, 32) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # the checksum is the file's sha256; identity records it
    import hashlib

    assert tok.checksum() == hashlib.sha256(path.read_bytes()).hexdigest() == tok.identity()["checksum"]


def test_load_tokenizer_dispatch(tmp_path):
    sd = random_state(SMALL)
    torch.save(sd, tmp_path / "weights.ckpt")  # a bare state dict works too
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SMALL.__dict__.items()}
    (tmp_path / "config.json").write_text(json.dumps({"format": "taming-vqgan", "checkpoint": "weights.ckpt",
                                                      "config": cfg}))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, TamingVQGAN) and tok.codebook_size == 16
    with pytest.raises(UnisslError, match=r"\[0, 16\)"):
        tok.decode(torch.full((1, 2, 2), 16, dtype=torch.long))
    with pytest.raises(UnisslError, match=r"\(B, 3, 32, 32\)"):
        tok.encode(torch.rand(1, 3, 16, 16))


class _NotATensor:
    pass


def test_error_paths(tmp_path):
    with pytest.raises(UnisslError, match="not found"):
        load_taming_checkpoint(tmp_path / "missing.ckpt", config=SMALL)
    bad = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"x": _NotATensor()}}, bad)
    with pytest.raises(UnisslError, match="not a plain weights file"):
        load_taming_checkpoint(bad, config=SMALL)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnisslError, match="junk.ckpt"):
        load_taming_checkpoint(junk, config=SMALL)
    sd = random_state(SMALL)
    del sd["decoder.conv_out.bias"]
    sd["encoder.down.0.downsample.conv.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save(sd, tmp_path / "keys.ckpt")
    with pytest.raises(UnisslError, match=r"decoder\.conv_out\.bias.*encoder\.down\.0\.downsample\.conv\.weight"):
        load_taming_checkpoint(tmp_path / "keys.ckpt", config=SMALL)
    sd = random_state(SMALL)
    sd["quantize.embedding.weight"] = torch.zeros(32, 8)
    torch.save(sd, tmp_path / "shape.ckpt")
    with pytest.raises(UnisslError, match="quantize.embedding.weight"):
        load_taming_checkpoint(tmp_path / "shape.ckpt", config=SMALL)
    # a small checkpoint loaded with the default (full MAGE) config: a clear mismatch, not a crash
    torch.save(random_state(SMALL), tmp_path / "small.ckpt")
    with pytest.raises(UnisslError, match="differ"):
        load_tokenizer(tmp_path / "small.ckpt")
    with pytest.raises(ValueError, match="quant_conv"):
        TamingConfig(z_channels=256, embed_dim=64)
