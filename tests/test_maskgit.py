"""MaskGIT decoding: schedule, known ids are never re-masked, every position is filled at the end."""

from __future__ import annotations

import math

import torch

from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate, num_masked_after
from unissl.methods.sorcen.model import SorcenModel
from unissl.methods.sorcen.presets import PRESETS


def test_cosine_schedule_counts():
    n, t = 256, 20
    counts = [num_masked_after(s, t, n) for s in range(t)]
    assert counts[0] == math.floor(256 * math.cos(math.pi / 2 / 20)) == 255
    assert counts[-1] == 0 and all(a >= b for a, b in zip(counts, counts[1:]))


def test_generation_never_remasks_a_known_id():
    torch.manual_seed(0)
    model = SorcenModel(PRESETS["tiny"])
    mask = model.special.mask
    init = torch.full((5, 4, 4), mask)
    init[:, 0, :2] = torch.tensor([3, 7])  # given ids
    history: list[torch.Tensor] = []
    g = torch.Generator().manual_seed(0)
    out = maskgit_generate(model, 5, MaskGITConfig(steps=8), init_ids=init, generator=g, history=history)
    assert out.shape == (5, 4, 4)
    assert (out < model.arch.codebook_size).all()  # no [MASK] left, only codes
    assert torch.equal(out[:, 0, :2], init[:, 0, :2])
    prev = init
    for ids in history:  # once known, an id stays exactly as it was
        known = prev != mask
        assert torch.equal(ids[known], prev[known])
        assert (ids != mask).sum() > (prev != mask).sum()  # progress every step
        prev = ids
    assert model.training  # mode restored


def test_generation_follows_the_cosine_schedule_from_all_mask():
    torch.manual_seed(0)
    model = SorcenModel(PRESETS["tiny"])
    history: list[torch.Tensor] = []
    maskgit_generate(model, 3, MaskGITConfig(steps=6), history=history)
    n = 16
    for s, ids in enumerate(history):
        expected = num_masked_after(s, 6, n) if s < 5 else 0
        assert ((ids == model.special.mask).sum((1, 2)) == expected).all()


def test_generation_is_reproducible_with_a_generator():
    torch.manual_seed(0)
    model = SorcenModel(PRESETS["tiny"])
    a = maskgit_generate(model, 4, MaskGITConfig(steps=4), generator=torch.Generator().manual_seed(3))
    b = maskgit_generate(model, 4, MaskGITConfig(steps=4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
