"""End to end on digits: tokenize -> `unissl train sorcen` (sorcen, mage-c) -> `unissl sample sorcen` ->
the `sorcen` feature extractor and `load_sorcen`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unissl.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from unissl.tokenizers.vq import VQTokenizer, preset

    root = tmp_path_factory.mktemp("sorcen_cli")
    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "tok")  # untrained weights: ids still carry signal
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--out", str(root / "tokens"), "--dataset", "digits",
                 "--splits", "train", "--no-progress"]) == 0
    return root


TRAIN = ["--preset", "tiny", "--train.global-batch", "32", "--no-train.progress", "--no-train.tensorboard",
         "--train.num-workers", "0", "--train.lr", "1e-3", "--train.log-every", "2"]


def test_train_sample_and_features(store):
    run = store / "run"
    assert main(["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "4",
                 "--train.ckpt-every", "4", "--train.run-dir", str(run), *TRAIN]) == 0
    info = json.loads((run / "sorcen.json").read_text())
    assert info["variant"] == "sorcen" and info["arch"]["codebook_size"] == 64 and info["num_classes"] == 10
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"recon", "contrast", "uniformity", "probe_acc"} <= set(logs[-1])
    assert (run / "images" / "samples_step4.png").is_file()

    assert main(["sample", "sorcen", "--checkpoint", str(run), "--num-samples", "5", "--batch-size", "3",
                 "--maskgit.steps", "3", "--out", str(store / "samples")]) == 0
    npz = np.load(store / "samples" / "samples.npz")
    assert npz["ids"].shape == (5, 4, 4) and npz["ids"].max() < 64 and npz["ids"].min() >= 0
    assert npz["images"].shape == (5, 1, 8, 8) and (store / "samples" / "samples.png").is_file()

    from unissl.eval.features import load_extractor
    from unissl.methods.sorcen import load_sorcen

    ext = load_extractor(f"sorcen:{run}", torch.device("cpu"))
    images = torch.rand(3, 1, 8, 8)
    feats = ext.features(images)
    assert feats.shape == (3, 32) and "sorcen" in ext.identity()
    assert torch.allclose(feats, ext.features_from_ids(ext.tokenizer.encode(images)))
    model, tokenizer = load_sorcen(run)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    out = model.encode(tokenizer.encode(images))
    assert out.shape == (3, 17, 32) and torch.allclose(out[:, 1:].mean(1), feats, atol=1e-5)
    # a split the run's token store holds is read from the stored ids (no re-tokenizing), with equal features
    from unissl.data import build_dataset

    train = build_dataset("digits", "train")
    got = ext.dataset_features(train, batch_size=500)
    assert got is not None and got[0].shape == (len(train), 32)
    first = train.__getitems__(list(range(8)))
    torch.testing.assert_close(got[0][:8], ext.features(first["image"]), atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], train.labels)
    assert ext.dataset_features(build_dataset("digits", "test")) is None  # not in the store: images are encoded
    # the released probe's pooling: the blocks without the final norm, mean of image positions, LayerNorm
    rel = load_extractor(f"sorcen-released:{run}", torch.device("cpu"))
    x = model.embed(model.with_class_slot(tokenizer.encode(images)))
    for blk in model.blocks:
        x = blk(x)
    pooled = x[:, 1:].mean(1)
    naive = (pooled - pooled.mean(-1, keepdim=True)) / torch.sqrt(pooled.var(-1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(rel.features(images), naive, atol=1e-5) and rel.identity() != ext.identity()
    # every block's mean through the final norm, concatenated (the main job's probe); the last D columns are `sorcen`
    blocks = load_extractor(f"sorcen-blocks:{run}", torch.device("cpu"))
    x, naive_blocks = model.embed(model.with_class_slot(tokenizer.encode(images))), []
    w, b = model.norm.weight, model.norm.bias
    for blk in model.blocks:
        x = blk(x)
        normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6) * w + b
        naive_blocks.append(normed[:, 1:].mean(1))
    got_blocks = blocks.features(images)
    assert got_blocks.shape == (3, 32 * len(model.blocks)) and blocks.identity() != ext.identity()
    assert torch.allclose(got_blocks, torch.cat(naive_blocks, 1), atol=1e-5)
    assert torch.allclose(got_blocks[:, -32:], feats, atol=1e-5)
    # every block's tokens pooled to a 2x2 grid of the 4x4 id map (this project's probe): depth * 4 * D features
    grid = load_extractor(f"sorcen-grid:{run}", torch.device("cpu"))
    got_grid = grid.features(images)
    assert got_grid.shape == (3, len(model.blocks) * 4 * 32) and "grid2x2" in grid.identity()
    assert grid.identity() not in (ext.identity(), blocks.identity())
    assert torch.allclose(got_grid.reshape(3, len(model.blocks), 4, 32).mean(2), got_blocks.reshape(3, -1, 32),
                          atol=1e-5)


def _tiny_model(grid: tuple[int, int]):
    import dataclasses

    from unissl.methods.sorcen.model import SorcenModel
    from unissl.methods.sorcen.presets import PRESETS

    torch.manual_seed(0)
    return SorcenModel(dataclasses.replace(PRESETS["tiny"], grid=grid)).eval()


def _normed_block_tokens(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every block's image-position outputs after the final norm, (B, N, D) each, from the model's modules."""
    x, out = model.embed(model.with_class_slot(ids.long())), []
    for blk in model.blocks:
        x = blk(x)
        out.append(model.norm(x)[:, 1:])
    return out


@torch.no_grad()
def test_grid_pooling_closed_forms():
    from unissl.methods.sorcen.features import GRID_SIDE, pooled_features

    assert GRID_SIDE == 2
    # a 2x2 id map: each cell is one token, so `grid` is every block's normed tokens in raster order
    model = _tiny_model((2, 2))
    ids = torch.randint(0, 16, (5, 2, 2), generator=torch.Generator().manual_seed(1))
    want = torch.cat([t.flatten(1) for t in _normed_block_tokens(model, ids)], dim=1)
    got = pooled_features(model, ids, "grid")
    assert got.shape == (5, len(model.blocks) * 4 * 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # a 4x4 id map: cells of 2x2 tokens, so the mean of a block's four cells is that block's `blocks` features
    model = _tiny_model((4, 4))
    ids = torch.randint(0, 16, (5, 4, 4), generator=torch.Generator().manual_seed(2))
    got = pooled_features(model, ids, "grid").reshape(5, len(model.blocks), 4, 32)
    blocks = pooled_features(model, ids, "blocks").reshape(5, len(model.blocks), 32)
    torch.testing.assert_close(got.mean(2), blocks, rtol=1e-5, atol=1e-6)
    # the top-left cell is the mean of the top-left 2x2 tokens; flat ids use the model's grid
    first = _normed_block_tokens(model, ids)[0].reshape(5, 4, 4, 32)
    torch.testing.assert_close(got[:, 0, 0], first[:, :2, :2].mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert torch.equal(pooled_features(model, ids.flatten(1), "grid"), got.flatten(1))
    # a non-square 2x4 map: the right-hand cells pool columns 2..3
    model = _tiny_model((2, 4))
    ids = torch.randint(0, 16, (3, 2, 4), generator=torch.Generator().manual_seed(3))
    got = pooled_features(model, ids, "grid").reshape(3, len(model.blocks), 2, 2, 32)
    last = _normed_block_tokens(model, ids)[-1].reshape(3, 2, 4, 32)
    torch.testing.assert_close(got[:, -1, 1, 1], last[:, 1, 2:].mean(1), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_blocks_pooling_is_unchanged_by_the_shared_block_loop():
    from unissl.methods.sorcen.features import pooled_features

    model = _tiny_model((4, 4))
    ids = torch.randint(0, 16, (6, 4, 4), generator=torch.Generator().manual_seed(4))
    want = torch.cat([t.mean(dim=1).float() for t in _normed_block_tokens(model, ids)], dim=1)  # the old loop
    got = pooled_features(model, ids, "blocks")
    assert got.shape == (6, len(model.blocks) * 32) and torch.equal(got, want)  # bit-identical


def test_mage_c_trains_on_images_with_the_online_tokenizer(store):
    run = store / "run-magec"
    assert main(["train", "sorcen", "--method", "mage-c", "--dataset", "digits", "--tokenizer", str(store / "tok"),
                 "--train.steps", "2", "--train.run-dir", str(run), *TRAIN]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(logs[-1]["contrast"]) and np.isfinite(logs[-1]["recon"])
    # the frozen online tokenizer is not written into the checkpoint (frozen_state_prefixes)
    from unissl.engine import latest_checkpoint, load_checkpoint

    keys = set(load_checkpoint(latest_checkpoint(run), with_trainer_state=False).model)
    assert any(k.startswith("projector.") for k in keys) and not any(k.startswith("online_tokenizer.") for k in keys)
    # reloaded as what it is (a MAGE-C method with its projector), strictly, with no key stripping
    from unissl.methods.sorcen.run import load_method

    method, info = load_method(run)
    assert method.variant == "mage-c" and info["variant"] == "mage-c" and method.online_tokenizer is None
    # the grid probe loads a MAGE-C run through the same loader as the other Sorcen-family extractors
    from unissl.eval.features import load_extractor

    grid = load_extractor(f"sorcen-grid:{run}", torch.device("cpu"))
    assert grid.features(torch.rand(2, 1, 8, 8)).shape == (2, len(method.model.blocks) * 4 * 32)
    saved = load_checkpoint(latest_checkpoint(run), with_trainer_state=False).model
    assert torch.equal(method.projector.net[0].weight, saved["projector.net.0.weight"])


def test_mage_aug_and_lease_sorcen_settings_train_and_reload(store):
    from unissl.methods.sorcen.run import load_method

    run = store / "run-mageaug"
    assert main(["train", "sorcen", "--method", "mage-aug", "--dataset", "digits", "--tokenizer", str(store / "tok"),
                 "--train.steps", "2", "--train.run-dir", str(run), *TRAIN]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(logs[-1]["recon"]) and "contrast" not in logs[-1]
    method, info = load_method(run)
    assert info["variant"] == "mage-aug" and not hasattr(method, "projector")
    run = store / "run-released"
    assert main(["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "2", "--train.run-dir", str(run),
                 "--sorcen.echo.warmup-unit", "released", "--sorcen.teacher.init", "random",
                 "--sorcen.teacher.projector-grad", "--sorcen.teacher.momentum-schedule", "epoch",
                 "--sorcen.teacher.momentum-epochs", "1600", "--sorcen.loss.uniformity-pool", "all",
                 "--sorcen.loss.uniformity-diagonal", "--sorcen.decay-embeddings",
                 *TRAIN]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["echo_warmup"] == 1.0 and np.isfinite(logs[-1]["contrast"])
    method, info = load_method(run)
    assert info["loss"]["echo"]["warmup_unit"] == "released" and method.cfg.teacher.momentum_epochs == 1600


def test_missing_token_store_is_a_one_line_error(capsys):
    assert main(["train", "sorcen", "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unissl tokenize" in err and "--tokens" in err


def test_cli_preset_choices_are_the_registry(capsys):
    import dataclasses

    from unissl.commands import tokenizer_train, train_reptok_generator, train_sorcen
    from unissl.methods.reptok.mixer import GENERATOR_PRESETS
    from unissl.methods.sorcen.presets import PRESETS
    from unissl.tokenizers.vq import PRESETS as VQ_PRESETS

    for module, registry in ((train_sorcen, PRESETS), (tokenizer_train, VQ_PRESETS),
                             (train_reptok_generator, GENERATOR_PRESETS)):
        preset = {f.name: f for f in dataclasses.fields(module.Config)}["preset"]
        assert set(preset.metadata["choices"]) == set(registry), module.__name__
    # a name outside the registry is refused in one line, from flags and from a pipeline-style mapping alike
    assert main(["train", "sorcen", "--tokens", "x", "--preset", "huge"]) == 2
    assert capsys.readouterr().err == f"unissl: error: --preset: 'huge' is not one of {', '.join(PRESETS)}\n"
    from unissl.config import from_dict
    from unissl.errors import UnisslError

    with pytest.raises(UnisslError, match="preset: 'huge' is not one of"):
        from_dict(train_sorcen.Config, {"tokens": "x", "preset": "huge"})


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_refused_training_commands_leave_every_file_byte_identical(store, capsys):
    """A hostile user points training commands at a finished run: another preset on resume, another batch,
    another command's run dir, a tokenizer directory. Each is one `unissl: error:` line, exit 2, and every
    existing file stays byte-identical (config.yaml, run_info.json and sorcen.json were rewritten first)."""
    run = store / "run-refuse"
    assert main(["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "2",
                 "--train.run-dir", str(run), *TRAIN]) == 0
    before = _snapshot(run)
    tok_before = _snapshot(store / "tok")
    attempts = [
        ["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "4", "--train.run-dir", str(run),
         "--train.resume", *TRAIN[:0], "--preset", "small", *TRAIN[2:]],  # another preset
        ["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "4", "--train.run-dir", str(run),
         "--train.resume", *TRAIN[:2], "--train.global-batch", "16", *TRAIN[4:]],  # another batch
        ["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "4", "--train.run-dir", str(run),
         *TRAIN],  # no --train.resume on a run with checkpoints
        ["tokenizer", "train", "--dataset", "digits", "--train.steps", "1", "--train.run-dir", str(run),
         "--no-train.progress"],  # a run of another command
        ["train", "sorcen", "--tokens", str(store / "tokens"), "--train.steps", "2",
         "--train.run-dir", str(store / "tok"), *TRAIN],  # a tokenizer directory
    ]
    for argv in attempts:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and "Traceback" not in err[0], err
        assert _snapshot(run) == before, argv
        assert _snapshot(store / "tok") == tok_before, argv
    # the refused run can still be sampled
    assert main(["sample", "sorcen", "--checkpoint", str(run), "--num-samples", "2", "--maskgit.steps", "2",
                 "--out", str(store / "s-refuse")]) == 0


def test_store_from_another_tokenizer_or_with_bad_meta_is_refused(store, tmp_path, capsys):
    """A store whose recorded tokenizer path now holds other weights of the same size, and meta.json files
    with wrong types, an unknown dtype or a missing key: one line each, before training."""
    import shutil

    from unissl.tokenizers.vq import VQTokenizer, preset

    copy = tmp_path / "tokens"
    shutil.copytree(store / "tokens", copy)
    meta = json.loads((copy / "meta.json").read_text())
    torch.manual_seed(1)
    VQTokenizer(preset("digits")).save_pretrained(tmp_path / "other-tok")  # same K and grid, other weights
    meta["tokenizer"]["path"] = str(tmp_path / "other-tok")
    (copy / "meta.json").write_text(json.dumps(meta))
    argv = ["train", "sorcen", "--tokens", str(copy), "--train.steps", "1", "--train.run-dir", str(tmp_path / "r"),
            *TRAIN]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from those that wrote token store" in err[0]
    assert not (tmp_path / "r").exists()
    good = json.loads((store / "tokens" / "meta.json").read_text())
    for change, needle in (({"codebook_size": "many"}, "codebook_size"), ({"dtype": "float128x"}, "dtype"),
                           ({"splits": {"train": {"count": "x", "files": {}}}}, "count")):
        (copy / "meta.json").write_text(json.dumps({**good, **change}))
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unissl: error:") and needle in err[0], err
    bad = dict(good)
    del bad["sha256"]
    (copy / "meta.json").write_text(json.dumps(bad))
    assert main(argv) == 2
    assert "'sha256'" in capsys.readouterr().err


def test_one_paper_config_serves_every_method_and_size():
    """configs/sorcen/imagenet.yaml + `--method` / `--preset` flags: the same recipe for each (no per-method
    copies to drift apart), the released Sorcen settings included."""
    from unissl.commands.train_sorcen import Config
    from unissl.config import parse_config, shipped_config, to_dict

    path = str(shipped_config("configs/sorcen/imagenet.yaml"))
    resolved = {}
    for method, extra in (("sorcen", ["--tokens", "x"]), ("mage", ["--tokens", "x"]),
                          ("mage-c", ["--dataset", "folder", "--tokenizer", "x"])):
        for size in ("vit_b", "vit_l"):
            cfg = parse_config(Config, ["--config", path, "--method", method, "--preset", size, *extra])
            assert (cfg.method, cfg.preset) == (method, size)
            resolved[method, size] = (to_dict(cfg.train), to_dict(cfg.sorcen))
    assert len({repr(v) for v in resolved.values()}) == 1
    train, loss = resolved["sorcen", "vit_b"]
    assert (train["global_batch"], train["epochs"], train["base_lr"], train["amp"]) == (4096, 1600, 1.5e-4, "bf16")
    assert loss["echo"]["warmup_unit"] == "released" and loss["teacher"]["init"] == "random" and loss["decay_embeddings"]


def test_online_knn_and_probe_are_logged_at_every_checkpoint_and_match_offline_ones(store):
    """--online-eval: online/knn_top1 and online/probe_top1 at each checkpoint equal a k-NN and a linear probe
    computed afterwards from that checkpoint's weights on the same fixed subsets; their cost is logged beside
    them."""
    from unissl.data.token_store import TokenStore
    from unissl.eval.knn import knn_accuracy
    from unissl.eval.online import OnlineRepresentation, _subset
    from unissl.eval.probe import linear_probe
    from unissl.methods.sorcen.run import load_method

    tokens = store / "tokens-tt"
    assert main(["tokenize", "--tokenizer", str(store / "tok"), "--out", str(tokens), "--dataset", "digits",
                 "--splits", "train", "test", "--no-progress"]) == 0
    from unissl.eval.domain import DomainClassifier, DomainClassifierConfig, save_classifier

    torch.manual_seed(0)
    save_classifier(DomainClassifier(DomainClassifierConfig(image_size=8, widths=[4, 8], feature_dim=8)),
                    store / "clf")
    run = store / "run-online"
    assert main(["train", "sorcen", "--tokens", str(tokens), "--train.steps", "6", "--train.ckpt-every", "3",
                 "--train.keep-ckpts", "4", "--online-eval", "--online-eval-items", "300", "--train.run-dir", str(run),
                 "--online-domain", str(store / "clf"), *TRAIN]) == 0
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    online = [r for r in logs if "online/knn_top1" in r]
    assert [r["step"] for r in online] == [3, 6]
    fds = [r for r in logs if "online/FD_domain" in r]
    assert [r["step"] for r in fds] == [3, 6] and all(r["online/FD_domain"] >= 0 for r in fds)
    assert all(0 <= r["online/knn_top1"] <= 100 and r["online/seconds"] > 0 and r["online/share"] > 0 for r in online)
    method, _ = load_method(run)  # the last checkpoint
    train, test = TokenStore(tokens, "train"), TokenStore(tokens, "test")
    tr, te = train.__getitems__(_subset(len(train), 300, 0)), test.__getitems__(_subset(len(test), 60, 1))
    with torch.no_grad():
        fx = method.model.encode(tr["ids"])[:, 1:].mean(1)
        fy = method.model.encode(te["ids"])[:, 1:].mean(1)
    expected = knn_accuracy(fx, tr["label"], fy, te["label"], 10, 20, 0.07)["top1"]
    assert online[-1]["online/knn_top1"] == pytest.approx(expected, abs=1e-6)
    # The online probe is the offline protocol with the callback's short schedule, on the same features.
    probe_cfg = OnlineRepresentation(str(tokens), 300, 60).probe
    assert probe_cfg is not None and probe_cfg.epochs == 30
    expected_probe = linear_probe(fx, tr["label"], fy, te["label"], 10, probe_cfg, progress=False)[0]["top1"]
    assert online[-1]["online/probe_top1"] == pytest.approx(expected_probe, abs=1e-6)
    # Online evaluation does not change the training: the same run without it ends with the same weights.
    plain = store / "run-plain"
    assert main(["train", "sorcen", "--tokens", str(tokens), "--train.steps", "6", "--train.ckpt-every", "3",
                 "--train.keep-ckpts", "4", "--train.run-dir", str(plain), *TRAIN]) == 0
    other, _ = load_method(plain)
    ref = method.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in other.state_dict().items())


def test_settings_are_split_by_concern_and_the_flat_layout_still_reads(tmp_path):
    """SorcenConfig's sections (masking, loss, echo, teacher, crops) hold every setting the flat SorcenLossConfig
    held, once each; the flat names of older runs (sorcen.json), pipeline files (`loss:`) and command lines
    (`--loss.mask-max`) give the same config as the new paths; a bad value names its nested flag."""
    import dataclasses

    from unissl.commands.train_sorcen import Config
    from unissl.config import from_dict, parse_config
    from unissl.errors import UnisslError
    from unissl.methods.sorcen.config import FLAT_NAMES, SorcenConfig, build_config

    fields = {(s, f.name) for s in ("masking", "loss", "echo", "teacher", "crops")
              for f in dataclasses.fields(getattr(SorcenConfig(), s))}
    fields |= {(None, f.name) for f in dataclasses.fields(SorcenConfig) if f.name in ("decay_embeddings", "probe")}
    assert sorted(FLAT_NAMES.values(), key=str) == sorted(fields, key=str) and len(FLAT_NAMES) == 24
    flat = {"mask_max": 0.8, "teacher_init": "random", "echo_warmup_unit": "released", "temperature": 0.2,
            "magec_temperature": 0.3, "crop_scale_min": 0.4, "decay_embeddings": True}
    cfg = build_config(flat)
    assert (cfg.masking.max, cfg.teacher.init, cfg.echo.warmup_unit, cfg.echo.contrast_temperature,
            cfg.crops.temperature, cfg.crops.scale_min, cfg.decay_embeddings) == (0.8, "random", "released", 0.2,
                                                                                 0.3, 0.4, True)
    assert build_config(dataclasses.asdict(cfg)) == cfg  # the nested layout round-trips
    new = parse_config(Config, ["--tokens", "x", "--sorcen.masking.max", "0.8", "--sorcen.teacher.init", "random",
                                "--sorcen.echo.contrast-temperature", "0.2"])
    old = parse_config(Config, ["--tokens", "x", "--loss.mask-max", "0.8", "--loss.teacher-init", "random",
                                "--loss.temperature", "0.2"])
    assert old.sorcen == new.sorcen and new.sorcen.masking.max == 0.8
    assert from_dict(Config, {"tokens": "x", "loss": {"mask_max": 0.8, "teacher_init": "random",
                                                      "temperature": 0.2}}).sorcen == new.sorcen
    assert from_dict(Config, {"tokens": "x", "loss": {}}).sorcen == SorcenConfig()  # the studies' `loss: {}`
    with pytest.raises(UnisslError, match=r"sorcen.masking.max"):
        parse_config(Config, ["--tokens", "x", "--sorcen.masking.max", "1.5"])
