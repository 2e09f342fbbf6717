"""Data: image datasets (``build_dataset``), the resumable sharded sampler and the token store."""

from unissl.data.base import InMemoryImageDataset
from unissl.data.datasets import DATASETS, build_dataset
from unissl.data.sampler import ShardedBatchSampler, collate_batched, epoch_permutation
from unissl.data.token_store import TokenStore
from unissl.data.token_writer import write_array_store, write_token_store

__all__ = ["DATASETS", "InMemoryImageDataset", "ShardedBatchSampler", "TokenStore", "build_dataset",
           "collate_batched", "epoch_permutation", "write_array_store", "write_token_store"]
