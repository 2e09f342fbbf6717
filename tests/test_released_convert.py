"""``unissl convert reptok`` on a checkpoint CompVis/RepTok's own trainer wrote.

``tests/fixtures/released/reptok_tiny_released.ckpt`` is a Lightning checkpoint of the release's
``TrainerModuleLatentFlow`` at CPU sizes (``tools/released/reptok_checkpoint.py``: built by the release, saved
by ``Trainer.save_checkpoint``, reloaded by the release with ``strict=True``), with OmegaConf hyperparameters;
``reptok_tiny_released_outputs.safetensors`` holds the release's own token, 50-step decode and guided samples
for fixed inputs. The converted directories must reproduce them and run through the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from unissl.cli import main
from unissl.errors import UnisslError
from unissl.methods.reptok.convert_released import (
    ConvertOptions,
    convert_released_checkpoint,
    read_released_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "released"
CKPT = FIXTURES / "reptok_tiny_released.ckpt"
TINY = ["--encoder-size", "28", "--vae-norm-groups", "4"]  # what the tiny checkpoint does not record
TOL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reptok_tiny_released_outputs.safetensors"))


@pytest.fixture(scope="module")
def converted_fp32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("released") / "fp32"
    convert_released_checkpoint(CKPT, out, ConvertOptions(encoder_size=28, vae_norm_groups=4, encoder_dtype="float32"))
    return out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_released_checkpoint_hyperparameters_are_read_without_omegaconf() -> None:
    """The OmegaConf DictConfigs / ListConfigs of the checkpoint become plain dicts / lists (omegaconf is not
    imported)."""
    state, hp = read_released_checkpoint(CKPT)
    assert hp["first_stage_cfg"]["params"]["scale_factor"] == 1.7
    assert hp["flow_cfg"]["params"]["net_cfg"]["params"]["num_classes"] == 10
    assert hp["sample_kwargs"]["t_interval"] == [0.3, 0.9]  # a ListConfig (its int type pickled as __builtin__.long)
    assert any(k.startswith("ema_model.net.mixer._orig_mod.") for k in state)
    assert state["first_stage.encoder.encoder.cls_token"].dtype == torch.bfloat16


def test_released_convert_reproduces_the_release(golden, converted_fp32) -> None:
    """Token (fp32, the release's resize), 50-step decode from the release's noise, guided EMA samples and their
    decode: the release's own outputs within 1e-5."""
    from unissl.methods.reptok.generator import TokenGeneratorMethod
    from unissl.methods.reptok.sampling import SamplingConfig, sample_tokens
    from unissl.methods.reptok.tokenizer import RepTokTokenizer

    tok = RepTokTokenizer.from_pretrained(converted_fp32 / "tokenizer")
    images = (golden["input/images"] + 1) / 2  # the release takes [-1, 1]
    diffs = {"token": _diff(tok.encode(images), golden["out/token"])}
    rec = tok.decode(golden["out/token"], steps=50, noise=golden["input/noise"])
    diffs["decode"] = _diff(rec, ((golden["out/decode"] + 1) / 2).clamp(0, 1))
    gen = TokenGeneratorMethod.from_pretrained(converted_fp32 / "generator")
    cfg = SamplingConfig(steps=50, cfg_scale=1.5, cfg_interval=(0.3, 0.9))
    z = sample_tokens(gen, {"label": golden["input/labels"]}, cfg, noise=golden["input/token_noise"][:, 0])
    diffs["sample_tokens"] = _diff(z, golden["out/sample_tokens"])
    samples = tok.decode(z, steps=50, noise=golden["input/noise"])
    diffs["sample_images"] = _diff(samples, ((golden["out/sample_images"] + 1) / 2).clamp(0, 1))
    print("released convert max abs diffs:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert all(v < TOL for v in diffs.values()), diffs
    assert gen.z_std.item() == pytest.approx(1.7) and not gen.z_mean.any()


def _image_folder(root: Path, golden: dict[str, torch.Tensor]) -> Path:
    for i, img in enumerate(((golden["input/images"] + 1) / 2 * 255).round().to(torch.uint8)):
        (root / "test" / f"c{i}").mkdir(parents=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / "test" / f"c{i}" / "0.png")
    return root


def test_released_convert_cli_then_reconstruct_and_sample(golden, tmp_path, capsys) -> None:
    """The command users find in `unissl --help`; its directories run `reconstruct` and `sample reptok`."""
    out = tmp_path / "converted"
    assert main(["convert", "reptok", "--ckpt", str(CKPT), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer ->" in printed and "generator ->" in printed and "bfloat16" in printed, printed
    data = _image_folder(tmp_path / "images", golden)
    rec_dir, sample_dir = tmp_path / "rec", tmp_path / "samples"
    assert main(["reconstruct", "--tokenizer", str(out / "tokenizer"), "--dataset", "folder", "--data-dir",
                 str(data), "--num-images", "2", "--show", "2", "--out", str(rec_dir)]) == 0
    assert main(["sample", "reptok", "--checkpoint", str(out / "generator"), "--class", "3", "7", "--n", "2",
                 "--out", str(sample_dir)]) == 0
    pngs = sorted(rec_dir.glob("*.png")) + sorted(sample_dir.glob("*.png"))
    assert len(pngs) >= 2, pngs
    for p in pngs:
        arr = np.asarray(Image.open(p))
        assert arr.size and arr.std() > 0, p  # real images, not blank
    print("reconstruct / sample PNGs:", [str(p) for p in pngs])


class Evil:
    """A pickle payload: unpickling it would run os.system."""

    def __reduce__(self):  # noqa: D105
        return (os.system, ("touch " + str(Evil.marker),))

    marker = Path("/nonexistent")


@pytest.mark.parametrize("payload", ["system", "class"])
def test_released_convert_refuses_code_in_one_line(tmp_path, capsys, payload) -> None:
    """A checkpoint whose pickle names os.system (via __reduce__) or a project class is refused in one line
    naming the global; nothing is imported or run, nothing is written."""
    Evil.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    obj = Evil() if payload == "system" else torch.nn.Linear(1, 1)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"x": obj}}, bad)
    out = tmp_path / "out"
    assert main(["convert", "reptok", "--ckpt", str(bad), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "refused" in err[0], err
    assert ("system" in err[0]) if payload == "system" else ("torch.nn.modules.linear.Linear" in err[0])
    print("refused:", err[0])
    assert not Evil.marker.exists() and not out.exists()
    with pytest.raises(UnisslError, match="refused"):
        read_released_checkpoint(bad)


def test_released_convert_damaged_checkpoint_is_one_line(tmp_path, capsys) -> None:
    """A truncated checkpoint or a file that is no torch archive: one line naming it, nothing written."""
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(CKPT.read_bytes()[: CKPT.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    for bad in (cut, text):
        out = tmp_path / f"out-{bad.stem}"
        assert main(["convert", "reptok", "--ckpt", str(bad), "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0], err
        assert not out.exists()
