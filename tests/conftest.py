"""Shared test fixtures (kept small): offline Hugging Face hub and a tiny in-memory dataset."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests use tiny tensors: extra intra-op threads only add contention (10x slower on a shared 2-core box).
torch.set_num_threads(int(os.environ.get("UNISSL_TEST_THREADS", "1")))


@pytest.fixture
def tiny_dataset():
    """24 random RGB 8x8 images in 3 classes as an :class:`~unissl.data.InMemoryImageDataset`."""
    from unissl.data import InMemoryImageDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 8, 8), generator=g, dtype=torch.uint8)  # (N, C, H, W)
    labels = torch.arange(24) % 3  # (N,)
    return InMemoryImageDataset("tiny", "train", images, labels, ["a", "b", "c"])
