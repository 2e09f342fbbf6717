"""The README's Python examples run as written, on tiny runs created under the names they use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from unissl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN = ["--no-train.progress", "--no-train.tensorboard", "--train.num-workers", "0", "--train.warmup-steps", "0"]
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/sorcen-small, runs/reptok-fmnist/tokenizer and runs/reptok-gen, tiny and on digits."""
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "runs" / "vq")
    assert main(["tokenize", "--tokenizer", str(root / "runs" / "vq"), "--out", str(root / "runs" / "tokens"),
                 "--dataset", "digits", "--splits", "train", "--no-progress"]) == 0
    assert main(["train", "sorcen", "--tokens", str(root / "runs" / "tokens"), "--preset", "tiny",
                 "--train.steps", "2", "--train.global-batch", "32", "--train.run-dir",
                 str(root / "runs" / "sorcen-small"), *TRAIN]) == 0
    assert main(["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path",
                 str(root / "runs" / "sorcen-small"), "--dataset", "digits", "--limit", "64", "--decoder", "tiny",
                 "--train.steps", "2", "--train.global-batch", "16", "--train.run-dir",
                 str(root / "runs" / "reptok-fmnist"), *TRAIN]) == 0
    # the README samples Fashion-MNIST class names: give the digits generator those names
    assert main(["train", "reptok-generator", "--tokenizer", str(root / "runs" / "reptok-fmnist" / "tokenizer"),
                 "--dataset", "digits", "--preset", "tiny", "--samples-per-class", "0", "--train.steps", "2",
                 "--train.global-batch", "32", "--train.run-dir", str(root / "runs" / "reptok-gen"), *TRAIN]) == 0
    import json

    cfg_file = root / "runs" / "reptok-gen" / "generator" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["classes"] = FMNIST_CLASSES
    cfg_file.write_text(json.dumps(cfg))
    return root


def readme_blocks() -> list[str]:
    text = README.read_text()
    api = text[text.index("## Python API"):text.index("## Commands")]
    return re.findall(r"```python\n(.*?)```", api, flags=re.S)


def test_the_readme_has_the_four_examples():
    blocks = readme_blocks()
    assert len(blocks) == 4 and all(b.startswith("import unissl\n") and len(b.strip().splitlines()) <= 4
                                    for b in blocks)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(4))
def test_readme_example_runs(runs, monkeypatch, index):
    monkeypatch.chdir(runs)
    images = torch.rand(3, 1, 8, 8)
    scope: dict = {"images": images}
    exec(compile(readme_blocks()[index], f"README example {index + 1}", "exec"), scope)
    if "feats" in scope:
        assert scope["feats"].shape == (3, 32)
        # the same numbers as the evaluation's feature extractor
        from unissl.eval.features import load_extractor

        ext = load_extractor("sorcen:runs/sorcen-small", torch.device("cpu"))
        torch.testing.assert_close(scope["feats"], ext.features(images))
    if "samples" in scope:
        assert scope["samples"].shape == (16, 1, 8, 8) and 0 <= scope["samples"].min() <= scope["samples"].max() <= 1
    if "rec" in scope:
        assert scope["z"].shape == (3, 32) and scope["rec"].shape == (3, 1, 8, 8)
        assert scope["strip"].shape == (5, 1, 8, 8)
    if "bags" in scope:
        assert scope["bags"].shape == (8, 1, 8, 8)


def test_api_errors_are_one_line(runs, monkeypatch):
    import unissl

    monkeypatch.chdir(runs)
    with pytest.raises(unissl.UnisslError, match="sorcen.json not found"):
        unissl.load_sorcen("runs/nowhere")
    gen = unissl.load_generator("runs/reptok-gen")
    with pytest.raises(unissl.UnisslError, match="class-conditional"):
        gen.sample(prompts=["a bag"])
    with pytest.raises(unissl.UnisslError, match="unknown class"):
        gen.sample(classes=["Giraffe"])
