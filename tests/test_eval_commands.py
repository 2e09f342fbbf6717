"""The ``unissl eval`` commands end to end on the small digits dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unissl.cli import main
from unissl.data import build_dataset
from unissl.eval.domain import load_classifier
from unissl.eval.features import load_extractor
from unissl.eval.generation import class_consistency


def _result(run_dir, name):
    return json.loads((run_dir / "results" / f"{name}.json").read_text())


def test_probe_knn_fewshot_transfer_commands(tmp_path) -> None:
    run = tmp_path / "run"
    common = ["--dataset", "digits", "--run-dir", str(run)]
    assert main(["eval", "linear-probe", *common, "--probe.epochs", "10", "--probe.lrs", "0.03", "0.3"]) == 0
    probe = _result(run, "linear_probe-pixels-digits")
    assert probe["metrics"]["top1"] > 88.0 and len(probe["extra"]["grid_val_top1"]) == 2
    assert main(["eval", "knn", *common]) == 0
    assert _result(run, "knn-pixels-digits")["metrics"]["top1"] > 90.0
    assert main(["eval", "few-shot", *common, "--shots", "5", "--seeds", "0", "1", "--probe.lrs", "0.3",
                 "--min-steps", "50", "--probe.epochs", "5"]) == 0
    fs = _result(run, "few_shot-pixels-digits")["metrics"]
    assert 50.0 < fs["5shot_top1"] <= 100.0 and fs["5shot_std"] >= 0.0
    assert main(["eval", "transfer", "--extractor", "pixels:16", *common, "--source", "fashion-mnist",
                 "--probe.epochs", "5", "--probe.lrs", "0.3"]) == 0
    tr = _result(run, "transfer-pixels-digits")
    assert tr["extra"]["feature_dim"] == 256 and tr["metrics"]["knn_top1"] > 85.0
    table = (run / "results.md").read_text()
    assert table.count("\n| 20") == 4
    assert len(list((run / "feature_cache").glob("*.features.safetensors"))) == 4  # 2 extractors x 2 splits


def test_domain_classifier_generation_and_reconstruction(tmp_path) -> None:
    run, clf = tmp_path / "run", tmp_path / "clf"
    assert main(["eval", "train-extractor", "--dataset", "digits", "--out", str(clf), "--epochs", "4",
                 "--widths", "8", "16", "--feature-dim", "32", "--batch-size", "64", "--lr", "0.01",
                 "--run-dir", str(run)]) == 0
    model, _ = load_classifier(clf)
    assert model.cfg.classes == [str(d) for d in range(10)] and model.cfg.image_size == 8
    test = build_dataset("digits", "test").__getitems__(list(range(297)))
    train = build_dataset("digits", "train").__getitems__(list(range(1500)))
    x, y = test["image"], test["label"]
    acc = _result(run, "domain_classifier-digits")["metrics"]["test_top1"]
    assert acc > 60.0
    ext = load_extractor(f"domain:{clf}", "cpu")
    # class consistency of real test images with their labels is the classifier's test accuracy
    assert 100.0 * class_consistency(ext, x, y) == pytest.approx(acc)
    g = torch.Generator().manual_seed(0)
    files = {"train": train["image"], "noise": (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)}
    for name, imgs in files.items():
        labels = train["label"] if name == "train" else y
        np.savez(tmp_path / f"{name}.npz", images=(imgs * 255).round().to(torch.uint8).numpy(),
                 labels=labels.numpy())
        assert main(["eval", "generation", "--samples", str(tmp_path / f"{name}.npz"), "--reference", "digits:test",
                     "--extractor", f"domain:{clf}", "--run-dir", str(run), "--pr-k", "3"]) == 0
    real = _result(run, "generation-train")["metrics"]
    per_class = _result(run, "generation-train")["extra"]["class_consistency_per_class"]
    assert list(per_class) == [str(d) for d in range(10)]  # digits' class names, in label order
    counts = np.bincount(train["label"].numpy(), minlength=10)
    # the per-class shares, weighted by how many samples asked for each class, give the overall share
    assert sum(per_class[str(c)] * counts[c] for c in range(10)) / counts.sum() == pytest.approx(
        real["class_consistency"], abs=1e-3)
    noisy = _result(run, "generation-noise")["metrics"]
    assert "FD_domain" in real and "FID" not in real
    assert real["FD_domain"] < noisy["FD_domain"]
    assert real["class_consistency"] > noisy["class_consistency"]
    assert 1.0 <= real["IS"] <= 10.0 and 0.0 <= real["precision"] <= 1.0
    assert len(list((run / "feature_cache").glob("*.stats.safetensors"))) == 1  # reference stats computed once
    # the judge's ceiling is the classifier's accuracy on the real reference split
    assert 100.0 * real["judge_accuracy"] == pytest.approx(acc)
    # the tokenizer's ceiling: real test images with the samples' label counts through the same decoder
    from unissl.eval.ceilings import matching_reference
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    ref = build_dataset("digits", "test")
    idx = matching_reference(ref, y[:40], 40)
    assert sorted(ref.labels[idx].tolist()) == sorted(y[:40].tolist()) and idx.unique().numel() == 40
    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny")).save_pretrained(
        tmp_path / "tok")
    np.savez(tmp_path / "few.npz", images=(x[:40] * 255).round().to(torch.uint8).numpy(), labels=y[:40].numpy())
    assert main(["eval", "generation", "--samples", str(tmp_path / "few.npz"), "--reference", "digits:test",
                 "--extractor", f"domain:{clf}", "--run-dir", str(run), "--name", "ceil", "--ceiling-tokenizer",
                 str(tmp_path / "tok"), "--ceiling-decode-steps", "2"]) == 0
    ceil = _result(run, "ceil")
    m = ceil["metrics"]
    assert ceil["extra"]["ceiling"]["labels_matched"]
    # an untrained decoder returns noise: its ceiling is far below the real images' share and FD
    assert m["ceiling_class_consistency"] < m["class_consistency"] and m["ceiling_FD_domain"] > m["FD_domain"]
    # class-conditional FID compares equal numbers per class: 40 samples with uneven labels are balanced
    present = np.bincount(y[:40].numpy())[np.bincount(y[:40].numpy()) > 0]
    assert present.min() < present.max()  # uneven, so the evaluation balances them
    kept = int(present.min()) * len(present)
    assert ceil["extra"]["balanced_per_class"] == {"kept": kept, "of": 40}
    assert m["num_samples"] == kept and ceil["extra"]["ceiling"]["num_images"] == kept
    # images are scored as uint8: float samples within one of the 256 levels give the same metrics
    from unissl.eval.generation import generation_metrics

    ref = build_dataset("digits", "test")
    q = (x[:60] * 255).round() / 255
    a = generation_metrics(ext, q, ref, "FD_domain", cache_dir=tmp_path / "c", pr_samples=50)
    b = generation_metrics(ext, (q + 0.3 / 255).clamp(0, 1), ref, "FD_domain", cache_dir=tmp_path / "c", pr_samples=50)
    assert a["FD_domain"] == b["FD_domain"]
    np.savez(tmp_path / "pairs.npz", originals=x.numpy(), reconstructions=files["noise"].numpy())
    assert main(["eval", "reconstruction", "--pairs", str(tmp_path / "pairs.npz"), "--extractor",
                 f"domain:{clf}", "--run-dir", str(run)]) == 0
    rec = _result(run, "reconstruction-pairs")["metrics"]
    assert rec["rFD_domain"] > 0 and 0 < rec["SSIM"] < 1 and rec["PSNR"] > 5


def test_user_errors_exit_2_with_one_line(tmp_path, capsys) -> None:
    np.savez(tmp_path / "s.npz", images=np.zeros((20, 1, 8, 8), np.float32))
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    assert main(["eval", "generation", "--samples", str(tmp_path / "s.npz"), "--reference", "digits:test",
                 "--extractor", f"inception:{missing}", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err and "releases/download/fid_weights" in err
    np.savez(tmp_path / "bad.npz", images=np.full((4, 1, 8, 8), 3.0, np.float32))
    assert main(["eval", "generation", "--samples", str(tmp_path / "bad.npz"), "--extractor", "pixels",
                 "--reference", "digits:test", "--run-dir", str(tmp_path)]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert main(["eval", "reconstruction", "--pairs", str(tmp_path / "nope.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "linear-probe", "--extractor", "nope", "--dataset", "digits",
                 "--run-dir", str(tmp_path)]) == 2
    assert "unknown feature extractor" in capsys.readouterr().err


class Evil:
    """What an untrusted checkpoint could smuggle in: an object that unpickling would construct."""


def test_unreadable_weights_are_one_line_everywhere(tmp_path, capsys) -> None:
    """Truncated safetensors, a pickle that would run code and a missing weights file, given to every
    command that reads weights: exit 2, one `unissl: error:` line naming the file, never a traceback."""
    import collections
    import io
    import shutil

    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
    from unissl.tokenizers.vq import VQTokenizer, preset

    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(tmp_path / "vq")
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny")).save_pretrained(tmp_path / "rt")
    assert main(["eval", "train-extractor", "--dataset", "digits", "--out", str(tmp_path / "clf"), "--epochs", "1",
                 "--widths", "4", "4", "--feature-dim", "8", "--run-dir", str(tmp_path / "ev")]) == 0

    buf = io.BytesIO()
    torch.save({"model": collections.OrderedDict(w=Evil())}, buf)
    code_pickle = buf.getvalue()
    cases = []
    for damage in ("truncate", "missing"):
        for folder, fname, argv in (
                ("vq", "model.safetensors", ["tokenize", "--tokenizer", "{d}", "--dataset", "digits", "--out",
                                             str(tmp_path / "tok-out")]),
                ("rt", "model.safetensors", ["reconstruct", "--tokenizer", "{d}", "--dataset", "digits",
                                             "--num-images", "4", "--out", str(tmp_path / "rec")]),
                ("clf", "model.safetensors", ["eval", "knn", "--extractor", "domain:{d}", "--dataset", "digits",
                                              "--run-dir", str(tmp_path / "ev2")])):
            cases.append((folder, fname, damage, argv))
    for folder, fname, damage, argv in cases:
        d = tmp_path / f"{folder}-{damage}"
        shutil.copytree(tmp_path / folder, d)
        f = d / fname
        if damage == "truncate":
            f.write_bytes(f.read_bytes()[:100])
        else:
            f.unlink()
        capsys.readouterr()
        assert main([a.replace("{d}", str(d)) for a in argv]) == 2, (folder, damage)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and str(d) in err[0], (folder, damage, err)
    # a pickled object in place of weights (the converter and the taming loader read .pth/.ckpt files)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(code_pickle)
    for argv in (["tokenize", "--tokenizer", str(evil), "--dataset", "digits", "--out", str(tmp_path / "t2")],
                 ["eval", "knn", "--extractor", f"inception:{evil}", "--dataset", "digits",
                  "--run-dir", str(tmp_path / "ev3")]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pickles Python objects" in err[0] and "evil.pth" in err[0], err
