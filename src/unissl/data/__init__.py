"""Data: image datasets (``build_dataset``), the resumable sharded sampler and the token store."""

from unissl.data.sampler import ShardedBatchSampler, collate_batched, epoch_permutation

__all__ = ["ShardedBatchSampler", "collate_batched", "epoch_permutation"]
