"""Sorcen / MAGE / MAGE-C: masking counts, echo sampling, window mask, EMA, presets, losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unissl.methods.sorcen.augment import random_resized_crop_flip
from unissl.methods.sorcen.config import EchoConfig, MaskingConfig, SorcenConfig, TeacherConfig
from unissl.methods.sorcen.echo import sample_echo
from unissl.methods.sorcen.losses import masked_token_loss
from unissl.methods.sorcen.masking import (
    masking_counts,
    random_masking,
    sample_mask_ratio,
    sample_window_side,
    window_mask,
)
from unissl.methods.sorcen.method import build_method
from unissl.methods.sorcen.model import SorcenModel, SpecialIds
from unissl.methods.sorcen.presets import PRESETS, arch_for_store


# ------------------------------------------------------------------ masking
@pytest.mark.parametrize("n", [16, 49, 256])
def test_mask_and_drop_counts_are_exact_across_ratios(n):
    g = torch.Generator().manual_seed(0)
    for ratio in torch.linspace(0.5, 1.0, 11).tolist():
        m = random_masking(32, n, ratio, 0.5, generator=g)
        num_masked, num_dropped = math.ceil(n * ratio - 1e-9), math.ceil(n * 0.5)
        assert (num_masked, num_dropped) == masking_counts(n, ratio)
        assert (m.token_mask.sum(1) == num_masked).all()
        assert (m.drop_mask.sum(1) == num_dropped).all()
        assert (m.drop_mask <= m.token_mask).all()  # dropped set inside the masked set
        assert m.keep_index.shape == (32, n - num_dropped)
        assert (m.keep_index.diff(dim=1) > 0).all()  # sorted, distinct
        kept = torch.zeros(32, n, dtype=torch.bool).scatter(1, m.keep_index, True)
        assert torch.equal(kept, ~m.drop_mask)


def test_mask_ratio_is_truncated_normal():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([sample_mask_ratio(generator=g) for _ in range(4000)])
    assert r.min() >= 0.5 and r.max() <= 1.0
    # closed-form mean of N(0.55, 0.25) truncated to [0.5, 1]: mu + sigma (phi(a) - phi(b)) / (Phi(b) - Phi(a))
    nd = torch.distributions.Normal(0.0, 1.0)
    a, b = torch.tensor(-0.2), torch.tensor(1.8)
    pdf = lambda x: torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mean = 0.55 + 0.25 * (pdf(a) - pdf(b)) / (nd.cdf(b) - nd.cdf(a))
    assert abs(float(r.mean()) - float(mean)) < 0.01
    assert abs(float(mean) - 0.6935) < 1e-3


def test_window_mask_keeps_one_square_per_sample():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (50, 8, 8), generator=g)
    sides = {sample_window_side((8, 8), generator=g) for _ in range(200)}
    assert sides == set(range(4, 9))  # U[h/2, h]
    for side in (4, 5, 8):
        out = window_mask(ids, side, mask_id=99, generator=g)
        kept = out != 99
        assert (kept.sum((1, 2)) == side * side).all()
        assert torch.equal(out[kept], ids[kept])
        rows, cols = kept.any(2), kept.any(1)  # (B, h), (B, w)
        assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()  # a square, not scattered
    tops = {int(window_mask(ids[:1], 4, 99, generator=g)[0].ne(99).any(1).int().argmax()) for _ in range(60)}
    assert len(tops) > 1  # random position


# ------------------------------------------------------------------ echo
def test_echo_never_repeats_argmax_and_stays_in_topk():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 49, 64, generator=g) * 3
    echo = sample_echo(logits, k=15, generator=g)
    assert (echo != logits.argmax(-1)).all()
    top16 = logits.topk(16, dim=-1).indices
    assert (top16 == echo.unsqueeze(-1)).any(-1).all()


def test_echo_frequencies_follow_softmax_without_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([5.0, 2.0, 1.0, 0.0, -1.0, -9.0])
    echo = sample_echo(logits.expand(20000, 6), k=3, generator=g)
    freq = torch.bincount(echo, minlength=6).float() / 20000
    expected = torch.zeros(6)
    expected[1:4] = F.softmax(logits[1:4], dim=0)
    assert torch.allclose(freq, expected, atol=0.015)


def test_sorcen_uses_echo_after_warmup(monkeypatch):
    import unissl.methods.sorcen.method as method_mod

    calls = []
    real = method_mod.sample_echo
    monkeypatch.setattr(method_mod, "sample_echo", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=0.1)))
    ids = torch.randint(0, 16, (4, 4, 4))
    m({"ids": ids})
    assert m.in_echo_warmup() and not calls  # ground truth during the warm-up
    m.on_train_step_end(10, 100)
    assert not m.in_echo_warmup()
    m({"ids": ids})
    assert calls == [1]


def test_echo_warmup_units():
    ids = torch.randint(0, 16, (4, 4, 4))

    def warm(unit, value, step, total=1000, spe=100):
        m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=value, warmup_unit=unit)),
                         steps_per_epoch=spe)
        m.on_train_step_end(step, total)
        return m.in_echo_warmup()

    assert warm("fraction", 0.1, 99) and not warm("fraction", 0.1, 100)
    assert warm("steps", 250, 249) and not warm("steps", 250, 250)
    assert warm("epochs", 2.5, 249) and not warm("epochs", 2.5, 250)
    # the released rule: `epoch <= 10` with the 0-based epoch index, i.e. the first 11 epochs
    assert warm("released", 0.0, 1099) and not warm("released", 0.0, 1100)
    assert warm("released", 0.0, 1099, total=1100)  # a run of 11 epochs never samples echoes
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup_unit="released")))
    # accuracy: ground truth until the running masked top-1 reaches the threshold, then latched on
    m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=0.05, warmup_unit="accuracy")))
    m({"ids": ids})
    m._last_top1 = torch.tensor(0.4)
    m.on_train_step_end(1, 100)  # running mean 0.1 * 0.4 = 0.04 < 0.05
    assert m.in_echo_warmup()
    m.on_train_step_end(2, 100)  # 0.04 + 0.1 * (0.4 - 0.04) = 0.076 >= 0.05
    assert not m.in_echo_warmup()
    m._last_top1 = torch.tensor(0.0)
    m.on_train_step_end(3, 100)
    assert not m.in_echo_warmup() and bool(m.state_dict()["echo_live"])  # latched, and checkpointed


def test_released_teacher_options_and_epoch_momentum():
    torch.manual_seed(0)
    copy_ = build_method(PRESETS["tiny"], "sorcen")
    assert all(torch.equal(a, b) for a, b in zip(copy_.model.blocks.parameters(), copy_.teacher_blocks.parameters()))
    torch.manual_seed(0)
    cfg = SorcenConfig(teacher=TeacherConfig(init="random", projector_grad=True, momentum_schedule="epoch",
                                             momentum_epochs=1600))
    rel = build_method(PRESETS["tiny"], "sorcen", cfg, steps_per_epoch=10)
    differ = [not torch.equal(a, b) for a, b in zip(rel.model.blocks.parameters(), rel.teacher_blocks.parameters())
              if a.ndim > 1]
    assert all(differ)  # every weight matrix has its own init
    assert all(p.requires_grad for p in rel.teacher_projector.parameters())
    assert not any(p.requires_grad for p in rel.teacher_blocks.parameters())
    out = rel({"ids": torch.randint(0, 16, (6, 4, 4))})
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rel.teacher_projector.parameters()
               if p.ndim > 1)
    assert all(p.grad is None for p in rel.teacher_blocks.parameters())
    # epoch-wise momentum: constant within an epoch, the cosine over 1600 epochs (a short run stays ~0.996)
    assert rel.momentum_at(0, 100) == rel.momentum_at(9, 100) == pytest.approx(0.996)
    x = 5 / 1600
    assert rel.momentum_at(55, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi * x) + 1) / 2)


def test_uniformity_all_token_pooling_and_diagonal():
    from unissl.methods.sorcen.losses import uniformity_loss

    f = torch.randn(8, 5)
    n = F.normalize(f, dim=-1)
    sim2 = (n @ n.T).pow(2)
    assert uniformity_loss(f, gather=False, diagonal=True) == pytest.approx(sim2.mean().item(), abs=1e-6)
    off = (sim2.sum() - sim2.diag().sum()) / (8 * 7)
    assert uniformity_loss(f, gather=False) == pytest.approx(off.item(), abs=1e-6)


def test_decay_embeddings_option_groups():
    from unissl.engine.optim import no_decay_names

    default = no_decay_names(build_method(PRESETS["tiny"], "sorcen"))
    released = no_decay_names(build_method(PRESETS["tiny"], "sorcen", SorcenConfig(decay_embeddings=True)))
    assert {"model.embed.word.weight", "model.embed.position.weight", "model.decoder_pos"} <= default
    assert not {"model.embed.word.weight", "model.embed.position.weight", "model.decoder_pos"} & released
    assert all(name.endswith(("bias", "weight")) for name in released) and released < default


# ------------------------------------------------------------------ model semantics
def test_special_ids_derive_from_codebook_size():
    s = SpecialIds(1024)
    assert (s.mask, s.cls, s.vocab_size) == (1024, 1025, 1026)
    model = SorcenModel(PRESETS["tiny"])
    assert model.embed.word.num_embeddings == PRESETS["tiny"].codebook_size + 2


def test_dropped_and_masked_inputs_do_not_reach_the_logits():
    torch.manual_seed(0)
    model = SorcenModel(PRESETS["tiny"]).eval()
    ids = torch.randint(0, 16, (3, 16))
    m = random_masking(3, 16, 0.75, 0.5)
    _, logits = model(ids, m)
    changed = torch.where(m.token_mask, (ids + 1) % 16, ids)  # alter every masked / dropped id
    _, logits2 = model(changed, m)
    assert torch.allclose(logits, logits2, atol=1e-6)
    visible = (~m.token_mask).nonzero()[0]
    changed[visible[0], visible[1]] = (changed[visible[0], visible[1]] + 1) % 16
    _, logits3 = model(changed, m)
    assert not torch.allclose(logits, logits3, atol=1e-6)


def test_head_is_tied_to_detached_word_embeddings():
    model = SorcenModel(PRESETS["tiny"])
    ids = torch.randint(0, 16, (2, 16))
    m = random_masking(2, 16, 0.6)
    _, logits = model(ids, m)
    assert logits.shape == (2, 16, 16)  # K code logits only
    model.decoder_norm.register_forward_hook(lambda mod, i, o: setattr(model, "_h", o))
    _, logits = model(ids, m)
    h = model.head.norm(F.gelu(model.head.fc(model._h[:, 1:])))
    assert torch.allclose(logits, h @ model.embed.word.weight[:16].T + model.head.bias, atol=1e-5)
    # the word table gets no gradient through the head (only through the input embedding)
    model.zero_grad()
    logits.sum().backward()
    emb_grad_rows = model.embed.word.weight.grad.abs().sum(1) > 0
    used = torch.zeros(18, dtype=torch.bool)
    used[torch.where(m.token_mask, torch.full_like(ids, 16), ids).unique()] = True
    used[17] = True  # class slot
    kept_ids = torch.cat([torch.full((2, 1), 17), torch.where(m.token_mask, 16, ids).gather(1, m.keep_index)], 1)
    expected = torch.zeros(18, dtype=torch.bool)
    expected[kept_ids.unique()] = True
    assert torch.equal(emb_grad_rows, expected)


def test_masked_token_loss_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    total = 0.0
    for b in range(2):
        for i in range(5):
            if mask[b, i]:
                lp = logits[b, i].log_softmax(-1)
                total += 0.9 * -lp[targets[b, i]] + 0.1 * -lp.mean()
    assert torch.allclose(masked_token_loss(logits, targets, mask, 0.1), total / 6, atol=1e-5)


def test_class_embedding_override_replaces_the_class_slot():
    torch.manual_seed(0)
    model = SorcenModel(PRESETS["tiny"]).eval()
    ids = torch.randint(0, 16, (2, 4, 4))
    base = model.encode(ids)
    assert base.shape == (2, 17, 32)
    same = model.encode(ids, class_embedding_override=model.embed.word.weight[model.special.cls])
    assert torch.allclose(base, same, atol=1e-6)
    p = torch.zeros(32, requires_grad=True)
    out = model.encode(ids, class_embedding_override=p)
    assert not torch.allclose(out, base, atol=1e-4)
    out[:, 1:].mean().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------ EMA teacher
def test_teacher_ema_and_momentum_schedule():
    torch.manual_seed(0)
    assert SorcenConfig().teacher.projector_grad  # the released behaviour is the default (measured)
    m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(teacher=TeacherConfig(projector_grad=False)))
    assert m.momentum_at(0, 100) == pytest.approx(0.996)
    assert m.momentum_at(50, 100) == pytest.approx(0.998)
    assert m.momentum_at(100, 100) == pytest.approx(1.0)
    with torch.no_grad():
        for p in m.model.blocks.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p in m.teacher_blocks.parameters()]
    s = [p.clone() for p in m.model.blocks.parameters()]
    m.on_train_step_end(30, 100)
    beta = m.momentum_at(30, 100)
    for tb, sp, ta in zip(t_before, s, m.teacher_blocks.parameters()):
        assert torch.allclose(ta, beta * tb + (1 - beta) * sp, atol=1e-6)
    assert not any(p.requires_grad for p in m.teacher_blocks.parameters())
    assert not any(p.requires_grad for p in m.teacher_projector.parameters())


# ------------------------------------------------------------------ presets
def _tiny_tokenizer():
    from unissl.tokenizers.vq import VQConfig, VQTokenizer

    tok = VQTokenizer(VQConfig(image_size=8, channels=1, ch=8, ch_mult=(1, 2), codebook_size=16, code_dim=8))
    return tok


@pytest.mark.parametrize("variant", ["sorcen", "mage", "mage-c", "mage-aug"])
def test_tiny_forward_backward_without_nan(variant):
    torch.manual_seed(0)
    tok = _tiny_tokenizer() if variant in ("mage-c", "mage-aug") else None
    m = build_method(PRESETS["tiny"], variant, num_classes=3, tokenizer=tok)
    batch = {"label": torch.randint(0, 3, (6,))}
    if tok is not None:
        batch["image"] = torch.rand(6, 1, 12, 12)
    else:
        batch["ids"] = torch.randint(0, 16, (6, 4, 4))
    out = m(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() for v in out.values())
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert 0.0 <= float(out["masked_top1"]) <= 1.0
    if variant in ("sorcen", "mage-c"):
        assert "contrast" in out
    else:
        assert "contrast" not in out
    if tok is not None:
        assert not any(k.startswith("tokenizer") for k in m.state_dict())  # frozen tokenizer not saved
        assert all(not p.requires_grad for p in tok.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    arch = PRESETS[name]
    with torch.device("meta"):
        m = build_method(arch, "sorcen", num_classes=10)
    assert m.model.embed.word.weight.shape == (arch.codebook_size + 2, arch.dim)
    assert len(m.model.blocks) == arch.depth and len(m.teacher_blocks) == arch.depth
    assert m.model.decoder_pos.shape == (1, 1 + arch.num_positions, arch.decoder_dim)


def test_small_preset_forward_backward_on_store_shapes():
    arch = arch_for_store("small", 512, (7, 7))
    m = build_method(arch, "sorcen", num_classes=10)
    out = m({"ids": torch.randint(0, 512, (8, 7, 7)), "label": torch.randint(0, 10, (8,))})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


@pytest.mark.slow
def test_mage_overfits_a_fixed_batch():
    torch.manual_seed(0)
    m = build_method(PRESETS["tiny"], "mage", SorcenConfig(masking=MaskingConfig(min=0.5, max=0.5)), num_classes=2)
    ids = (torch.arange(16).view(1, 4, 4) + torch.tensor([0, 5]).view(2, 1, 1)) % 16  # two fixed maps
    batch = {"ids": ids.repeat(8, 1, 1), "label": torch.tensor([0, 1]).repeat(8)}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    recon = []
    for _ in range(150):
        out = m(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        recon.append(float(out["recon"]))
    assert sum(recon[-10:]) / 10 < 0.5 * recon[0]  # from ln(16) = 2.77 to below 1.39


def test_crop_flip_shapes_and_identity():
    x = torch.rand(3, 1, 10, 10)
    y = random_resized_crop_flip(x, 10, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    assert torch.allclose(y, x, atol=1e-5)  # full-area, unflipped crop is the image itself
    y = random_resized_crop_flip(x, 10, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    assert torch.allclose(y, x.flip(-1), atol=1e-5)
    y = random_resized_crop_flip(x, 6, scale=(0.2, 0.5))
    assert y.shape == (3, 1, 6, 6) and y.min() >= 0 and y.max() <= 1


@pytest.mark.slow
def test_compiled_networks_compile_once_across_mask_ratios_and_progress():
    """--train.compile: the blocks compile on the first step and stay compiled while the mask ratio and
    the progress counters change every step (compiling the whole method recompiled every step)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=0.5)))
    eager = build_method(PRESETS["tiny"], "sorcen", SorcenConfig(echo=EchoConfig(warmup=0.5)))
    eager.load_state_dict(m.state_dict())
    m.compile_networks(backend="eager")  # dynamo's graph capture and guards without the C++ toolchain
    ids = torch.randint(0, 16, (4, 4, 4))
    frames = []
    for step in range(1, 6):
        torch.manual_seed(step)
        out = m({"ids": ids})
        torch.manual_seed(step)
        ref = eager({"ids": ids})
        torch.testing.assert_close(out["loss"], ref["loss"])
        out["loss"].backward()
        m.on_train_step_end(step, 6)  # the echo turns on at step 3: a Python branch outside the graphs
        eager.on_train_step_end(step, 6)
        frames.append(counters["stats"]["unique_graphs"])
    assert frames[0] > 0 and frames[-1] == frames[0], frames  # no graph after the first step


def test_each_variant_is_its_own_class_built_through_one_call() -> None:
    """`build_method(arch, variant)` builds the variant's class from the registry, each on the shared masked-token
    base; only Sorcen has a teacher and only Sorcen / MAGE-C a projector; copies keep the class."""
    import copy

    from unissl.methods.sorcen.method import (
        VARIANTS,
        MAGECMethod,
        MAGEMethod,
        MaskedTokenMethod,
        SorcenMethod,
    )

    built = {v: build_method(PRESETS["tiny"], v) for v in VARIANTS}
    assert {v: type(m) for v, m in built.items()} == VARIANTS
    assert all(isinstance(m, MaskedTokenMethod) and m.variant == v for v, m in built.items())
    assert type(built["sorcen"]) is SorcenMethod and type(built["mage"]) is MAGEMethod
    assert {v for v, m in built.items() if hasattr(m, "teacher_blocks")} == {"sorcen"}
    assert {v for v, m in built.items() if hasattr(m, "projector")} == {"sorcen", "mage-c"}
    assert type(copy.deepcopy(built["mage-c"])) is MAGECMethod
    assert type(SorcenMethod(PRESETS["tiny"])) is SorcenMethod and type(build_method(PRESETS["tiny"])) is SorcenMethod
    with pytest.raises(ValueError, match="unknown variant"):
        build_method(PRESETS["tiny"], "simclr")
