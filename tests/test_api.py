"""The README's Python examples run as written, on tiny runs created under the names they use."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from unissl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN = ["--no-train.progress", "--no-train.tensorboard", "--train.num-workers", "0", "--train.warmup-steps", "0"]
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The main job's model paths (runs/fashion-mnist-quick/...), tiny: 28x28 models trained a few steps on
    digits resized to 28 px (fast), so that the README's code runs on real Fashion-MNIST test images."""
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("api")
    job = root / "runs" / "fashion-mnist-quick"
    torch.manual_seed(0)
    VQTokenizer(dataclasses.replace(preset("fmnist"), codebook_size=64)).save_pretrained(job / "vq")
    assert main(["tokenize", "--tokenizer", str(job / "vq"), "--out", str(job / "tokens"), "--dataset", "digits",
                 "--image-size", "28", "--splits", "train", "--no-progress"]) == 0
    assert main(["train", "sorcen", "--tokens", str(job / "tokens"), "--preset", "tiny",
                 "--train.steps", "2", "--train.global-batch", "32", "--train.run-dir", str(job / "sorcen"),
                 *TRAIN]) == 0
    assert main(["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", str(job / "sorcen"),
                 "--dataset", "digits", "--image-size", "28", "--limit", "64", "--decoder", "tiny",
                 "--train.steps", "2", "--train.global-batch", "16", "--train.run-dir", str(job / "reptok-tokenizer"),
                 *TRAIN]) == 0
    import json

    # the README samples Fashion-MNIST class names: give the digits generators those names
    for name, extra in (("reptok-generator", []), ("reptok-text-generator", ["--conditioning", "text"])):
        assert main(["train", "reptok-generator", "--tokenizer", str(job / "reptok-tokenizer" / "tokenizer"),
                     "--dataset", "digits", "--preset", "tiny", "--samples-per-class", "0", "--train.steps", "2",
                     "--train.global-batch", "32", "--train.run-dir", str(job / name), *extra, *TRAIN]) == 0
        cfg_file = job / name / "generator" / "config.json"
        cfg = json.loads(cfg_file.read_text())
        (cfg["config"] if isinstance(cfg.get("config"), dict) else cfg)["classes"] = FMNIST_CLASSES  # saved format 1 or 0
        cfg_file.write_text(json.dumps(cfg))
    return root


def readme_blocks() -> list[str]:
    text = README.read_text()
    api = text[text.index("## Python API"):text.index("## Commands")]
    return re.findall(r"```python\n(.*?)```", api, flags=re.S)


def test_the_readme_has_the_four_examples():
    blocks = readme_blocks()
    assert len(blocks) == 4 and all(b.startswith("import unissl\n") and len(b.strip().splitlines()) <= 6
                                    for b in blocks)
    assert all("runs/fashion-mnist-quick/" in b for b in blocks)  # the main job's own outputs


@pytest.mark.slow
@pytest.mark.parametrize("index", range(4))
def test_readme_example_runs(runs, monkeypatch, index):
    monkeypatch.chdir(runs)
    scope: dict = {}
    exec(compile(readme_blocks()[index], f"README example {index + 1}", "exec"), scope)
    if "images" in scope:  # real Fashion-MNIST test images, as the README says
        assert scope["images"].shape == (8, 1, 28, 28) and scope["images"].std() > 0.1
    if "feats" in scope:
        assert scope["feats"].shape == (8, 32)
        # the same numbers as the evaluation's feature extractor
        from unissl.eval.features import load_extractor

        ext = load_extractor("sorcen:runs/fashion-mnist-quick/sorcen", torch.device("cpu"))
        torch.testing.assert_close(scope["feats"], ext.features(scope["images"]))
    if "samples" in scope:
        assert scope["samples"].shape == (16, 1, 28, 28) and 0 <= scope["samples"].min() <= scope["samples"].max() <= 1
    if "rec" in scope:
        assert scope["z"].shape == (8, 32) and scope["rec"].shape == (8, 1, 28, 28)
        assert scope["strip"].shape == (5, 1, 28, 28)
    if "bags" in scope:
        assert scope["bags"].shape == (8, 1, 28, 28) and scope["boots"].shape == (4, 1, 28, 28)


def test_api_errors_are_one_line(runs, monkeypatch):
    import unissl

    monkeypatch.chdir(runs)
    with pytest.raises(unissl.UnisslError, match="sorcen.json not found"):
        unissl.load_sorcen("runs/nowhere")
    gen = unissl.load_generator("runs/fashion-mnist-quick/reptok-generator")
    with pytest.raises(unissl.UnisslError, match="class-conditional"):
        gen.sample(prompts=["a bag"])
    with pytest.raises(unissl.UnisslError, match="unknown class"):
        gen.sample(classes=["Giraffe"])
