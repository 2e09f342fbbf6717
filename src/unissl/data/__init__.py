"""Data: image datasets (``build_dataset``), the resumable sharded sampler and the token store."""

from unissl.data.base import InMemoryImageDataset
from unissl.data.datasets import DATASETS, build_dataset
from unissl.data.sampler import ShardedBatchSampler, collate_batched, epoch_permutation

__all__ = ["DATASETS", "InMemoryImageDataset", "ShardedBatchSampler", "build_dataset", "collate_batched",
           "epoch_permutation"]
