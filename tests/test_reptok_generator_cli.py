"""End to end: `unissl train reptok-generator` (store built once) and `unissl sample reptok`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unissl.cli import main
from unissl.data.continuous_store import default_store_path, token_stats
from unissl.data.token_store import TokenStore
from unissl.methods.reptok.generator import TokenGeneratorMethod

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A tiny untrained RepTok tokenizer over 8x8 digits (random ViT encoder, tiny pixel decoder)."""
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

    torch.manual_seed(0)
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    tok = RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny", patch_size=4))
    out = tmp_path_factory.mktemp("tok") / "reptok"
    tok.save_pretrained(out)
    return str(out)


def test_train_builds_store_once_then_samples(tokenizer_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--preset", "tiny",
            "--train.steps", "4", "--train.global-batch", "64", "--train.run-dir", str(run_dir),
            "--train.warmup-steps", "0", "--no-train.tensorboard", "--no-train.progress",
            "--samples-per-class", "1", "--decode-steps", "2"]
    assert main(argv) == 0
    store_path = default_store_path(tokenizer_dir, "digits")
    store = TokenStore(store_path, "train")
    assert store.kind == "continuous" and store.dim == 16 and len(store) == 1500
    # the stored statistics are those of the stored tokens, and the generator carries them
    z = np.load(store_path / "train.z.npy")
    stats = token_stats(z)
    np.testing.assert_allclose(store.meta["z_stats"]["mean"], z.mean(0), atol=1e-5)
    assert abs(store.meta["z_stats"]["std"] - np.sqrt(z.var(0).mean())) < 1e-4
    gen = TokenGeneratorMethod.from_pretrained(run_dir)
    torch.testing.assert_close(gen.z_mean, torch.tensor(stats["mean"], dtype=torch.float32))
    assert gen.cfg.classes == [str(i) for i in range(10)]
    assert (run_dir / "samples.png").is_file()
    # a second run reuses the store (no re-encoding)
    mtime = (store_path / "train.z.npy").stat().st_mtime_ns
    argv2 = [a if a != str(run_dir) else str(tmp_path / "run2") for a in argv[:-4]] + ["--samples-per-class", "0"]
    capsys.readouterr()
    assert main(argv2) == 0
    assert "computing the token store" not in capsys.readouterr().out
    assert (store_path / "train.z.npy").stat().st_mtime_ns == mtime

    out = tmp_path / "samples"
    assert main(["sample", "reptok", "--checkpoint", str(run_dir), "--class", "3", "7", "--n", "3", "--sampling.steps", "4",
                 "--sampling.solver", "heun", "--decode-steps", "2", "--out", str(out), "--name", "s"]) == 0
    data = np.load(out / "s.npz")
    assert data["images"].shape == (6, 1, 8, 8) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 3, 3, 7, 7, 7]
    assert (out / "s.png").is_file()


def test_text_conditional_train_and_prompt_sampling(tokenizer_dir, tmp_path, capsys):
    from test_text_encoder import WORDS, save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert", WORDS + [str(i) for i in range(10)])
    run_dir = tmp_path / "run"
    assert main(["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--preset", "tiny",
                 "--conditioning", "text", "--text-encoder", bert, "--train.steps", "3", "--train.global-batch", "64",
                 "--train.run-dir", str(run_dir), "--train.warmup-steps", "0", "--no-train.tensorboard",
                 "--no-train.progress", "--samples-per-class", "0"]) == 0
    gen = TokenGeneratorMethod.from_pretrained(run_dir)
    assert gen.cfg.conditioning == "text" and gen.captions.table.shape == (10, 10)
    out = tmp_path / "s"
    assert main(["sample", "reptok", "--checkpoint", str(run_dir), "--prompt", "a photo of a 3", "a small 7",
                 "--n", "2", "--sampling.steps", "3", "--decode-steps", "2", "--out", str(out), "--name", "p"]) == 0
    data = np.load(out / "p.npz")
    assert data["images"].shape == (4, 1, 8, 8)
    assert data["labels"].tolist() == [3, 3, 7, 7] and data["prompt_index"].tolist() == [0, 0, 1, 1]
    capsys.readouterr()
    assert main(["sample", "reptok", "--checkpoint", str(run_dir), "--class", "3"]) == 2  # text model needs prompts
    assert capsys.readouterr().err == (f"unissl: error: --prompt: {run_dir} is a text-conditional "
                                       "generator: it needs prompts\n")
    # zero-shot evaluation: every held-out template x class, labelled with the class each prompt names
    from unissl.methods.reptok.captions import heldout_prompts

    assert main(["sample", "reptok", "--checkpoint", str(run_dir), "--heldout-prompts", "--n", "1", "--sampling.steps", "2",
                 "--decode-steps", "2", "--out", str(out)]) == 0
    held = heldout_prompts(gen.cfg.classes)
    data = np.load(out / "heldout_cfg1.5_euler2_seed0.npz")
    assert data["labels"].tolist() == [c for _, c in held] and data["prompts"].tolist() == [p for p, _ in held]
    assert main(["sample", "reptok", "--checkpoint", str(run_dir), "--heldout-prompts", "--prompt", "a 3"]) == 2


def test_cli_preset_choices_are_the_registry():
    import dataclasses

    from unissl.commands.train_reptok_generator import Config
    from unissl.methods.reptok.mixer import GENERATOR_PRESETS

    preset = {f.name: f for f in dataclasses.fields(Config)}["preset"]
    assert set(preset.metadata["choices"]) == set(GENERATOR_PRESETS)


def test_cli_errors_are_one_line(tokenizer_dir, tmp_path, capsys):
    assert main(["train", "reptok-generator", "--preset", "tiny"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["sample", "reptok", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a token generator directory" in err and err.count("\n") == 1


def test_exported_ema_of_a_short_run_is_its_trained_weights_not_its_init(tokenizer_dir, tmp_path):
    """The study's trap: 1000 steps at decay 0.999 exported 37% initial weights. Warmed up, the export of a
    40-step run at decay 0.999 sits next to the raw weights and far from the initialisation."""
    from unissl.commands.train_reptok_generator import Config, build_method, open_store
    from unissl.engine.checkpoint import load_checkpoint
    from unissl.utils.seed import seed_everything

    run_dir = tmp_path / "run"
    assert main(["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--preset", "tiny",
                 "--train.steps", "40", "--train.global-batch", "64", "--train.run-dir", str(run_dir),
                 "--train.lr", "3e-3", "--train.warmup-steps", "0", "--train.ema-decay", "0.999",
                 "--no-train.tensorboard", "--no-train.progress", "--samples-per-class", "0"]) == 0
    exported = TokenGeneratorMethod.from_pretrained(run_dir).state_dict()
    raw = load_checkpoint(run_dir, with_trainer_state=False).model
    cfg = Config(tokenizer=tokenizer_dir, dataset="digits", preset="tiny")
    seed_everything(0)  # the command seeds with train.seed before building the method
    init = build_method(cfg, open_store(cfg, torch.device("cpu"))).state_dict()
    keys = [k for k, v in raw.items() if v.is_floating_point() and not torch.equal(raw[k], init[k])]
    assert keys

    def dist(a, b):
        return torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)).item()

    to_raw, to_init, raw_to_init = dist(exported, raw), dist(exported, init), dist(raw, init)
    print(f"EMA A/B: |ema-raw| {to_raw:.4f}  |ema-init| {to_init:.4f}  |raw-init| {raw_to_init:.4f}")
    assert to_raw < 0.25 * raw_to_init and to_init > 0.75 * raw_to_init
    # without warm-up the same run is refused before it starts (0.999^40 keeps 96% of the init)
    assert main(["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--preset", "tiny",
                 "--train.steps", "40", "--train.global-batch", "64", "--train.run-dir", str(tmp_path / "no"),
                 "--train.ema-decay", "0.999", "--no-train.ema-warmup", "--no-train.progress"]) == 2


def test_tokenize_writes_the_same_continuous_store_the_generator_builds(tokenizer_dir, tmp_path):
    """`unissl tokenize` on a RepTok tokenizer: the continuous store the generator would build itself (same
    tokens, labels, statistics, tokenizer checksum), accepted by `train reptok-generator --tokens`."""
    from unissl.commands.train_reptok_generator import build_token_store

    out = tmp_path / "tokens"
    assert main(["tokenize", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--splits", "train", "test",
                 "--out", str(out), "--no-progress"]) == 0
    ref = build_token_store(tokenizer_dir, "digits", None, tmp_path / "ref", 256, torch.device("cpu"),
                            splits=("train", "test"))
    for split in ("train", "test"):
        a, b = TokenStore(out, split), TokenStore(ref, split)
        assert a.kind == "continuous" and len(a) == len(b)
        np.testing.assert_allclose(np.load(out / f"{split}.z.npy"), np.load(ref / f"{split}.z.npy"), atol=1e-6)
        np.testing.assert_array_equal(a.labels, b.labels)
    a = TokenStore(out, "train")
    assert a.meta["tokenizer"]["sha256"] == TokenStore(ref, "train").meta["tokenizer"]["sha256"]
    np.testing.assert_allclose(a.meta["z_stats"]["mean"], TokenStore(ref, "train").meta["z_stats"]["mean"], atol=1e-6)
    assert main(["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--tokens", str(out), "--dataset",
                 "digits", "--preset", "tiny", "--train.steps", "2", "--train.global-batch", "64",
                 "--train.run-dir", str(tmp_path / "run"), "--train.warmup-steps", "0", "--no-train.tensorboard",
                 "--no-train.progress", "--samples-per-class", "0"]) == 0
    assert main(["tokenize", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--flip", "--out",
                 str(tmp_path / "flip")]) == 2 and not (tmp_path / "flip").exists()


def test_online_generation_metrics_are_logged_at_every_checkpoint(tokenizer_dir, tmp_path):
    import json

    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, save_classifier

    torch.manual_seed(0)
    save_classifier(DomainClassifier(DomainClassifierConfig(image_size=8, widths=[4, 8], feature_dim=8)), tmp_path / "clf")
    run = tmp_path / "run"
    assert main(["train", "reptok-generator", "--tokenizer", tokenizer_dir, "--dataset", "digits", "--preset", "tiny",
                 "--train.steps", "4", "--train.ckpt-every", "2", "--train.global-batch", "64",
                 "--train.warmup-steps", "0", "--train.run-dir", str(run), "--no-train.tensorboard",
                 "--no-train.progress", "--samples-per-class", "0", "--online-domain", str(tmp_path / "clf"),
                 "--online-per-class", "3"]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    online = [r for r in logs if "online/FD_domain" in r]
    assert [r["step"] for r in online] == [2, 4]
    assert all(r["online/FD_domain"] >= 0 and 0 <= r["online/class_share"] <= 100 for r in online)
