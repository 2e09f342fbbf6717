"""Datasets: digits, IDX / Fashion-MNIST, image folders, tar shards, and every error path."""

from __future__ import annotations

import gzip
import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unissl.data import DATASETS, ShardedBatchSampler, build_dataset, collate_batched
from unissl.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx, write_idx
from unissl.errors import ConfigError, UnisslError


def check_contract(ds, n: int) -> None:
    """The data contract on a few items: types, ranges, and __getitems__ == stacked __getitem__."""
    assert len(ds) == n
    item = ds[1]
    assert item["image"].dtype == torch.float32
    assert item["image"].shape == (ds.channels, ds.image_size, ds.image_size)
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    idx = [n - 1, 0, 1, 1]
    batch = ds.__getitems__(idx)
    assert batch["image"].shape == (4, ds.channels, ds.image_size, ds.image_size)
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    for j, i in enumerate(idx):
        assert torch.equal(batch["image"][j], ds[i]["image"])
        assert int(batch["label"][j]) == int(ds[i]["label"])
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert ds.num_classes == len(ds.classes)
    assert isinstance(ds.fingerprint(), str) and ds.fingerprint() == ds.fingerprint()


# ------------------------------------------------------------------ digits
def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    train, test = build_dataset("digits"), build_dataset("digits", "test")
    check_contract(train, 1500)
    check_contract(test, 297)
    assert train.classes == [str(d) for d in range(10)]
    # Disjoint and complete: the multiset of (image, label) rows equals sklearn's.
    ref = load_digits()
    def rows(ds) -> set:
        pixels = (ds.__getitems__(range(len(ds)))["image"].flatten(1) * 16).round().int().tolist()
        return {(tuple(p), int(y)) for p, y in zip(pixels, ds.labels)}
    ref_rows = {(tuple(ref.images[i].flatten().astype(int).tolist()), int(ref.target[i])) for i in range(1797)}
    assert rows(train) | rows(test) == ref_rows
    counts = torch.bincount(test.labels, minlength=10)
    assert int(counts.min()) >= 29 and int(counts.max()) <= 30  # stratified
    assert build_dataset("digits").fingerprint() == train.fingerprint()
    assert train.fingerprint() != test.fingerprint()


def test_digits_resize_and_channels() -> None:
    small = build_dataset("digits", "test")
    big = build_dataset("digits", "test", image_size=16, channels=3)
    check_contract(big, 297)
    x, y = small.__getitems__(range(297))["image"], big.__getitems__(range(297))["image"]
    assert y.shape == (297, 3, 16, 16)
    assert torch.equal(y[:, 0], y[:, 2])  # grey repeated to RGB
    # Closed form of 2x bilinear upsampling (half-pixel centers): out[2i] = .25 x[i-1] + .75 x[i],
    # out[2i+1] = .75 x[i] + .25 x[i+1], with edge clamping; applied along rows then columns.
    def up(a: np.ndarray, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, 0)
        prev, nxt = np.concatenate([a[:1], a[:-1]]), np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * len(a),) + a.shape[1:], dtype=np.float64)
        out[0::2], out[1::2] = 0.25 * prev + 0.75 * a, 0.75 * a + 0.25 * nxt
        return np.moveaxis(out, 0, axis)
    ref = up(up(x[:, 0].double().numpy(), 1), 2)  # (N, 16, 16)
    assert np.allclose(y[:, 0].numpy(), ref, atol=1e-5)
    assert big.fingerprint() != small.fingerprint()


# ------------------------------------------------------------------ IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype) -> None:
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"a.idx{suffix}", arr)
    back = read_idx(path)
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_idx_header_is_the_mnist_layout(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8)).read_bytes()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_errors(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good", np.zeros((4, 5, 5), dtype=np.uint8)).read_bytes()
    with pytest.raises(UnisslError, match="missing.*not found"):
        read_idx(tmp_path / "missing")
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x03" + good[4:])
    with pytest.raises(UnisslError, match=r"magic\b.*magic number 0x12340803"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good[:-7])
    with pytest.raises(UnisslError, match="short: truncated IDX file"):
        read_idx(tmp_path / "short")
    (tmp_path / "hdr").write_bytes(good[:9])
    with pytest.raises(UnisslError, match="hdr: truncated IDX header"):
        read_idx(tmp_path / "hdr")
    (tmp_path / "long").write_bytes(good + b"xx")
    with pytest.raises(UnisslError, match="trailing bytes"):
        read_idx(tmp_path / "long")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(UnisslError, match="cut.gz: cannot read"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(UnisslError, match="3 dimensions, expected 1"):
        read_idx(tmp_path / "good", ndim=1)


def write_fake_fashion(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_written_files(tmp_path: Path, gz: bool) -> None:
    write_fake_fashion(tmp_path, gz=gz)
    train = build_dataset("fashion-mnist", "train", data_dir=tmp_path)
    check_contract(train, 12)
    assert train.classes == FASHION_MNIST_CLASSES
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert torch.equal(train[3]["image"][0], torch.from_numpy(images[3]).float() / 255)
    assert train.labels.tolist() == [i % 10 for i in range(12)]
    test = build_dataset("fashion-mnist", "test", data_dir=tmp_path, image_size=32)
    check_contract(test, 5)
    assert test.image_size == 32


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^data_dir: fashion-mnist: directory .* not found; apt-get install "
                                          "dataset-fashion-mnist or set it to the directory holding the IDX files$"):
        build_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="^data_dir: fashion-mnist: .*train-images-idx3-ubyte.*not found"):
        build_dataset("fashion-mnist", data_dir=tmp_path)
    write_fake_fashion(tmp_path, n_train=6)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(UnisslError, match="6 images but .* 5 labels"):
        build_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(UnisslError, match="unknown split"):
        build_dataset("fashion-mnist", "val", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist() -> None:
    train = build_dataset("fashion-mnist")
    check_contract(train, 60000)
    assert set(train.labels.tolist()) == set(range(10))
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    test = build_dataset("fashion-mnist", "test")
    assert len(test) == 10000 and int(test.labels[0]) == 9  # the first test image is an ankle boot


# ------------------------------------------------------------------ folder
def png_bytes(color, size=(10, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path) -> None:
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(png_bytes((255, 0, 0)))
    (root / "cat" / "b.png").write_bytes(png_bytes((0, 0, 255), size=(30, 20)))
    # 20 wide x 10 high: white center square between black side bands; the center crop keeps only white.
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (5, 0, 15, 10))
    img.save(root / "dog" / "c.png")


def test_folder_dataset(tmp_path: Path) -> None:
    make_folder(tmp_path)
    ds = build_dataset("folder", data_dir=tmp_path, image_size=8)
    check_contract(ds, 3)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert torch.allclose(ds[0]["image"], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 8, 8))
    assert torch.allclose(ds[1]["image"], torch.tensor([0.0, 0, 1]).view(3, 1, 1).expand(3, 8, 8))
    grey = build_dataset("folder", data_dir=tmp_path, channels=1)
    assert grey.channels == 1 and grey.image_size == 10  # the first image's shorter side
    assert torch.equal(grey[2]["image"], torch.ones(1, 10, 10))  # black side bands cropped away
    assert abs(float(grey[0]["image"].mean()) - 0.299) < 0.01  # red -> luma
    # A split sub-folder wins over the root.
    make_folder(tmp_path / "val")
    assert len(build_dataset("folder", "val", data_dir=tmp_path, image_size=4)) == 3


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UnisslError, match="nowhere not found"):
        build_dataset("folder", data_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="^data_dir: the folder dataset needs a directory"):
        build_dataset("folder")
    with pytest.raises(UnisslError, match="no class sub-folders"):
        build_dataset("folder", data_dir=tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(UnisslError, match="no images under"):
        build_dataset("folder", data_dir=tmp_path)
    (tmp_path / "cls" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UnisslError, match="cannot read image .*broken.png.*delete or replace"):
        build_dataset("folder", data_dir=tmp_path, image_size=4)
    with pytest.raises(UnisslError, match="no .*test directory"):
        build_dataset("folder", "test", data_dir=tmp_path)


# ------------------------------------------------------------------ webdataset shards
def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path, split: str = "train") -> list[tuple[bytes, int]]:
    samples = [(png_bytes((i * 20, 255 - i * 20, 7), size=(12, 12)), i % 3) for i in range(7)]
    root.mkdir(parents=True, exist_ok=True)
    for s, chunk in enumerate((samples[:4], samples[4:])):
        with tarfile.open(root / f"{split}-{s:04d}.tar", "w") as tar:
            for j, (img, label) in enumerate(chunk):
                key = f"s{s}_{j:03d}"
                add_member(tar, f"{key}.png", img)
                add_member(tar, f"{key}.cls", str(label).encode())
    return samples


def test_webdataset_shards(tmp_path: Path) -> None:
    samples = make_shards(tmp_path)
    (tmp_path / "classes.txt").write_text("red\ngreen\nblue\n")
    ds = build_dataset("webdataset", data_dir=tmp_path, image_size=6)
    check_contract(ds, 7)
    assert ds.classes == ["red", "green", "blue"]
    assert ds.labels.tolist() == [lbl for _, lbl in samples]
    for i, (img, _) in enumerate(samples):
        color = torch.tensor(Image.open(io.BytesIO(img)).getpixel((0, 0)), dtype=torch.float32) / 255
        assert torch.allclose(ds[i]["image"], color.view(3, 1, 1).expand(3, 6, 6))
    # Works with the sampler + DataLoader like every map-style dataset.
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ShardedBatchSampler(7, 4, seed=1),
                                         collate_fn=collate_batched)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 6, 6)
    assert ds.fingerprint().startswith("webdataset:train:3x6x6:7:")


def test_webdataset_errors(tmp_path: Path) -> None:
    with pytest.raises(UnisslError, match="no shards for split 'train'"):
        build_dataset("webdataset", data_dir=tmp_path)
    with tarfile.open(tmp_path / "train-0000.tar", "w") as tar:
        add_member(tar, "x.png", png_bytes((1, 2, 3)))
    with pytest.raises(UnisslError, match="'x' in .*train-0000.tar has no .cls"):
        build_dataset("webdataset", data_dir=tmp_path)
    with tarfile.open(tmp_path / "train-0000.tar", "w") as tar:
        add_member(tar, "x.png", b"garbage")
        add_member(tar, "x.cls", b"1")
    with pytest.raises(UnisslError, match="cannot read image .*train-0000.tar:x"):
        build_dataset("webdataset", data_dir=tmp_path)
    # A shard cut in the middle of an image.
    with tarfile.open(tmp_path / "train-0000.tar", "w") as tar:
        add_member(tar, "x.cls", b"1")
        add_member(tar, "x.png", png_bytes((1, 2, 3), size=(40, 40)))
    with tarfile.open(tmp_path / "train-0000.tar") as tar:
        member = tar.getmember("x.png")
    raw = (tmp_path / "train-0000.tar").read_bytes()
    (tmp_path / "train-0000.tar").write_bytes(raw[: member.offset_data + member.size // 2])
    with pytest.raises(UnisslError, match="cannot read shard .*train-0000.tar .*truncated"):
        build_dataset("webdataset", data_dir=tmp_path)
    (tmp_path / "train-0000.tar").write_bytes(b"\x01" * 700)
    with pytest.raises(UnisslError, match="cannot read shard .*train-0000.tar"):
        build_dataset("webdataset", data_dir=tmp_path)


def test_registry() -> None:
    assert list(DATASETS) == ["digits", "fashion-mnist", "folder", "webdataset"]
    with pytest.raises(UnisslError, match="unknown dataset 'cifar'.*digits"):
        build_dataset("cifar")


def test_dataloader_stream_over_digits() -> None:
    ds = build_dataset("digits", "test")
    sampler = ShardedBatchSampler(len(ds), 32, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batched)
    ref = list(itertools.islice(iter(ShardedBatchSampler(len(ds), 32, seed=0)), 10))
    for batch, idx in zip(itertools.islice(iter(loader), 10), ref):
        assert torch.equal(batch["label"], ds.labels[idx])


def test_one_image_adaptation_serves_datasets_evaluation_and_encoders() -> None:
    """Datasets, the evaluation's extractors and the RepTok encoders adapt images through one function:
    bilinear antialiased resize (checked against F.interpolate) and grey -> RGB / RGB -> grey (BT.601 luma)."""
    import torch.nn.functional as F

    from unissl.data.base import adapt_images, resize_images
    from unissl.eval import features
    from unissl.methods.reptok.encoders import to_square

    x = torch.rand(4, 1, 8, 8)
    ref = F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True, align_corners=False).expand(-1, 3, -1, -1)
    assert torch.allclose(adapt_images(x, 3, 20), ref, atol=1e-6)
    assert features.adapt_images is adapt_images
    assert torch.equal(to_square(x, 20, channels=3), adapt_images(x, 3, 20))
    wide = torch.rand(2, 3, 8, 12)  # to_square crops the centre square first
    assert torch.equal(to_square(wide, 8, channels=3), wide[:, :, :, 2:10])
    rgb = torch.rand(2, 3, 5, 5)
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(adapt_images(rgb, 1), luma)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(adapt_images(u8, None, 20), resize_images(u8, 20))  # the datasets' uint8 path
