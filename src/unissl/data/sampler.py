"""A seeded, resumable, rank-sharded batch sampler.

The unit is the *global* batch: every epoch is one permutation of ``range(num_items)`` drawn from a
``torch.Generator`` seeded with ``(seed, epoch)``; it is cut into global batches and rank ``r`` takes the
``r``-th contiguous slice of each. The union over ranks therefore equals the batch a single process
would see, so the index stream does not depend on the number of processes (and a run can resume on a
different world size).

The position is ``(epoch, step_in_epoch)`` and, because ``steps_per_epoch`` is fixed, it is a pure
function of the global step: :meth:`ShardedBatchSampler.set_global_step` restores it from a step counter.
Note that a ``DataLoader`` with workers draws batches from the sampler ahead of training (prefetch), so
a trainer should checkpoint the number of *consumed* steps and call ``set_global_step`` on resume rather
than trust the sampler's live ``state_dict()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from unissl.errors import UnisslError


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation (num_items,) int64 of one epoch, a pure function of ``(seed, epoch)``."""
    # Hash (seed, epoch) into one 63-bit seed so that nearby (seed, epoch) pairs give unrelated streams.
    digest = hashlib.sha256(f"unissl-sampler:{seed}:{epoch}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randperm(num_items, generator=g)


class ShardedBatchSampler:
    """Infinite iterator over this rank's per-step index lists (length ``global_batch // world_size``).

    Args:
        num_items: size of the dataset.
        global_batch: images per optimizer step summed over all ranks.
        rank, world_size: this process and the number of processes (``global_batch % world_size == 0``).
        seed: base seed; epoch ``e`` uses the permutation of ``(seed, e)``.
        drop_last: drop the incomplete last global batch of an epoch. If false, the last batch is
            completed with the first indices of the same epoch's permutation (every rank keeps the
            same batch size, as DDP needs).
    """

    def __init__(self, num_items: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, drop_last: bool = True) -> None:
        if num_items <= 0:
            raise UnisslError(f"sampler: the dataset is empty (num_items={num_items}); check the data path")
        if global_batch <= 0:
            raise UnisslError(f"sampler: global_batch must be positive, got {global_batch}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise UnisslError(f"sampler: invalid rank {rank} for world_size {world_size}")
        if global_batch % world_size:
            raise UnisslError(f"sampler: global batch {global_batch} is not divisible by world size {world_size}; "
                              f"choose a multiple of {world_size}")
        if drop_last and global_batch > num_items:
            raise UnisslError(f"sampler: global batch {global_batch} is larger than the dataset ({num_items} items) "
                              f"with drop_last; lower the batch size")
        self.num_items = int(num_items)
        self.global_batch = int(global_batch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.local_batch = self.global_batch // self.world_size
        if self.drop_last:
            self.steps_per_epoch = self.num_items // self.global_batch
        else:
            self.steps_per_epoch = -(-self.num_items // self.global_batch)
        self.epoch = 0
        self.step_in_epoch = 0

    # ------------------------------------------------------------------ position
    def set_global_step(self, step: int) -> None:
        """Position the sampler so that the next batch is the one of global step ``step``."""
        if step < 0:
            raise UnisslError(f"sampler: global step must be >= 0, got {step}")
        self.epoch, self.step_in_epoch = divmod(int(step), self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The position and the settings that define the stream (plain ints, JSON-safe)."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "num_items": self.num_items, "global_batch": self.global_batch,
                "drop_last": self.drop_last, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the stream must be the same (items, global batch, seed)."""
        for key in ("seed", "num_items", "global_batch", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise UnisslError(f"sampler: cannot resume, checkpoint has {key}={state[key]} but this run has "
                                  f"{getattr(self, key)}; use the same data and batch settings to resume")
        step = int(state["step_in_epoch"])
        if not 0 <= step <= self.steps_per_epoch:
            raise UnisslError(f"sampler: step_in_epoch={step} outside [0, {self.steps_per_epoch}] in the checkpoint")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = step
        if self.step_in_epoch == self.steps_per_epoch:  # saved exactly at an epoch boundary
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    # ------------------------------------------------------------------ iteration
    def _global_batch(self, perm: torch.Tensor, step: int) -> torch.Tensor:
        """Step ``step`` of the epoch permutation ``perm`` (N,) -> (global_batch,) indices."""
        start = step * self.global_batch
        batch = perm[start:start + self.global_batch]
        if len(batch) < self.global_batch:  # only when drop_last is false: wrap around within the epoch
            reps = -(-self.global_batch // self.num_items)
            batch = torch.cat([batch, perm.repeat(reps)[: self.global_batch - len(batch)]])
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's indices step after step, forever, starting at the current position."""
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        while True:
            perm = epoch_permutation(self.num_items, self.seed, self.epoch)  # (N,)
            while self.step_in_epoch < self.steps_per_epoch:
                batch = self._global_batch(perm, self.step_in_epoch)  # (global_batch,)
                # Advance before yielding, so state_dict() taken after consuming a batch points past it.
                self.step_in_epoch += 1
                yield batch[lo:hi].tolist()
            self.epoch, self.step_in_epoch = self.epoch + 1, 0


def collate_batched(batch: Any) -> Any:
    """Identity collate for datasets with ``__getitems__`` (the batch is already stacked tensors)."""
    return batch
