"""ShardedBatchSampler: rank slices, epochs as permutations, exact resume."""

from __future__ import annotations

import itertools

import pytest
import torch

from unissl.data import ShardedBatchSampler, collate_batched
from unissl.errors import UnisslError


def take(sampler: ShardedBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


def test_union_of_rank_slices_is_the_single_process_batch() -> None:
    single = take(ShardedBatchSampler(103, 12, seed=3), 25)  # crosses epoch boundaries (8 steps/epoch)
    per_rank = [take(ShardedBatchSampler(103, 12, rank=r, world_size=4, seed=3), 25) for r in range(4)]
    for step in range(25):
        assert all(len(per_rank[r][step]) == 3 for r in range(4))
        assert sum((per_rank[r][step] for r in range(4)), []) == single[step]


def test_epochs_are_permutations_and_differ() -> None:
    s = ShardedBatchSampler(40, 8, seed=0)
    assert s.steps_per_epoch == 5
    batches = take(s, 15)
    epochs = [sum(batches[e * 5:(e + 1) * 5], []) for e in range(3)]
    for ep in epochs:
        assert sorted(ep) == list(range(40))
    assert epochs[0] != epochs[1] != epochs[2]
    assert s.epoch == 2
    # Same seed -> same stream; different seed -> different stream.
    assert take(ShardedBatchSampler(40, 8, seed=0), 15) == batches
    assert take(ShardedBatchSampler(40, 8, seed=1), 5) != batches[:5]


def test_drop_last_false_completes_the_last_batch() -> None:
    s = ShardedBatchSampler(10, 4, drop_last=False, world_size=2, rank=1)
    assert s.steps_per_epoch == 3
    full = ShardedBatchSampler(10, 4, drop_last=False)
    epoch0 = take(full, 3)
    assert sorted(set(sum(epoch0, []))) == list(range(10))
    assert epoch0[2][2:] == epoch0[0][:2]  # padded with the start of the same permutation
    assert [b for b in take(s, 3)] == [b[2:] for b in epoch0]


@pytest.mark.parametrize("cut", [0, 3, 7, 8, 13])
def test_resume_mid_epoch_gives_identical_stream(cut: int) -> None:
    ref = take(ShardedBatchSampler(61, 6, rank=1, world_size=2, seed=7), 30)
    s = ShardedBatchSampler(61, 6, rank=1, world_size=2, seed=7)
    it = iter(s)
    first = [next(it) for _ in range(cut)]
    state = s.state_dict()
    assert set(state) >= {"epoch", "step_in_epoch", "seed"}
    resumed = ShardedBatchSampler(61, 6, rank=1, world_size=2, seed=7)
    resumed.load_state_dict(state)
    assert first + take(resumed, 30 - cut) == ref
    # The same from a consumed-step counter (what a trainer with prefetching should store).
    by_step = ShardedBatchSampler(61, 6, rank=1, world_size=2, seed=7)
    by_step.set_global_step(cut)
    assert take(by_step, 30 - cut) == ref[cut:]


def test_resume_on_another_world_size_keeps_the_global_stream() -> None:
    ref = take(ShardedBatchSampler(50, 8, seed=2), 12)
    s = ShardedBatchSampler(50, 8, seed=2)
    take(s, 5)
    state = s.state_dict()
    halves = []
    for r in range(2):
        t = ShardedBatchSampler(50, 8, rank=r, world_size=2, seed=2)
        t.load_state_dict(state)
        halves.append(take(t, 7))
    assert [a + b for a, b in zip(*halves)] == ref[5:]


def test_errors() -> None:
    with pytest.raises(UnisslError, match="divisible"):
        ShardedBatchSampler(100, 10, world_size=3)
    with pytest.raises(UnisslError, match="larger than the dataset"):
        ShardedBatchSampler(5, 8)
    with pytest.raises(UnisslError, match="empty"):
        ShardedBatchSampler(0, 1)
    s = ShardedBatchSampler(100, 10, seed=0)
    with pytest.raises(UnisslError, match="seed"):
        s.load_state_dict({"epoch": 0, "step_in_epoch": 1, "seed": 1})


def test_works_with_dataloader_and_getitems() -> None:
    class Squares(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 20

        def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
            t = torch.tensor(idx)
            return {"x": t * t, "i": t}

    sampler = ShardedBatchSampler(20, 4, seed=5)
    loader = torch.utils.data.DataLoader(Squares(), batch_sampler=sampler, collate_fn=collate_batched)
    batches = list(itertools.islice(iter(loader), 7))
    ref = take(ShardedBatchSampler(20, 4, seed=5), 7)
    for b, idx in zip(batches, ref):
        assert b["i"].tolist() == idx
        assert torch.equal(b["x"], b["i"] ** 2)
