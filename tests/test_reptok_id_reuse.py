"""A RepTok tokenizer on a Sorcen encoder reuses the Sorcen run's VQ id store (``--encoder-tokens``) instead of
running the VQ encoder over every image, and writes the generator's continuous token store from its cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from unissl.cli import main
from unissl.data import build_dataset
from unissl.data.base import FirstN
from unissl.data.continuous_store import STATS_KEY, default_store_path
from unissl.data.token_store import TokenStore
from unissl.methods.reptok.encoders import SorcenEncoder
from unissl.methods.reptok.frozen_cache import SPOT_CHECK, build_frozen_cache, store_ids
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sorcen(tmp_path_factory) -> dict[str, str]:
    """A tiny Sorcen run (16 px VQ, 4x4 ids) and the VQ id store of digits' train split by its tokenizer."""
    from test_reptok_encoders import make_tiny_sorcen_run

    root = tmp_path_factory.mktemp("sorcen")
    run = make_tiny_sorcen_run(root)
    store = root / "tokens"
    assert main(["tokenize", "--tokenizer", str(root / "vq"), "--dataset", "digits", "--splits", "train", "--out",
                 str(store), "--device", "cpu", "--no-progress"]) == 0
    return {"run": run, "store": str(store), "root": str(root)}


@pytest.fixture
def count_prepare(monkeypatch) -> list[int]:
    """Images that went through SorcenEncoder.prepare (the VQ encoder), one entry per call."""
    calls: list[int] = []
    original = SorcenEncoder.prepare

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(SorcenEncoder, "prepare", counted)
    return calls


def test_store_ids_give_the_frozen_cache_of_the_images(sorcen, tmp_path, count_prepare) -> None:
    """(a) The ids read from the store (of a --limit dataset: its first rows) give the very cache computed from
    the images, and only the spot check runs the VQ encoder."""
    tok = RepTokTokenizer(RepTokConfig(encoder={"kind": "sorcen", "path": sorcen["run"]}, image_size=16, channels=1,
                                       decoder="tiny"))
    data = FirstN(build_dataset("digits", "train", image_size=16), 200)
    from safetensors.torch import load_file

    ref = load_file(build_frozen_cache(tok.encoder, data, tmp_path / "images", batch_size=64))
    assert sum(count_prepare) == 200
    count_prepare.clear()
    ids = store_ids(tok.encoder, data, sorcen["store"], "train")
    assert count_prepare == [SPOT_CHECK]  # the first 64 images only
    path = build_frozen_cache(tok.encoder, data, tmp_path / "store", batch_size=64, ids=ids)
    assert count_prepare == [SPOT_CHECK]
    got = load_file(path)
    assert path.name == next((tmp_path / "images").iterdir()).name  # same content, same key
    assert torch.equal(got["frozen_input"], ref["frozen_input"]) and got["frozen_input"].dtype == ref["frozen_input"].dtype
    torch.testing.assert_close(got["z_frozen"], ref["z_frozen"], rtol=1e-5, atol=1e-5)


def _argv(sorcen: dict[str, str], tmp_path, store: str, *extra: str) -> list[str]:
    return ["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", sorcen["run"], "--encoder-tokens",
            store, "--dataset", "digits", "--image-size", "16", "--decoder", "tiny", "--cache-dir",
            str(tmp_path / "cache"), "--train.steps", "2", "--train.global-batch", "16", "--train.warmup-steps", "0",
            "--train.run-dir", str(tmp_path / "run"), "--no-train.progress", "--no-train.tensorboard",
            "--train.device", "cpu", *extra]


def _edited_store(sorcen: dict[str, str], tmp_path, edit) -> str:
    bad = tmp_path / "bad-tokens"
    shutil.copytree(sorcen["store"], bad)
    meta = json.loads((bad / "meta.json").read_text())
    edit(meta)
    (bad / "meta.json").write_text(json.dumps(meta))
    return str(bad)


def _set(meta, *keys_value) -> None:
    *keys, last, value = keys_value
    for k in keys:
        meta = meta[k]
    meta[last] = value


@pytest.mark.parametrize("edit, message", [
    (lambda m: _set(m, "tokenizer", "checksum", "0" * 64), "other VQ tokenizer weights"),
    (lambda m: _set(m, "dataset", "fingerprints", "train", "digits:train:other"), "another dataset"),
    (lambda m: _set(m, "splits", "train", "flip", True), "flipped images"),
    (lambda m: _set(m, "splits", {}), "has no split 'train'"),
    (lambda m: _set(m, "kind", "continuous"), "not a VQ id store"),
])
def test_a_store_that_does_not_match_is_refused_in_one_line(sorcen, tmp_path, capsys, edit, message) -> None:
    """(b) Each mismatch: one line naming the store, before anything is written."""
    store = _edited_store(sorcen, tmp_path, edit)
    assert main(_argv(sorcen, tmp_path, store)) == 2
    err = capsys.readouterr().err
    assert message in err and store in err and "--encoder-tokens" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_missing_store_and_other_encoders_are_refused(sorcen, tmp_path, capsys) -> None:
    assert main(_argv(sorcen, tmp_path, str(tmp_path / "nowhere"))) == 2
    err = capsys.readouterr().err
    assert "not a VQ id store" in err and str(tmp_path / "nowhere") in err and err.count("\n") == 1
    argv = _argv(sorcen, tmp_path, sorcen["store"])
    argv[argv.index("sorcen")] = "random"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--encoder-tokens" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_spot_check_refuses_ids_that_differ(sorcen, tmp_path, capsys) -> None:
    bad = _edited_store(sorcen, tmp_path, lambda m: None)
    ids = np.load(bad + "/train.ids.npy")
    ids[3] = (ids[3] + 1) % 16
    np.save(bad + "/train.ids.npy", ids)
    from unissl.utils.io import sha256_file

    meta = json.loads((tmp_path / "bad-tokens" / "meta.json").read_text())
    meta["sha256"]["train.ids.npy"] = sha256_file(bad + "/train.ids.npy")  # a consistent store, other ids
    (tmp_path / "bad-tokens" / "meta.json").write_text(json.dumps(meta))
    assert main(_argv(sorcen, tmp_path, bad)) == 2
    err = capsys.readouterr().err
    assert "differ from the store's (16 ids)" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_trained_tokenizer_writes_the_generator_store(sorcen, tmp_path, capsys, count_prepare, monkeypatch) -> None:
    """(c) Training with --encoder-tokens writes the continuous store that build_token_store would compute from
    the images, where train reptok-generator looks for it, which then trains without recomputing it."""
    assert main(_argv(sorcen, tmp_path, sorcen["store"])) == 0
    # the VQ encoder ran over the spot check (and the few logged reconstructions), never the 1500 images
    assert count_prepare[0] == SPOT_CHECK and sum(count_prepare) < 100
    out = capsys.readouterr().out
    tok_dir = tmp_path / "run" / "tokenizer"
    path = default_store_path(tok_dir, "digits")
    assert f"written to {path}" in out
    from unissl.commands import train_reptok_generator as gen

    ref_path = gen.build_token_store(str(tok_dir), "digits", None, tmp_path / "ref", 256, torch.device("cpu"))
    got, ref = TokenStore(path, "train"), TokenStore(ref_path, "train")
    assert len(got) == len(ref) == 1500
    z, z_ref = got.__getitems__(range(1500)), ref.__getitems__(range(1500))
    assert float((z["z"] - z_ref["z"]).abs().max()) <= 1e-5 and torch.equal(z["label"], z_ref["label"])
    for key in ("tokenizer", "classes", "dataset"):
        assert got.meta[key] == ref.meta[key], key
    np.testing.assert_allclose(got.meta[STATS_KEY]["mean"], ref.meta[STATS_KEY]["mean"], atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("the generator recomputed the token store")

    monkeypatch.setattr(gen, "build_token_store", refuse)
    assert main(["train", "reptok-generator", "--tokenizer", str(tok_dir), "--dataset", "digits", "--preset", "tiny",
                 "--train.steps", "1", "--train.global-batch", "32", "--train.warmup-steps", "0", "--train.run-dir",
                 str(tmp_path / "gen"), "--no-train.tensorboard", "--no-train.progress", "--samples-per-class", "0",
                 "--train.device", "cpu"]) == 0
