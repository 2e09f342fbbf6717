"""DINOv2 in facebookresearch/dinov2's torch-hub format, against outputs the released code wrote.

The fixtures (``tests/fixtures/released/dinov2_*``) come from ``tools/released/dinov2.py``: tiny
``DinoVisionTransformer`` s built by the dinov2 repository itself with random seeded weights, their hub-format
state dicts and their ``forward_features`` outputs ([cls], registers, patch tokens) for fixed images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unissl.errors import UnisslError
from unissl.methods.reptok.dinov2_hub import hub_config, load_hub_dinov2
from unissl.methods.reptok.encoders import IMAGENET_MEAN, IMAGENET_STD, Dinov2Encoder, build_encoder

FIXTURES = Path(__file__).parent / "fixtures" / "released"
REG4, NOREG = FIXTURES / "dinov2_tiny_reg4_pretrain.pth", FIXTURES / "dinov2_tiny_pretrain.pth"
TOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "dinov2_outputs.safetensors"))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(("name", "file", "sizes"), [("reg4", REG4, ("native", "resized")),
                                                      ("noreg", NOREG, ("native",))])
def test_released_dinov2_hub_file_matches_the_release(golden, name, file, sizes) -> None:
    """Every token the release computes ([cls], registers, patches), at the native grid and (with registers)
    at an interpolated one, from the hub file read weights-only."""
    model = load_hub_dinov2(file)
    registers = 4 if name == "reg4" else 0
    assert getattr(model.config, "num_register_tokens", 0) == registers
    for size in sizes:
        with torch.no_grad():
            seq = model(_normalise(golden[f"images_{size}"])).last_hidden_state  # (B, 1 + R + N, D)
        cls, reg, patch = seq[:, 0], seq[:, 1:1 + registers], seq[:, 1 + registers:]
        assert patch.shape == golden[f"{name}_{size}_patch"].shape
        for part, got in (("cls", cls), ("registers", reg), ("patch", patch)):
            want = golden[f"{name}_{size}_{part}"]
            assert got.shape == want.shape, (name, size, part)
            diff = (got - want).abs().max().item() if want.numel() else 0.0
            print(f"dinov2 {name} {size} {part}: max abs diff {diff:.2e}")
            assert diff < TOL, (name, size, part, diff)


def test_released_dinov2_hub_file_is_an_encoder(golden, tmp_path) -> None:
    """Wherever a DINOv2 encoder is accepted: the adapter on the .pth gives the release's [cls] as z, its spec
    rebuilds it, and a saved-and-reloaded tokenizer's checksum sees the same weights."""
    enc = Dinov2Encoder(REG4, image_size=56)
    assert enc.image_size == 56 and enc.patch == 14
    z = enc(golden["images_native"])  # (B, D), images in [0, 1]
    assert (z - golden["reg4_native_cls"]).abs().max().item() < TOL
    again = build_encoder(enc.spec())
    assert torch.equal(again(golden["images_native"]), z)
    z70 = Dinov2Encoder(REG4, image_size=70)(golden["images_resized"])  # 5 x 5 grid: interpolated positions
    assert (z70 - golden["reg4_resized_cls"]).abs().max().item() < TOL
    assert Dinov2Encoder(REG4).image_size == 56  # the native size when none is asked for


def test_released_dinov2_hub_config_is_read_from_shapes() -> None:
    state = torch.load(REG4, weights_only=True)
    cfg = hub_config(state)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["patch_size"],
            cfg["image_size"], cfg["num_register_tokens"], cfg["mlp_ratio"]) == (64, 2, 1, 14, 56, 4, 2)


def test_released_dinov2_foreign_pth_is_one_line(tmp_path) -> None:
    """A weights file that is not a DINOv2 hub state dict is named, not half-loaded."""
    bad = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(UnisslError, match="not a DINOv2 torch-hub state dict"):
        Dinov2Encoder(bad)


def test_released_dinov2_hub_file_in_a_saved_tokenizer(golden, tmp_path) -> None:
    """A tokenizer built on the hub file saves the backbone inside itself and reloads to the same token."""
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    cfg = RepTokConfig(encoder={"kind": "dinov2", "path": str(REG4), "image_size": 56}, image_size=16, channels=3,
                       decoder="tiny")
    tok = RepTokTokenizer(cfg)
    z = tok.encode(golden["images_native"])
    assert (z - golden["reg4_native_cls"]).abs().max().item() < TOL
    tok.save_pretrained(tmp_path / "tok")
    again = RepTokTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(golden["images_native"]), z)
