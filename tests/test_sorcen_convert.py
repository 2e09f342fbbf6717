"""Official MAGE / Sorcen weights -> SorcenModel: numerics against a naive re-implementation of the
official forward pass on the official key names, the ViT-B key/shape set and MAGE ViT-B's size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unissl.methods.sorcen.convert import convert_official_state_dict, infer_arch, official_key_shapes
from unissl.methods.sorcen.method import build_method
from unissl.methods.sorcen.presets import PRESETS, SorcenArch

ARCH = SorcenArch(codebook_size=16, grid=(4, 4), dim=32, depth=2, heads=2, decoder_dim=24, decoder_depth=2,
                  decoder_heads=3, proj_hidden=40, proj_dim=8, pred_hidden=12)


def synthetic_official(arch: SorcenArch, sorcen: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in official_key_shapes(arch, sorcen=sorcen).items():
        if name.endswith("position_ids"):
            out[name] = torch.arange(shape[1]).view(shape)
        elif name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(5)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) + 0.5
        else:
            out[name] = torch.randn(shape, generator=g) * 0.3
    return out


def naive_block(x: torch.Tensor, sd: dict, p: str, heads: int) -> torch.Tensor:
    """timm/MAGE Block, written out: pre-norm attention with explicit softmax, GELU MLP."""
    b, n, d = x.shape
    h = F.layer_norm(x, (d,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], eps=1e-6)
    qkv = (h @ sd[f"{p}.attn.qkv.weight"].T + sd[f"{p}.attn.qkv.bias"]).view(b, n, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    y = (att @ v).transpose(1, 2).reshape(b, n, d)
    x = x + y @ sd[f"{p}.attn.proj.weight"].T + sd[f"{p}.attn.proj.bias"]
    h = F.layer_norm(x, (d,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], eps=1e-6)
    h = F.gelu(h @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"])
    return x + h @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]


def official_logits(sd: dict, arch: SorcenArch, ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """models_mage.py forward (eval, nothing dropped) on official names; returns (B, N, K) code logits."""
    k = arch.codebook_size
    vocab = sd["token_emb.word_embeddings.weight"].shape[0]
    fake_class, mask_label = k + 1100 - 1024, vocab - 1
    tokens = torch.where(masked, torch.full_like(ids, mask_label), ids)
    tokens = torch.cat([torch.full((ids.shape[0], 1), fake_class), tokens], dim=1)
    x = sd["token_emb.word_embeddings.weight"][tokens] + sd["token_emb.position_embeddings.weight"][: tokens.shape[1]]
    x = F.layer_norm(x, (arch.dim,), sd["token_emb.LayerNorm.weight"], sd["token_emb.LayerNorm.bias"], eps=1e-6)
    for i in range(arch.depth):
        x = naive_block(x, sd, f"blocks.{i}", arch.heads)
    x = F.layer_norm(x, (arch.dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    x = x @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]
    all_mask = torch.cat([torch.zeros_like(masked[:, :1]), masked], dim=1)
    x = torch.where(all_mask.unsqueeze(-1), x[:, :1].expand_as(x), x) + sd["decoder_pos_embed_learned"]
    for i in range(arch.decoder_depth):
        x = naive_block(x, sd, f"decoder_blocks.{i}", arch.decoder_heads)
    x = F.layer_norm(x, (arch.decoder_dim,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], eps=1e-6)
    h = F.gelu(x @ sd["mlm_layer.fc.weight"].T + sd["mlm_layer.fc.bias"])
    h = F.layer_norm(h, (arch.dim,), sd["mlm_layer.ln.weight"], sd["mlm_layer.ln.bias"], eps=1e-6)
    logits = h @ sd["token_emb.word_embeddings.weight"].T + sd["mlm_layer.bias"]  # (B, 1+N, V)
    return logits[:, 1:, :k]


@pytest.mark.parametrize("sorcen", [False, True])
def test_converted_weights_reproduce_the_official_forward(sorcen):
    sd = synthetic_official(ARCH, sorcen)
    converted, report = convert_official_state_dict({"model": sd}, ARCH)
    assert report.variant == ("sorcen" if sorcen else "mage")
    method = build_method(ARCH, report.variant)
    method.load_state_dict(converted, strict=True)  # every tensor of ours is covered
    model = method.model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 16, (3, 16), generator=g)
    masked = torch.rand(3, 16, generator=g) < 0.5
    with torch.no_grad():
        ours = model.predict(torch.where(masked, torch.full_like(ids, model.special.mask), ids))
    assert torch.allclose(ours, official_logits(sd, ARCH, ids, masked), atol=1e-4)
    assert torch.equal(model.embed.word.weight[model.special.cls], sd["token_emb.word_embeddings.weight"][16 + 76])
    assert torch.equal(model.embed.word.weight[model.special.mask], sd["token_emb.word_embeddings.weight"][-1])
    if sorcen:
        assert torch.equal(method.teacher_blocks[1].mlp.fc2.weight, sd["blocks_momentum.1.mlp.fc2.weight"])
        assert torch.equal(method.predictor.net[1].running_var, sd["predictor.projector.1.running_var"])
    assert {"patch_embed.proj.weight", "pos_embed", "decoder_pred.weight"} <= set(report.ignored)


def test_vit_b_key_and_shape_sets():
    arch = PRESETS["vit_b"]
    shapes = official_key_shapes(arch, sorcen=True)
    # spot checks against models_mage.py / models_lease_tk_1600.py for ViT-B
    assert shapes["token_emb.word_embeddings.weight"] == (2025, 768)
    assert shapes["token_emb.position_embeddings.weight"] == (257, 768)
    assert shapes["mlm_layer.bias"] == (1, 1, 2025)
    assert shapes["decoder_pos_embed_learned"] == (1, 257, 768)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768) and "blocks.12.norm1.weight" not in shapes
    assert shapes["decoder_blocks.7.mlp.fc1.weight"] == (3072, 768) and "decoder_blocks.8.norm1.weight" not in shapes
    assert shapes["projector.projector.0.weight"] == (4096, 768)
    assert shapes["predictor.projector.3.weight"] == (512, 2048)
    state = {n: torch.empty(s, device="meta") for n, s in shapes.items()}
    assert infer_arch(state) == arch
    converted, report = convert_official_state_dict(state)
    with torch.device("meta"):
        ours = build_method(arch, "sorcen").state_dict()
    ours_shapes = {n: tuple(t.shape) for n, t in ours.items()}
    assert {n: tuple(t.shape) for n, t in converted.items()} == ours_shapes


def test_vit_b_parameter_count_matches_mage_vit_b():
    """MAGE ViT-B (models_mage.py without its VQGAN) holds 146,474,217 numbers; 1,577,472 of them are never
    used for tokens (patch embedding, cls/mask tokens, fixed sin-cos tables, pixel head). Of the
    144,896,745 used ones, ours drops only the 999 class-id rows the unconditional model never reads
    (999 x 768) and the 1001 logit biases of non-code ids: 144,128,512."""
    arch = PRESETS["vit_b"]
    shapes = official_key_shapes(arch)
    params = {n: math.prod(s) for n, s in shapes.items() if n != "token_emb.position_ids"}
    d, blk = 768, 12 * 768 ** 2 + 13 * 768  # one ViT block: 12 d^2 + 13 d
    closed_form = 2025 * d + 257 * d + 2 * d + 12 * blk + 2 * d + (d * d + d) + 257 * d + 8 * blk + 2 * d \
        + (d * d + d) + 2 * d + 2025 + (d * 768 + d) + d + 257 * d + d + 257 * d + (768 * d + 768)
    assert sum(params.values()) == closed_form == 146_474_217
    unused = sum(v for n, v in params.items() if n.split(".")[0] in
                 ("patch_embed", "cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "decoder_pred"))
    assert unused == 1_577_472
    with torch.device("meta"):
        model = build_method(arch, "mage").model
    ours = sum(p.numel() for p in model.parameters())
    assert ours == 146_474_217 - unused - 999 * d - 1001 == 144_128_512


def test_converter_errors_go_to_stderr_as_one_line(tmp_path, capsys):
    from unissl.methods.sorcen.convert import main as convert_main

    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert convert_main([str(bad), str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("unissl: error:") and "truncated.pth" in err
    assert not (tmp_path / "run").exists()
