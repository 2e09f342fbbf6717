"""Official MAGE / Sorcen weights -> SorcenModel: where every official tensor goes, the ViT-B key/shape set and
MAGE ViT-B's size. That the converted model computes what the released code computes is proven against outputs
the released code wrote (tests/test_released_sorcen.py)."""

from __future__ import annotations

import math

import pytest
import torch

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


@pytest.mark.parametrize("sorcen", [False, True])
def test_converter_covers_every_tensor_and_moves_the_special_rows(sorcen):
    sd = synthetic_official(ARCH, sorcen)
    converted, report = convert_official_state_dict({"model": sd}, ARCH)
    assert report.variant == ("sorcen" if sorcen else "mage")
    method = build_method(ARCH, report.variant)
    method.load_state_dict(converted, strict=True)  # every tensor of ours is covered
    model = method.model
    assert torch.equal(model.embed.word.weight[:16], sd["token_emb.word_embeddings.weight"][:16])
    assert torch.equal(model.head.bias, sd["mlm_layer.bias"].reshape(-1)[:16])
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
