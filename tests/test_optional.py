"""A missing optional package is one line with the `pip install 'unissl[extra]'` that supplies it (the import
is made to fail with `sys.modules[name] = None`), and every extra a call site names exists in pyproject.toml."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from unissl.errors import UnisslError

ROOT = Path(__file__).resolve().parents[1]


def _block(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_every_extra_named_by_a_call_site_exists() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    calls = [m for p in (ROOT / "src" / "unissl").rglob("*.py")
             for m in re.findall(r'require\(\s*"([\w.]+)",\s*"(\w+)"', p.read_text())]
    assert len(calls) >= 8  # wandb, diffusers x3, transformers x4, huggingface_hub x2
    assert {extra for _, extra in calls} <= extras, calls
    # and no optional package is imported outside require() any more
    direct = [(p.name, line.strip()) for p in (ROOT / "src" / "unissl").rglob("*.py")
              for line in p.read_text().splitlines()
              if re.match(r"\s*(import|from) (transformers|diffusers|wandb|huggingface_hub|sentence_transformers)\b", line)]
    assert direct == []


def test_text_conditioning_without_transformers_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """`train reptok-generator --conditioning text` ended in a 15-line ImportError traceback."""
    from unissl.cli import main
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny",
                                 patch_size=4)).save_pretrained(tmp_path / "tok")
    _block(monkeypatch, "transformers")
    argv = ["train", "reptok-generator", "--tokenizer", str(tmp_path / "tok"), "--dataset", "digits",
            "--preset", "tiny", "--conditioning", "text", "--train.steps", "2", "--train.global-batch", "64",
            "--train.run-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("encode ")]
    assert len(err) == 1 and "pip install 'unissl[text]'" in err[0] and "transformers" in err[0], err


@pytest.mark.parametrize("blocked, extra, call", [
    ("transformers", "text", lambda tmp: __import__("unissl.methods.reptok.text_encoder", fromlist=["x"])
     .FrozenTextEncoder()),
    ("transformers", "hf", lambda tmp: __import__("unissl.methods.reptok.encoders", fromlist=["x"])
     .build_encoder({"kind": "dinov2", "path": str(tmp / "dino")})),
    ("diffusers", "hf", lambda tmp: __import__("unissl.methods.reptok.spaces", fromlist=["x"])
     .load_autoencoder_kl(tmp / "vae")),
    ("wandb", "wandb", lambda tmp: __import__("unissl.engine.logger", fromlist=["x"]).wandb_module()),
    ("huggingface_hub", "hf", lambda tmp: __import__("unissl.utils.hub", fromlist=["x"])
     .resolve_pretrained("someone/model")),
])
def test_each_missing_package_is_one_line_with_its_extra(tmp_path, monkeypatch, blocked, extra, call) -> None:
    for d in ("dino", "vae"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text('{"model_type": "dinov2"}')
    _block(monkeypatch, blocked)
    with pytest.raises(UnisslError) as info:
        call(tmp_path)
    msg = str(info.value)
    assert f"needs the {blocked} package: pip install 'unissl[{extra}]'" in msg and "\n" not in msg, msg
