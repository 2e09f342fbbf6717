"""Token store: write -> read round trips, flipped copies, validation, atomicity, sharded batches."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from unissl.data import build_dataset
from unissl.data.token_store import TokenStore
from unissl.data.token_writer import write_array_store, write_token_store
from unissl.errors import ConfigError, UnisslError


class PatchTokenizer:
    """Fake VQ tokenizer: id = rounded mean of each p x p patch (channel 0) scaled to the codebook."""

    def __init__(self, codebook_size: int = 17, patch: int = 2, image_size: int = 8, fail_at_call: int = -1):
        self.codebook_size, self.patch, self.image_size, self.channels = codebook_size, patch, image_size, 1
        self.grid = (image_size // patch, image_size // patch)
        self.calls, self.fail_at_call = 0, fail_at_call

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, h, w)
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash while tokenizing")
        means = torch.nn.functional.avg_pool2d(images[:, :1], self.patch)[:, 0]  # (B, h, w)
        # Mixing in the column index makes the code not mirror-symmetric, so a flip changes the ids.
        col = torch.arange(self.grid[1]) / self.grid[1]
        return ((0.8 * means + 0.2 * col) * (self.codebook_size - 1)).round().long()

    def identity(self) -> dict:
        return {"class": "PatchTokenizer", "config": {"patch": self.patch}}

    def checksum(self) -> str:
        return "fake-sha"


@pytest.fixture(scope="module")
def digits():
    return {"train": build_dataset("digits", "test"), "test": build_dataset("digits", "test", image_size=8)}


@pytest.fixture
def store(tmp_path: Path, digits) -> Path:
    return write_token_store(tmp_path / "store", PatchTokenizer(), digits, batch_size=64, flip=True, progress=False)


def all_images(ds) -> torch.Tensor:
    return ds.__getitems__(range(len(ds)))["image"]  # (N, C, H, W)


def test_round_trip_with_flipped_copy(store: Path, digits) -> None:
    tok, ds = PatchTokenizer(), digits["train"]
    images = all_images(ds)
    s = TokenStore(store, "train", flip=True, verify=True)
    n = len(ds)
    assert len(s) == 2 * n and s.count == n
    assert s.codebook_size == 17 and s.grid == (4, 4) and s.classes == [str(d) for d in range(10)]
    assert s.num_classes == 10 and s.tokenizer_path is None
    assert np.load(store / "train.ids.npy", mmap_mode="r").dtype == np.uint16
    batch = s.__getitems__(range(2 * n))
    assert batch["ids"].dtype == torch.int64 and batch["ids"].shape == (2 * n, 4, 4)
    assert torch.equal(batch["ids"][:n], tok.encode(images))
    assert torch.equal(batch["ids"][n:], tok.encode(images.flip(-1)))
    assert not torch.equal(batch["ids"][:n], batch["ids"][n:])
    assert torch.equal(batch["label"], torch.cat([ds.labels, ds.labels]))
    one = s[n + 5]
    assert torch.equal(one["ids"], tok.encode(images[5:6].flip(-1))[0]) and int(one["label"]) == int(ds.labels[5])
    meta = s.meta
    assert meta["kind"] == "vq" and meta["splits"]["test"]["count"] == n
    assert meta["tokenizer"] == {"class": "PatchTokenizer", "config": {"patch": 2}, "path": None,
                                 "checksum": "fake-sha"}
    assert meta["dataset"]["fingerprints"]["train"] == ds.fingerprint()
    assert len(TokenStore(store, "test")) == n  # without flip


def test_worker_processes_give_the_same_store(tmp_path: Path, digits) -> None:
    a = write_token_store(tmp_path / "a", PatchTokenizer(), {"test": digits["test"]}, batch_size=100, progress=False)
    b = write_token_store(tmp_path / "b", PatchTokenizer(), {"test": digits["test"]}, batch_size=100, progress=False,
                          num_workers=1)
    for name in ("test.ids.npy", "test.labels.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name))


def test_store_pickles_without_copying_and_works_with_a_dataloader(store: Path) -> None:
    from unissl.data import collate_batched

    s = TokenStore(store, "train", flip=True)
    clone = pickle.loads(pickle.dumps(s))
    assert isinstance(clone._arrays["ids"], np.memmap)
    assert len(pickle.dumps(s)) < 60_000  # labels only; ids stay on disk
    assert torch.equal(clone.__getitems__([1, 400])["ids"], s.__getitems__([1, 400])["ids"])
    loader = torch.utils.data.DataLoader(s, batch_sampler=s.sampler(32, seed=3), collate_fn=collate_batched)
    batch = next(iter(loader))
    assert batch["ids"].shape == (32, 4, 4)


def test_batches_shard_by_rank(store: Path) -> None:
    s = TokenStore(store, "train", flip=True)
    full = list(s.batches(40, seed=1, num_steps=3))
    parts = [list(s.batches(40, rank=r, world_size=4, seed=1, num_steps=3)) for r in range(4)]
    for step in range(3):
        assert all(p[step]["ids"].shape == (10, 4, 4) for p in parts)
        assert torch.equal(torch.cat([p[step]["ids"] for p in parts]), full[step]["ids"])
        assert torch.equal(torch.cat([p[step]["label"] for p in parts]), full[step]["label"])


def test_large_codebook_uses_int32(tmp_path: Path, digits) -> None:
    tok = PatchTokenizer(codebook_size=100_000)
    out = write_token_store(tmp_path / "big", tok, {"train": digits["train"]}, batch_size=100, progress=False)
    assert np.load(out / "train.ids.npy", mmap_mode="r").dtype == np.int32
    s = TokenStore(out)
    assert int(s.__getitems__(range(len(s)))["ids"].max()) > 65535
    assert torch.equal(s.__getitems__(range(len(s)))["ids"], tok.encode(all_images(digits["train"])))


def test_out_of_range_ids_are_detected(store: Path) -> None:
    ids = np.load(store / "train.flip.ids.npy", mmap_mode="r+")
    ids[123, 2, 1] = 17  # == codebook_size
    ids.flush()
    del ids
    TokenStore(store, "train")  # the unflipped ids are fine
    with pytest.raises(UnisslError, match=r"train.flip.ids.npy: sha256 .* differs from meta.json"):
        TokenStore(store, "train", flip=True)  # verified by default: the altered bytes are caught first
    with pytest.raises(UnisslError, match=r"train.flip.ids.npy: token id 17 outside the codebook \[0, 17\)"):
        TokenStore(store, "train", flip=True, verify=False)  # and the range check still holds on its own


def test_checksum_mismatch_is_detected_with_verify(store: Path, monkeypatch) -> None:
    import unissl.data.token_store as ts

    TokenStore(store, "train")  # verified once: size + mtime of each file recorded in .verified.json
    assert (store / ".verified.json").is_file()
    reads = []
    real = ts.sha256_file
    monkeypatch.setattr(ts, "sha256_file", lambda p: reads.append(p) or real(p))
    TokenStore(store, "train")
    assert reads == []  # unchanged files are not read again
    ids = np.load(store / "train.ids.npy", mmap_mode="r+")
    ids[0, 0, 0] = (int(ids[0, 0, 0]) + 1) % 17  # still a valid id: only the checksum can tell
    ids.flush()
    del ids
    TokenStore(store, "train", verify=False)  # opting out of the check does not notice
    with pytest.raises(UnisslError, match="train.ids.npy: sha256 .* differs from meta.json"):
        TokenStore(store, "train")  # the default does, although the store was verified before


def test_corrupt_or_inconsistent_meta(store: Path) -> None:
    meta_path = store / "meta.json"
    meta = json.loads(meta_path.read_text())
    with pytest.raises(UnisslError, match="has no split 'val'"):
        TokenStore(store, "val")
    meta_path.write_text(json.dumps({**meta, "splits": {**meta["splits"], "train": {
        **meta["splits"]["train"], "count": 296}}}))
    with pytest.raises(UnisslError, match=r"train.ids.npy: shape \(297, 4, 4\) but meta.json says \(296, 4, 4\)"):
        TokenStore(store, "train")
    meta_path.write_text(json.dumps({**meta, "dtype": "int32"}))
    with pytest.raises(UnisslError, match="train.ids.npy: dtype uint16 but meta.json says int32"):
        TokenStore(store, "train")
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "splits"}))
    with pytest.raises(UnisslError, match="meta.json lacks 'splits'"):
        TokenStore(store, "train")
    meta_path.write_text(meta_path.read_text()[:50])
    with pytest.raises(UnisslError, match="meta.json is not valid JSON"):
        TokenStore(store, "train")
    meta_path.unlink()
    with pytest.raises(UnisslError, match="meta.json not found"):
        TokenStore(store, "train")
    with pytest.raises(UnisslError, match="nowhere not found.*unissl tokenize"):
        TokenStore(store.parent / "nowhere")


def test_corrupt_array_file(store: Path) -> None:
    raw = (store / "train.ids.npy").read_bytes()
    (store / "train.ids.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnisslError, match="train.ids.npy: sha256 .* differs from meta.json"):
        TokenStore(store, "train")  # a truncated file fails its checksum first
    with pytest.raises(UnisslError, match="train.ids.npy: not a readable .npy array"):
        TokenStore(store, "train", verify=False)
    (store / "train.ids.npy").unlink()
    with pytest.raises(UnisslError, match="train.ids.npy not found"):
        TokenStore(store, "train")
    with pytest.raises(UnisslError, match="no flipped copy"):
        TokenStore(write_token_store(store.parent / "noflip", PatchTokenizer(), {"train": build_dataset(
            "digits", "test")}, batch_size=300, progress=False), "train", flip=True)


def test_writing_is_atomic(tmp_path: Path, digits) -> None:
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_token_store(out, PatchTokenizer(fail_at_call=4), digits, batch_size=64, flip=True, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # A failing rewrite leaves the previous complete store in place.
    write_token_store(out, PatchTokenizer(), digits, batch_size=64, progress=False)
    before = (out / "meta.json").read_text()
    with pytest.raises(RuntimeError):
        write_token_store(out, PatchTokenizer(fail_at_call=2), digits, batch_size=64, progress=False)
    assert (out / "meta.json").read_text() == before and [p.name for p in tmp_path.iterdir()] == ["store"]
    TokenStore(out, "test", verify=True)


def test_bad_tokenizer_output_and_image_size(tmp_path: Path, digits) -> None:
    class Wrong(PatchTokenizer):
        def encode(self, images: torch.Tensor) -> torch.Tensor:
            return super().encode(images)[:, :2]

    with pytest.raises(UnisslError, match=r"Wrong.encode returned \(64, 2, 4\)"):
        write_token_store(tmp_path / "s", Wrong(), digits, batch_size=64, progress=False)
    with pytest.raises(ConfigError, match="^image_size: split train: images are 8x8 but the tokenizer expects 16x16; "
                                          "set it to 16$"):
        write_token_store(tmp_path / "s", PatchTokenizer(image_size=16), digits, batch_size=64, progress=False)

    class OffByOne(PatchTokenizer):
        def encode(self, images: torch.Tensor) -> torch.Tensor:
            return super().encode(images) + 9  # bright patches go past the codebook

    with pytest.raises(UnisslError, match=r"OffByOne.encode returned id (1[7-9]|2\d) outside \[0, 17\)"):
        write_token_store(tmp_path / "s", OffByOne(), digits, batch_size=64, progress=False)
    assert not (tmp_path / "s").exists()


def test_continuous_store_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = {"train": rng.normal(size=(50, 12)).astype(np.float32), "test": rng.normal(size=(7, 12)).astype(np.float32)}
    zf = {"train": -z["train"]}
    labels = {"train": np.arange(50) % 5, "test": np.arange(7) % 5}
    out = write_array_store(tmp_path / "cont", z, labels, meta={"classes": list("abcde"), "tokenizer": {"path": "t/x"}},
                            flipped=zf)
    s = TokenStore(out, "train", flip=True, verify=True)
    assert s.kind == "continuous" and s.dim == 12 and s.codebook_size is None and s.tokenizer_path == "t/x"
    batch = s.__getitems__([0, 49, 50, 99])
    assert batch["z"].dtype == torch.float32 and batch["z"].shape == (4, 12)
    assert np.array_equal(batch["z"].numpy(), np.stack([z["train"][0], z["train"][49], -z["train"][0], -z["train"][49]]))
    assert batch["label"].tolist() == [0, 4, 0, 4]
    assert len(TokenStore(out, "test")) == 7 and TokenStore(out, "test").num_classes == 5
    with pytest.raises(UnisslError, match="no flipped copy of 'test'"):
        TokenStore(out, "test", flip=True)
    with pytest.raises(UnisslError, match="same D"):
        write_array_store(tmp_path / "bad", {"a": np.zeros((3, 2)), "b": np.zeros((3, 4))},
                          {"a": np.zeros(3), "b": np.zeros(3)})
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ `unissl tokenize`
def test_tokenize_command_with_a_saved_vq_tokenizer(tmp_path: Path, capsys) -> None:
    from unissl.cli import main
    from unissl.tokenizers import VQTokenizer, load_tokenizer, preset

    torch.manual_seed(0)
    tok_dir = VQTokenizer(preset("tiny")).save_pretrained(tmp_path / "tok")  # 3x8x8 -> 4x4 ids, K=16
    out = tmp_path / "store"
    argv = ["tokenize", "--tokenizer", str(tok_dir), "--dataset", "digits", "--splits", "test", "--out", str(out),
            "--batch-size", "100", "--flip", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert "tokenized digits (test 297, +flipped) -> 4x4 ids, codebook 16" in capsys.readouterr().out
    store = TokenStore(out, "test", flip=True, verify=True)
    tok = load_tokenizer(tok_dir)
    images = all_images(build_dataset("digits", "test", image_size=8, channels=3))  # grey -> RGB for the tokenizer
    ids = store.__getitems__(range(2 * 297))["ids"]
    assert torch.equal(ids[:297], tok.encode(images)) and torch.equal(ids[297:], tok.encode(images.flip(-1)))
    assert store.tokenizer_path == str(Path(tok_dir).resolve())
    assert store.meta["tokenizer"]["checksum"] == tok.checksum()
    store.check_tokenizer(tok)
    torch.manual_seed(1)
    with pytest.raises(UnisslError, match="tokenizer weights .* differ from those that wrote token store"):
        store.check_tokenizer(VQTokenizer(preset("tiny")))
    with pytest.raises(UnisslError, match=r"tokenizer \(K=17, grid=\(4, 4\)\) does not match"):
        store.check_tokenizer(PatchTokenizer())
    # An existing store is kept unless --overwrite; user errors exit with status 2.
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert main(["tokenize", "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["tokenize", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "x"), "--dataset", "cifar"]) == 2
