"""The image-dataset contract and an in-memory implementation.

Every dataset returns ``{"image": float32 (C, H, W) in [0, 1], "label": int64 scalar}`` from ``ds[i]`` and
the stacked ``{"image": (B, C, H, W), "label": (B,)}`` from ``ds.__getitems__(indices)`` (what the
``DataLoader`` calls with a batch sampler). Small datasets (digits, Fashion-MNIST, image folders) keep
one tensor in memory and ``__getitems__`` is a single vectorised gather.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unissl.errors import UnisslError


@runtime_checkable
class ImageDataset(Protocol):
    """The image-dataset contract (``docs/DESIGN.md``) that evaluation and caching rely on.

    ``__getitems__(indices) -> {"image": float32 (B, C, H, W) in [0, 1], "label": int64 (B,)}`` and a
    ``fingerprint()`` naming the split's content (feature caches key on it). The registry's datasets also carry
    ``name``, ``split``, ``classes``, ``num_classes``, ``channels`` and ``image_size``.
    """

    def __len__(self) -> int: ...

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]: ...

    def fingerprint(self) -> str: ...


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize square-or-not ``images`` (N, C, H, W) to (N, C, size, size), bilinear with antialias.

    uint8 input is processed in float chunks and rounded back to uint8 (memory stays ~uint8 sized).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = torch.empty((n, c, size, size), dtype=images.dtype)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].float()  # (b, C, H, W)
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if images.dtype == torch.uint8:
            y = y.round().clamp(0, 255)
        out[start:start + chunk] = y.to(images.dtype)
    return out


def adapt_images(images: torch.Tensor, channels: int | None = None, size: int | None = None,
                 where: str = "images") -> torch.Tensor:
    """The one image adaptation of datasets, evaluation and encoders: match ``channels`` (grey -> RGB by
    repetition, RGB -> grey by BT.601 luma) and resize to ``size`` x ``size`` (bilinear, antialiased), so
    training and evaluation see the same pixels. (N, C, H, W) uint8 or float in [0, 1], dtype kept."""
    x = images if channels is None else match_channels(images, channels, where)
    if size is not None and x.shape[-2:] != (size, size):
        x = resize_images(x, size)
        if x.is_floating_point():
            x = x.clamp(0, 1)
    return x


def to_float_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images (N, C, H, W) (or (N, H, W): one channel) -> float32 in [0, 1].

    The one image conversion of unissl (datasets, generated samples, ``.npz`` files). A shape that is not
    (N, C, H, W), channels-last images and floats outside [0, 1] (beyond 1e-3) are one-line errors.
    """
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UnisslError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise UnisslError(f"images look channels-last {tuple(x.shape)}; store them as (N, C, H, W)")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    x = x.float()
    if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise UnisslError(f"float images must lie in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    return x.clamp(0, 1)


def match_channels(x: torch.Tensor, channels: int, where: str) -> torch.Tensor:
    """Convert (…, C, H, W) images to ``channels``: grey -> RGB by repetition, RGB -> grey by luma."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
        return (x.float() * weights).sum(dim=-3, keepdim=True)
    raise UnisslError(f"{where}: cannot convert {c}-channel images to {channels} channels; use channels 1 or 3")


class InMemoryImageDataset(Dataset):
    """Images held as one tensor (N, C, H, W) (uint8 0..255, or float in [0, 1]) plus labels (N,).

    Attributes follow the data contract: ``name``, ``split``, ``classes``, ``num_classes``, ``channels``,
    ``image_size`` (side of the square images), ``fingerprint()``.
    """

    def __init__(self, name: str, split: str, images: torch.Tensor, labels: torch.Tensor,
                 classes: Sequence[str], image_size: int | None = None, channels: int | None = None) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        if image_size is not None:
            if image_size <= 0:
                raise UnisslError(f"{name}: image_size must be positive, got {image_size}")
            images = resize_images(images, image_size)
        self.name = name
        self.split = split
        self.classes = [str(c) for c in classes]
        self.num_classes = len(self.classes)
        self._images = images.contiguous()  # (N, C, H, W) uint8 or float32
        self._labels = labels.to(torch.int64).contiguous()  # (N,)
        self._native_channels = int(images.shape[1])
        self.channels = int(channels or self._native_channels)
        match_channels(self._images[:1], self.channels, name)  # validate the conversion once
        self.image_size = int(images.shape[-1])
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self._images.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """All labels (N,) int64 (for stratified sampling, few-shot subsets, ...)."""
        return self._labels

    def _images_at(self, idx: torch.Tensor) -> torch.Tensor:
        x = to_float_images(self._images[idx])  # (B, C, H, W)
        return match_channels(x, self.channels, self.name).contiguous()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}[{i}] out of range for {len(self)} images")
        idx = torch.tensor([i])
        return {"image": self._images_at(idx)[0], "label": self._labels[i].clone()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)  # (B,)
        return {"image": self._images_at(idx), "label": self._labels[idx]}

    def fingerprint(self) -> str:
        """``name:split:CxHxW:count:sha256[:16]`` of the stored pixels and labels (stable across runs)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(self._images.dtype).encode())
            h.update(self._images.numpy().tobytes())
            h.update(self._labels.numpy().tobytes())
            c, hh, ww = self.channels, self._images.shape[-2], self._images.shape[-1]
            self._fingerprint = f"{self.name}:{self.split}:{c}x{hh}x{ww}:{len(self)}:{h.hexdigest()[:16]}"
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"channels={self.channels}, image_size={self.image_size}, num_classes={self.num_classes})")


class FirstN:
    """The first ``n`` items of a dataset that supports ``__getitems__`` (attributes are forwarded)."""

    def __init__(self, dataset: ImageDataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        if any(not 0 <= i < self.n for i in indices):
            raise IndexError(f"index out of range for the first {self.n} items")
        return self.dataset.__getitems__(indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def fingerprint(self) -> str:
        return f"{self.dataset.fingerprint()}:first{self.n}"

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. while unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)
