"""The RepTok tokenizer commands end to end on a tiny dataset, the eval extractor, and interpolation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unissl.cli import main
from unissl.methods.reptok.interpolation import lerp, slerp


def test_slerp_and_lerp() -> None:
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    w = torch.linspace(0, 1, 5)
    s = slerp(a, b, w)
    assert torch.allclose(s[0], a) and torch.allclose(s[-1], b)
    assert torch.allclose(s.norm(dim=1), torch.full((5,), 2.0), atol=1e-5)  # stays on the circle
    assert torch.allclose(s[2], torch.tensor([math.sqrt(2), math.sqrt(2)]), atol=1e-5)
    assert torch.allclose(lerp(a, b, w)[2], torch.tensor([1.0, 1.0]))
    assert torch.allclose(slerp(a, 3 * a, w), lerp(a, 3 * a, w))  # parallel: falls back to lerp


def test_train_reconstruct_interpolate_and_extractor(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    rc = main(["train", "reptok-tokenizer", "--encoder", "random", "--dataset", "digits", "--image-size", "16",
               "--limit", "64", "--decoder", "tiny", "--cos-weight", "0.5", "--train.steps", "3",
               "--train.global-batch", "16", "--train.warmup-steps", "1", "--train.run-dir", str(run),
               "--no-train.progress", "--no-train.tensorboard", "--train.device", "cpu"])
    assert rc == 0
    tok_dir = run / "tokenizer"
    cfg = json.loads((tok_dir / "config.json").read_text())["config"]
    assert cfg["cos_weight"] == 0.5 and cfg["image_size"] == 16 and cfg["encoder"]["kind"] == "random"
    assert (run / "config.yaml").is_file()

    out = tmp_path / "rec"
    assert main(["reconstruct", "--tokenizer", str(tok_dir), "--dataset", "digits", "--num-images", "20",
                 "--show", "4", "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "grid.png").is_file() and (out / "pairs.npz").is_file()
    assert math.isfinite(metrics["PSNR"]) and 0 < metrics["PSNR"] < 60 and -1 <= metrics["SSIM"] <= 1
    # PSNR agrees with the reported MSE (both over [0, 1] images; PSNR is per image, so compare loosely)
    assert abs(metrics["PSNR"] - 10 * math.log10(1 / metrics["mse"])) < 3

    # With a domain classifier: rFD and the share of reconstructions that keep the original's class;
    # a decoder that returned the input exactly would keep all of them.
    clf = tmp_path / "clf"
    assert main(["eval", "train-extractor", "--dataset", "digits", "--image-size", "16", "--out", str(clf),
                 "--epochs", "1", "--run-dir", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    args = ["reconstruct", "--tokenizer", str(tok_dir), "--dataset", "digits", "--num-images", "20", "--show", "0",
            "--steps", "2", "--device", "cpu", "--extractor", f"domain:{clf}"]
    assert main(args + ["--out", str(tmp_path / "rec-clf")]) == 0
    m = json.loads((tmp_path / "rec-clf" / "metrics.json").read_text())
    assert 0.0 <= m["class_agreement"] <= 1.0 and math.isfinite(m["rFD"])
    from unissl.methods.reptok.tokenizer import RepTokTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RepTokTokenizer, "reconstruct", lambda self, x, **kw: x)
        assert main(args + ["--out", str(tmp_path / "rec-id")]) == 0
    m = json.loads((tmp_path / "rec-id" / "metrics.json").read_text())
    assert m["class_agreement"] == 1.0 and m["mse"] == 0.0 and abs(m["rFD"]) < 1e-6

    strip = tmp_path / "strip.png"
    assert main(["interpolate", "--tokenizer", str(tok_dir), "--dataset", "digits", "--points", "3",
                 "--steps", "2", "--device", "cpu", "--out", str(strip)]) == 0
    from PIL import Image

    assert Image.open(strip).size == ((5 * 18 + 2) * 2, (18 + 2) * 2)  # one row: A, 3 points, B (scale 2)

    from unissl.eval.features import load_extractor
    from unissl.methods.reptok.tokenizer import RepTokTokenizer

    ext = load_extractor(f"reptok:{tok_dir}", "cpu")
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(ext.features(x), RepTokTokenizer.from_pretrained(tok_dir).encode(x))
    assert ext.input_size == 16 and "reptok(" in ext.identity()


def test_missing_encoder_path_is_a_one_line_error(capsys) -> None:
    assert main(["train", "reptok-tokenizer", "--encoder", "dinov2"]) == 2
    err = capsys.readouterr().err
    assert "--encoder-path" in err and len(err.strip().splitlines()) == 1


def test_online_psnr_and_rfd_are_logged_at_every_checkpoint(tmp_path):
    """--online-domain: online/psnr and online/rFD_domain at each checkpoint; the last ones equal the PSNR and
    the Frechet distance computed afterwards from the saved tokenizer on the same images and decoder noise."""
    import json

    from unissl.data import build_dataset
    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, DomainExtractor, save_classifier
    from unissl.eval.features import features_of
    from unissl.eval.frechet import frechet_distance_stats, gaussian_stats
    from unissl.eval.generation import quantize_uint8
    from unissl.eval.online import _subset
    from unissl.methods.reptok.tokenizer import load_reptok_tokenizer
    from unissl.utils.images import psnr

    torch.manual_seed(0)
    judge = DomainClassifier(DomainClassifierConfig(image_size=8, widths=[4, 8], feature_dim=8))
    save_classifier(judge, tmp_path / "clf")
    run = tmp_path / "run"
    assert main(["train", "reptok-tokenizer", "--encoder", "random", "--dataset", "digits", "--image-size", "16",
                 "--limit", "64", "--decoder", "tiny", "--train.steps", "4", "--train.ckpt-every", "2",
                 "--train.global-batch", "16", "--train.warmup-steps", "1", "--train.run-dir", str(run),
                 "--online-domain", str(tmp_path / "clf"), "--online-eval-items", "40", "--no-train.progress",
                 "--no-train.tensorboard", "--train.device", "cpu"]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    online = [r for r in logs if "online/psnr" in r]
    assert [r["step"] for r in online] == [2, 4]
    assert all(0 < r["online/psnr"] < 100 and r["online/rFD_domain"] >= 0 and r["online/seconds"] > 0
               for r in online)
    tok = load_reptok_tokenizer(run / "tokenizer").eval()
    test = build_dataset("digits", "test", image_size=16)
    x = test.__getitems__(_subset(len(test), 40, 0))["image"]
    with torch.no_grad():
        rec = tok.reconstruct(x, steps=25, generator=torch.Generator().manual_seed(0))
    extractor = DomainExtractor(judge.eval(), "clf", torch.device("cpu"))

    def stats(images):  # the judge's features of uint8 images resized to its 8x8 input
        return gaussian_stats(features_of(extractor, quantize_uint8(images)))

    assert online[-1]["online/psnr"] == pytest.approx(float(psnr(rec, x).mean()), abs=1e-4)
    assert online[-1]["online/rFD_domain"] == pytest.approx(frechet_distance_stats(stats(rec.clamp(0, 1)), stats(x)),
                                                            rel=1e-4, abs=1e-6)


def test_interpolate_reads_an_image_file_as_the_folder_dataset_does(tmp_path) -> None:
    """`interpolate --image-a FILE` decodes a file exactly as the folder dataset decodes the same file
    (resize of the shorter side, centre crop, grey), so a path and a dataset item give the same pixels."""
    import numpy as np
    from PIL import Image

    from unissl.commands.interpolate import load_image
    from unissl.data.folder import load_folder

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "a").mkdir(parents=True)
    path = tmp_path / "data" / "a" / "x.png"
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(path)  # not square, RGB
    from_file = load_image(path, channels=1, size=16)
    from_folder = load_folder(tmp_path / "data", "train", image_size=16, channels=1).__getitems__([0])["image"]
    assert from_file.shape == (1, 1, 16, 16)
    assert torch.equal(from_file, from_folder.float())
    with pytest.raises(Exception, match="not found"):
        load_image(tmp_path / "missing.png", 1, 16)
