"""The dataset registry: ``build_dataset(name, split, data_dir, image_size, **kw)``.

==================  ======================================================================  =============
name                source                                                                  splits
==================  ======================================================================  =============
``digits``          scikit-learn's 1797 8x8 handwritten digits (values / 16), 1x8x8         train 1500 / test 297
``fashion-mnist``   IDX files in ``/usr/share/datasets/fashion-mnist`` (or ``data_dir``)     train 60000 / test 10000
``folder``          ``data_dir[/split]/<class>/<image>``, any PIL-readable image             train (+ any sub-folder)
``webdataset``      ``.tar`` shards in ``data_dir`` (see :mod:`unissl.data.webdataset`)      any
==================  ======================================================================  =============

``image_size`` resizes (bilinear, antialiased; e.g. digits 8 -> 16); ``channels`` (1 or 3) converts
grayscale <-> RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unissl.data.base import InMemoryImageDataset
from unissl.data.folder import load_folder
from unissl.data.idx import load_fashion_mnist
from unissl.data.webdataset import WebDatasetShards
from unissl.errors import UnisslError

DIGITS_TEST_SIZE = 297  # 1797 = 1500 train + 297 test
DIGITS_SPLIT_SEED = 0


def load_digits(split: str = "train", data_dir: str | os.PathLike | None = None, image_size: int | None = None,
                channels: int | None = None) -> InMemoryImageDataset:
    """scikit-learn digits: a fixed stratified split (seed 0) into 1500 train / 297 test images."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise UnisslError(f"digits: unknown split {split!r}; choose 'train' or 'test'")
    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)  # (1797,)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_SIZE,
                                           random_state=DIGITS_SPLIT_SEED, stratify=labels)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return InMemoryImageDataset("digits", split, torch.from_numpy(images[idx]).unsqueeze(1),
                                torch.from_numpy(labels[idx]), [str(d) for d in range(10)],
                                image_size=image_size, channels=channels)


def _load_webdataset(split: str = "train", data_dir: str | os.PathLike | None = None,
                     image_size: int | None = None, channels: int | None = None, **kw: Any) -> WebDatasetShards:
    return WebDatasetShards(data_dir, split, image_size=image_size, channels=channels or 3, **kw)


def _load_folder(split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, channels: int | None = None) -> InMemoryImageDataset:
    return load_folder(data_dir, split, image_size=image_size, channels=channels or 3)


# name -> loader(split, data_dir, image_size, channels, **kw)
DATASETS: dict[str, Callable[..., Any]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "folder": _load_folder,
    "webdataset": _load_webdataset,
}


def build_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                  image_size: int | None = None, **kw: Any):
    """Build a registered image dataset (see the table in this module's docstring)."""
    if name not in DATASETS:
        raise UnisslError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name](split=split, data_dir=data_dir, image_size=image_size, **kw)
