"""The API checks its inputs (unissl.api.check_images): unambiguous conversions give exactly the features of the
converted input; everything else is one UnisslError line naming what is wrong (before, 0-255 floats, uint8,
normalised images, RGBA and other sizes were silently accepted and gave different features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_reptok_encoders import make_tiny_sorcen_run

import unissl
from unissl.errors import UnisslError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    root = tmp_path_factory.mktemp("api_inputs")
    run = make_tiny_sorcen_run(root)  # 1-channel 16 px
    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 16, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=16, channels=1, decoder="tiny",
                                 patch_size=4)).save_pretrained(root / "tok")
    return unissl.load_sorcen(run, device="cpu"), unissl.load_reptok(Path(root / "tok"), device="cpu")


def test_unambiguous_conversions_give_the_converted_inputs_results(models) -> None:
    enc, tok = models
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (4, 1, 16, 16), generator=g, dtype=torch.uint8)
    x = u8.float() / 255
    for fn in (enc.features, tok.encode):
        ref = fn(x)
        assert torch.equal(fn(u8), ref)  # uint8 0-255 -> /255
        assert torch.equal(fn(x.numpy()), ref)  # a NumPy array
        assert torch.equal(fn(x[0]), ref[:1])  # one image (C, H, W)
        assert torch.allclose(fn(x.expand(-1, 3, -1, -1)), ref, atol=1e-4)  # grey as RGB -> luma (weights sum to 1)
        big = torch.nn.functional.interpolate(x, size=32, mode="nearest")
        with pytest.raises(UnisslError, match=r"takes 16x16 images, got 32x32; .*resize=True"):
            fn(big)
        assert fn(big, resize=True).shape == ref.shape  # documented: centre crop + antialiased bilinear


@pytest.mark.parametrize("bad, match", [
    (lambda x: x * 255, r"values in \[[\d.]+, 255\]; they look like 0-255 values: divide by 255"),
    (lambda x: x * 2 - 1, r"look normalised"),
    (lambda x: (x * 255).long(), r"expected float images in \[0, 1\] or uint8 in 0-255, got torch.int64"),
    (lambda x: x.masked_fill(x > 0.5, float("nan")), r"NaN or Inf"),
    (lambda x: torch.cat([x, x, x, x], dim=1), r"takes 1-channel images, got 4 channels"),
    (lambda x: x[0, 0], r"expected images \(B, C, H, W\) or one image \(C, H, W\), got shape \(16, 16\)"),
    (lambda x: x.tolist(), r"expected a torch.Tensor"),
])
def test_bad_images_are_one_line(models, bad, match) -> None:
    enc, tok = models
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for fn in (enc.features, tok.encode):
        with pytest.raises(UnisslError, match=match) as info:
            fn(bad(x))
        assert "\n" not in str(info.value)


def test_tokens_and_interpolation_arguments_are_checked(models) -> None:
    _, tok = models
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    z = tok.encode(x)
    with pytest.raises(UnisslError, match=r"decode\(z\): expected float tokens \(B, 16\)"):
        tok.decode(z[:, :8])
    with pytest.raises(UnisslError, match="NaN or Inf"):
        tok.decode(z * float("nan"))
    with pytest.raises(UnisslError, match="one image each"):
        tok.interpolate(x, x[:1])
    assert tok.interpolate(x[0], x[1], points=3, steps=2).shape == (3, 1, 16, 16)


def test_a_tokenizer_given_one_image_says_so_instead_of_printing_a_question_mark(models) -> None:
    enc, _ = models
    with pytest.raises(UnisslError) as info:
        enc.tokenizer.encode(torch.rand(1, 16, 16))
    assert "?" not in str(info.value) and "images[None]" in str(info.value)
    assert np.isfinite(enc.features(torch.rand(1, 16, 16)).numpy()).all()
