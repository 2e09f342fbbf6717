"""Image folders: ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``), any PIL-readable file.

Images are decoded once, resized (shorter side, bilinear with antialias) and center-cropped to
``image_size``, converted to RGB (``channels=3``) or grayscale (``channels=1``) and kept as one uint8
tensor.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unissl.data.base import InMemoryImageDataset
from unissl.errors import ConfigError, UnisslError


def decode_image(source: str | os.PathLike | bytes, image_size: int | None, channels: int,
                 where: str) -> np.ndarray:
    """Decode an image file/bytes -> uint8 (H, W, C), resized + center-cropped to ``image_size``.

    ``where`` names the file in the error raised for an unreadable image.
    """
    if channels not in (1, 3):
        raise UnisslError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
            img = opened.convert("RGB" if channels == 3 else "L")
            if image_size is not None:
                img = resize_center_crop(img, image_size)
            arr = np.array(img, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnisslError(f"cannot read image {where} ({e}); delete or replace the file") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased by PIL) and crop the center square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_split_dir(root: Path, split: str) -> Path:
    """``root/split`` if it exists, else ``root`` itself for the train split."""
    if not root.is_dir():
        raise ConfigError("data_dir", f"folder dataset: directory {root} not found; give a directory with one "
                                      "sub-folder per class")
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise UnisslError(f"folder dataset: no {root / split} directory; lay the data out as "
                      f"{root}/<split>/<class>/<image> or use split 'train' for {root}/<class>/<image>")


def load_folder(data_dir: str | os.PathLike | None, split: str = "train", image_size: int | None = None,
                channels: int = 3) -> InMemoryImageDataset:
    """All images under ``data_dir[/split]/<class>/`` in memory; labels follow the sorted class names.

    Without ``image_size`` the shorter side of the first image is used (every image is cropped to it).
    """
    if data_dir is None:
        raise ConfigError("data_dir", "the folder dataset needs a directory with one sub-folder per class")
    root = resolve_split_dir(Path(data_dir), split)
    class_dirs = _class_dirs(root)
    if not class_dirs:
        raise UnisslError(f"folder dataset: {root} has no class sub-folders; put images in {root}/<class>/")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, cdir in enumerate(class_dirs):
        for path in sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if image_size is None:  # fix the size from the first image
                image_size = min(decode_image(path, None, channels, str(path)).shape[:2])
            images.append(decode_image(path, image_size, channels, str(path)))  # (S, S, C)
            labels.append(label)
    if not images:
        raise ConfigError("data_dir", f"folder dataset: no images under {root}/<class>/; add image files or fix it")
    arr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S) uint8
    return InMemoryImageDataset("folder", split, arr, torch.tensor(labels, dtype=torch.int64),
                                [d.name for d in class_dirs], channels=channels)

