"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST dataset.

An IDX file is ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 dimensions, then the
data in big-endian order. Files may be gzip-compressed (``*.gz``); both forms are accepted.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from unissl.data.base import InMemoryImageDataset
from unissl.errors import ConfigError, UnisslError
from unissl.utils.io import atomic_file

# dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UnisslError(f"{path}: cannot read ({e}); the file is corrupt or truncated, download it again") from e


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian numpy array; ``ndim`` checks the rank."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found")
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise UnisslError(f"{path}: truncated IDX file ({len(raw)} bytes); download it again")
    zero0, zero1, code, rank = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        raise UnisslError(f"{path}: wrong IDX magic number 0x{raw[:4].hex()} (not an IDX file); "
                          f"pass the uncompressed or .gz IDX file")
    if ndim is not None and rank != ndim:
        raise UnisslError(f"{path}: IDX file has {rank} dimensions, expected {ndim}; check the file names")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise UnisslError(f"{path}: truncated IDX header; download the file again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header < expected:
        raise UnisslError(f"{path}: truncated IDX file ({len(raw) - header} of {expected} data bytes); "
                          f"download it again")
    if len(raw) - header > expected:
        raise UnisslError(f"{path}: {len(raw) - header - expected} trailing bytes after the IDX data; "
                          f"the file is corrupt, download it again")
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends with ``.gz``), atomically."""
    path = Path(path)
    codes = {dt.newbyteorder("=").str[1:]: code for code, dt in IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with atomic_file(path, "wb") as f:
        f.write(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError("data_dir", f"fashion-mnist: {data_dir / stem}[.gz] not found; apt-get install "
                                  "dataset-fashion-mnist or set it to the directory holding the IDX files")


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       image_size: int | None = None, channels: int | None = None) -> InMemoryImageDataset:
    """Fashion-MNIST ``train`` (60000) or ``test`` (10000): 1x28x28 uint8 images, 10 named classes."""
    if split not in _FASHION_FILES:
        raise UnisslError(f"fashion-mnist: unknown split {split!r}; choose one of {sorted(_FASHION_FILES)}")
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise ConfigError("data_dir", f"fashion-mnist: directory {root} not found; apt-get install "
                                      "dataset-fashion-mnist or set it to the directory holding the IDX files")
    img_file, lbl_file = (_find(root, stem) for stem in _FASHION_FILES[split])
    images = read_idx(img_file, ndim=3)  # (N, 28, 28)
    labels = read_idx(lbl_file, ndim=1)  # (N,)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise UnisslError(f"fashion-mnist: {img_file} / {lbl_file} must hold unsigned bytes, "
                          f"got {images.dtype} / {labels.dtype}")
    if len(images) != len(labels):
        raise UnisslError(f"fashion-mnist: {img_file} has {len(images)} images but {lbl_file} has "
                          f"{len(labels)} labels; the files do not belong together")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UnisslError(f"fashion-mnist: {lbl_file} holds label {int(labels.max())} >= 10; the file is corrupt")
    return InMemoryImageDataset(
        "fashion-mnist", split, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES, image_size=image_size, channels=channels)
