"""SSL encoder adapters: one trainable [cls], frozen backbone in eval mode, z matches the backbone's own."""

from __future__ import annotations

import pytest
import torch

from unissl.commands.train_reptok_tokenizer import Config
from unissl.config import flag_of
from unissl.errors import ConfigError, UnisslError
from unissl.methods.reptok.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dinov2Encoder,
    RandomViTEncoder,
    build_encoder,
    to_square,
)
from unissl.methods.reptok.tiny import save_random_dinov2

transformers = pytest.importorskip("transformers")


def save_tiny_dinov2(path, registers: int = 0) -> None:
    """A tiny randomly initialised DINOv2 (patch 4, 28 px, dropout 0.5 so eval mode matters)."""
    save_random_dinov2(path, registers=registers, dropout=0.5)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2")
    save_tiny_dinov2(path)
    return path


def _trainable(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2_adapter_matches_the_model_and_trains_only_cls(tmp_path, registers: int) -> None:
    save_tiny_dinov2(tmp_path, registers)
    enc = Dinov2Encoder(tmp_path)
    assert type(enc.backbone).__name__ == ("Dinov2WithRegistersModel" if registers else "Dinov2Model")
    assert enc.image_size == 28 and enc.dim == 32
    assert _trainable(enc) == ["cls"]
    enc.train()
    assert enc.training and not enc.backbone.training and not any(m.training for m in enc.backbone.modules())

    images = torch.rand(3, 1, 28, 28)  # grey: repeated to RGB, ImageNet-normalised
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = enc.backbone((images.repeat(1, 3, 1, 1) - mean) / std).pooler_output
    z = enc(images)
    assert torch.allclose(z, ref, atol=1e-5)  # deterministic: dropout is off
    assert torch.allclose(enc.frozen(images), ref, atol=1e-5)
    # z is after the final layernorm: each token has zero mean / unit variance before the affine
    ln = enc.backbone.layernorm
    assert torch.allclose(((z - ln.bias) / ln.weight).mean(-1), torch.zeros(3), atol=1e-4)

    # gradients reach the cls parameter through the frozen blocks, and nothing else
    (z ** 2).sum().backward()
    assert enc.cls.grad is not None and enc.cls.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.backbone.parameters())
    # changing cls changes z but not z_frozen
    with torch.no_grad():
        enc.cls.add_(torch.randn_like(enc.cls))
    assert not torch.allclose(enc(images), ref, atol=1e-3)
    assert torch.allclose(enc.frozen(images), ref, atol=1e-5)


def test_dinov2_resizes_to_a_multiple_of_the_patch(dino_dir) -> None:
    enc = Dinov2Encoder(dino_dir, image_size=29)
    assert enc.image_size == 28  # rounded to a multiple of patch 4
    big = torch.rand(2, 3, 56, 64)  # non-square RGB: centre crop then resize
    x = to_square(big, 28)
    assert x.shape == (2, 3, 28, 28)
    assert enc(big).shape == (2, 32)


def test_dinov2_missing_directory_says_how_to_supply_weights(tmp_path) -> None:
    """The error names the setting (``encoder_path``), which the CLI shows as ``train reptok-tokenizer``'s flag."""
    with pytest.raises(ConfigError, match="no config.json; download the weights") as info:
        Dinov2Encoder(tmp_path / "nope")
    assert info.value.path == "encoder_path" and flag_of(Config, info.value.path) == "--encoder-path"


def test_random_vit_is_seeded_frozen_and_has_one_trainable_parameter() -> None:
    a = RandomViTEncoder(image_size=28, dim=32, depth=2, heads=2, patch=4, seed=1)
    b = build_encoder(a.spec())
    c = RandomViTEncoder(image_size=28, dim=32, depth=2, heads=2, patch=4, seed=2)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert _trainable(a) == ["cls"]
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x)) and not torch.allclose(a(x), c(x))
    assert torch.allclose(a(x), a.frozen(x))
    # not a(x).sum(): the sum of a LayerNorm output (unit weight, zero bias) is 0 for any input, so its gradient
    # is rounding noise, exactly 0 for some draws of x (the test failed now and then)
    (a(x) * torch.linspace(-1, 1, a(x).shape[1])).sum().backward()
    assert a.cls.grad.abs().sum() > 0 and all(p.grad is None for p in a.backbone.parameters())


def test_unknown_encoder_kind() -> None:
    with pytest.raises(UnisslError, match="dinov2"):
        build_encoder({"kind": "mae"})


def make_tiny_sorcen_run(root) -> str:
    """A Sorcen run directory (sorcen.json + checkpoint) over a tiny random VQ tokenizer (16 px, 4x4 ids)."""
    import dataclasses

    from unissl.engine import save_checkpoint
    from unissl.methods.sorcen import PRESETS, SorcenConfig, build_method
    from unissl.methods.sorcen.run import write_run_info
    from unissl.tokenizers.vq import VQConfig, VQTokenizer

    torch.manual_seed(0)
    vq = VQTokenizer(VQConfig(image_size=16, channels=1, ch=8, ch_mult=(1, 2, 2), codebook_size=16, code_dim=8))
    vq.save_pretrained(root / "vq")
    arch = dataclasses.replace(PRESETS["tiny"], codebook_size=16, grid=tuple(vq.grid))
    method = build_method(arch, "sorcen", SorcenConfig(), num_classes=0)
    save_checkpoint(root / "run", 1, method.state_dict(), {})
    write_run_info(root / "run", arch, "sorcen", SorcenConfig(), 0, [], None, str(root / "vq"))
    return str(root / "run")


def test_sorcen_adapter_trains_only_the_class_slot_embedding(tmp_path) -> None:
    from unissl.methods.reptok.encoders import SorcenEncoder

    enc = SorcenEncoder(make_tiny_sorcen_run(tmp_path))
    assert _trainable(enc) == ["cls"] and enc.dim == enc.backbone.arch.dim
    enc.train()
    assert not enc.backbone.training and not enc.vq.training
    images = torch.rand(3, 1, 16, 16)
    ids = enc.vq.encode(images)
    ref = enc.backbone.encode(ids)[:, 0]  # the model's own class output after the final norm
    assert torch.allclose(enc(images), ref, atol=1e-5) and torch.allclose(enc.frozen(images), ref, atol=1e-5)
    enc(images).square().sum().backward()
    assert enc.cls.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.backbone.parameters()) and all(p.grad is None for p in enc.vq.parameters())
    with torch.no_grad():
        enc.cls.add_(torch.randn_like(enc.cls))
    assert not torch.allclose(enc(images), ref, atol=1e-3) and torch.allclose(enc.frozen(images), ref, atol=1e-5)
    # larger inputs are resized to the VQ tokenizer's size
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, enc.dim)
    with pytest.raises(UnisslError, match="train sorcen"):
        SorcenEncoder(tmp_path / "missing")
