"""WebDataset-style tar shards read with random access.

A shard is an uncompressed ``.tar`` whose members are grouped into samples by key (the member path up
to the first dot of its file name, as in WebDataset): ``000001.jpg`` + ``000001.cls`` is one sample. The
image is any PIL-readable member (``jpg``, ``png``, ...); the label comes from ``cls`` / ``label`` (an
integer as text) or ``json`` (``{"label": int}``).

Opening the dataset reads only the tar headers and builds an index (shard, byte offset, size, label);
``ds[i]`` seeks to the image bytes and decodes them, so the dataset is map-style and works with the
:class:`~unissl.data.sampler.ShardedBatchSampler` like every other dataset. Shards are found as
``data_dir/<split>/*.tar``, ``data_dir/<split>-*.tar`` or ``data_dir/<split>_*.tar``; class names come
from an optional ``classes.txt`` (one per line) next to the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from unissl.data.base import match_channels
from unissl.data.folder import decode_image
from unissl.errors import ConfigError, UnisslError

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff", "gif"}
LABEL_EXTENSIONS = ("cls", "label", "json")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's image bytes are: shard index, byte offset and size inside the tar; its label."""

    shard: int
    offset: int
    size: int
    label: int
    key: str


def find_shards(data_dir: Path, split: str) -> list[Path]:
    """The sorted ``.tar`` shards of ``split`` under ``data_dir`` (see the module docstring)."""
    if not data_dir.is_dir():
        raise ConfigError("data_dir", f"webdataset: directory {data_dir} not found; give the directory holding "
                                      "the .tar shards")
    patterns = [(data_dir / split, "*.tar"), (data_dir, f"{split}-*.tar"), (data_dir, f"{split}_*.tar")]
    for folder, pattern in patterns:
        if folder.is_dir():
            shards = sorted(folder.glob(pattern))
            if shards:
                return shards
    compressed = sorted(data_dir.rglob("*.tar.gz")) + sorted(data_dir.rglob("*.tgz"))
    hint = f" ({compressed[0]} is compressed: gunzip the shards, random access needs plain .tar)" if compressed else ""
    raise UnisslError(f"webdataset: no shards for split {split!r} in {data_dir}{hint}; "
                      f"expected {data_dir}/{split}/*.tar or {data_dir}/{split}-*.tar")


def _split_key(member_name: str) -> tuple[str, str]:
    """``dir/000001.seg.png`` -> (``dir/000001``, ``seg.png``)."""
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _parse_label(raw: bytes, ext: str, where: str) -> int:
    try:
        if ext == "json":
            value = json.loads(raw.decode())["label"]
        else:
            value = raw.decode().strip()
        return int(value)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UnisslError(f"webdataset: {where} does not hold an integer label ({e}); fix the shard") from e


def index_shard(path: Path, shard_id: int) -> list[SampleRef]:
    """Scan the headers of one tar shard into sample references (reads only label members)."""
    refs: list[SampleRef] = []
    try:
        with tarfile.open(path, "r:") as tar:
            images: dict[str, tarfile.TarInfo] = {}
            labels: dict[str, int] = {}
            order: list[str] = []
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = _split_key(m.name)
                if ext in IMAGE_EXTENSIONS or ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                    if key not in images:
                        order.append(key)
                    images[key] = m
                elif ext in LABEL_EXTENSIONS:
                    f = tar.extractfile(m)
                    labels[key] = _parse_label(f.read() if f else b"", ext, f"{path}:{m.name}")
            for key in order:
                if key not in labels:
                    raise UnisslError(f"webdataset: sample {key!r} in {path} has no .cls/.label/.json label; "
                                      f"add one per image")
                m = images[key]
                refs.append(SampleRef(shard_id, m.offset_data, m.size, labels[key], key))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UnisslError(f"webdataset: cannot read shard {path} ({e}); the file is corrupt or truncated") from e
    return refs


class WebDatasetShards(Dataset):
    """Map-style dataset over tar shards; images decoded on access, resized + center-cropped."""

    def __init__(self, data_dir: str | os.PathLike | None, split: str = "train", image_size: int | None = None,
                 channels: int = 3, shards: Sequence[str | os.PathLike] | None = None) -> None:
        if shards is None:
            if data_dir is None:
                raise ConfigError("data_dir", "the webdataset needs the directory holding the .tar shards")
            self.shards = find_shards(Path(data_dir), split)
        else:
            self.shards = [Path(s) for s in shards]
            for s in self.shards:
                if not s.is_file():
                    raise UnisslError(f"webdataset: shard {s} not found")
        self.samples: list[SampleRef] = []
        for i, path in enumerate(self.shards):
            self.samples += index_shard(path, i)
        if not self.samples:
            raise UnisslError(f"webdataset: no image samples in {self.shards[0].parent}; check the shards")
        self.name = "webdataset"
        self.split = split
        self._decode_channels = 3 if channels == 3 else 1
        self.channels = int(channels)
        if image_size is None:  # fix the size from the first image
            image_size = min(self._decode(0, None).shape[:2])
        self.image_size = int(image_size)
        self.classes = self._class_names()
        self.num_classes = len(self.classes)
        self._labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)  # (N,)

    def _class_names(self) -> list[str]:
        top = max(s.label for s in self.samples)
        for folder in {self.shards[0].parent, self.shards[0].parent.parent}:
            path = folder / "classes.txt"
            if path.is_file():
                names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                if len(names) <= top:
                    raise UnisslError(f"webdataset: {path} lists {len(names)} classes but a shard has label {top}; "
                                      f"fix classes.txt")
                return names
        return [str(i) for i in range(top + 1)]

    def _decode(self, i: int, size: int | None):
        ref = self.samples[i]
        path = self.shards[ref.shard]
        with open(path, "rb") as f:
            f.seek(ref.offset)
            raw = f.read(ref.size)
        if len(raw) != ref.size:
            raise UnisslError(f"webdataset: shard {path} is truncated at sample {ref.key!r}; rebuild the shard")
        return decode_image(raw, size, self._decode_channels, f"{path}:{ref.key}")  # (S, S, C) uint8

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """All labels (N,) int64."""
        return self._labels

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        arr = self._decode(i, self.image_size)
        img = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)  # (C, S, S)
        return {"image": match_channels(img, self.channels, self.name), "label": self._labels[i].clone()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        items = [self[i] for i in indices]
        return {"image": torch.stack([it["image"] for it in items]),  # (B, C, S, S)
                "label": torch.stack([it["label"] for it in items])}  # (B,)

    def fingerprint(self) -> str:
        """``webdataset:split:CxSxS:count:sha256[:16]`` over shard names, member keys, sizes and labels."""
        h = hashlib.sha256()
        for ref in self.samples:
            h.update(f"{self.shards[ref.shard].name}|{ref.key}|{ref.size}|{ref.label}\n".encode())
        s = self.image_size
        return f"{self.name}:{self.split}:{self.channels}x{s}x{s}:{len(self)}:{h.hexdigest()[:16]}"
