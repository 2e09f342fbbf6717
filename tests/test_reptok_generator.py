"""RepTok token generator: mixer structure, label dropout, CFG with interval, toy flows, persistence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import UnisslError
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, ClassConditioner, GeneratorConfig, TokenMixer
from unissl.methods.reptok.sampling import SamplingConfig, class_condition, guided_velocity, sample_tokens

torch.set_num_threads(1)


def _method(token_dim: int = 16, preset: str = "tiny", **kw) -> TokenGeneratorMethod:
    torch.manual_seed(0)
    return TokenGeneratorMethod(GeneratorConfig(token_dim=token_dim, preset=preset, **kw))


def _randomize(module: nn.Module) -> None:
    """Give every parameter random values (the zero-initialised output would hide bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _naive_mixer(m: TokenMixer, slots: torch.Tensor) -> torch.Tensor:
    """Reference: the mixer written with explicit per-slot / per-channel loops."""
    x = slots @ m.in_proj.weight.T + m.in_proj.bias  # (B, S, W)
    for blk in m.blocks:
        y = F.layer_norm(x, x.shape[-1:], blk.norm1.weight, blk.norm1.bias)
        mixed = torch.zeros_like(x)
        for c in range(x.shape[-1]):  # the token MLP sees, per channel, the vector of S slot values
            col = y[:, :, c]  # (B, S)
            h = F.gelu(col @ blk.token_mlp.fc1.weight.T + blk.token_mlp.fc1.bias)
            mixed[:, :, c] = h @ blk.token_mlp.fc2.weight.T + blk.token_mlp.fc2.bias
        x = x + mixed
        outs = []
        for s in range(x.shape[1]):  # the channel MLP acts on each slot separately
            y = F.layer_norm(x[:, s], x.shape[-1:], blk.norm2.weight, blk.norm2.bias)
            outs.append(x[:, s] + blk.channel_mlp.fc2(F.gelu(blk.channel_mlp.fc1(y))))
        x = torch.stack(outs, dim=1)
    x0 = F.layer_norm(x[:, 0], x.shape[-1:], m.norm.weight, m.norm.bias)
    return x0 @ m.out_proj.weight.T + m.out_proj.bias


def test_mixer_matches_naive_reference_and_outputs_slot_0():
    torch.manual_seed(0)
    mixer = TokenMixer(token_dim=8, n_slots=3, preset=GENERATOR_PRESETS["tiny"])
    _randomize(mixer)
    slots = torch.randn(5, 3, 8)
    out = mixer(slots)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, _naive_mixer(mixer, slots), rtol=1e-4, atol=1e-4)
    # slot 0 is read out: after the last block, slots 1.. never reach the output except via mixing, so
    # reading a different slot must give a different value
    h = mixer.in_proj(slots)
    for blk in mixer.blocks:
        h = blk(h)
    torch.testing.assert_close(out, mixer.out_proj(mixer.norm(h[:, 0])))
    assert not torch.allclose(out, mixer.out_proj(mixer.norm(h[:, 1])))


def test_generator_has_no_attention_and_samples_are_independent():
    m = _method()
    _randomize(m.net)
    names = [type(mod).__name__.lower() for mod in m.net.modules()]
    assert not any("attention" in n for n in names), names
    assert m.net.mixer.n_slots == 3  # [z_t + pos, class, time]
    # attention-free over one token: sample i's velocity depends on sample i only
    z, t, y = torch.randn(4, 16), torch.rand(4), torch.tensor([0, 3, 5, 9])
    full = m.velocity(z, t, {"label": y})
    single = torch.cat([m.velocity(z[i:i + 1], t[i:i + 1], {"label": y[i:i + 1]}) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


def test_output_layer_is_zero_initialised():
    m = _method()
    assert torch.count_nonzero(m.net.mixer.out_proj.weight) == 0
    v = m.velocity(torch.randn(3, 16), torch.rand(3), {"label": torch.tensor([1, 2, 3])})
    assert torch.equal(v, torch.zeros_like(v))


@pytest.mark.parametrize("preset", sorted(GENERATOR_PRESETS))
def test_presets_forward_backward(preset):
    p = GENERATOR_PRESETS[preset]
    if p.width > 512:  # base (85 M) and paper (0.5 B parameters): too slow for CPU unit tests
        assert preset != "paper" or (p.width, p.depth) == (1536, 28)
        return
    m = _method(token_dim=24, preset=preset)
    _randomize(m.net)
    out = m({"z": torch.randn(2, 24), "label": torch.randint(0, 10, (2,))})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.net.parameters())


def test_label_dropout_rate_is_ten_percent():
    cond = ClassConditioner(num_classes=10, dim=4)
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (200_000,))
    dropped = cond.drop({"label": labels}, 0.1)["label"]
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 0.003
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])  # kept labels are unchanged
    assert (cond.null({"label": labels})["label"] == 10).all()


def test_method_applies_label_dropout_in_training():
    m = _method(cond_dropout=0.1)
    seen = []
    m.net.conditioner.embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    torch.manual_seed(0)
    m({"z": torch.randn(5000, 16), "label": torch.randint(0, 10, (5000,))})
    assert abs((seen[0] == 10).float().mean().item() - 0.1) < 0.02  # 5 binomial standard deviations


def test_cfg_scale_one_and_interval():
    m = _method()
    _randomize(m.net)
    z, y = torch.randn(6, 16), torch.randint(0, 10, (6,))
    cond, null = class_condition(y), m.null_condition(class_condition(y))
    calls = []

    def vel(x, t, c):
        calls.append(x.shape[0])
        return m.velocity(x, t, c)

    def at(tv):
        return torch.full((6,), tv)

    for tv in (0.0, 0.5, 1.0):  # scale 1: the conditional velocity, whatever t
        torch.testing.assert_close(guided_velocity(vel, cond, null, 1.0, (0.3, 0.9))(z, at(tv)),
                                   m.velocity(z, at(tv), cond))
    fn = guided_velocity(vel, cond, null, 1.5, (0.3, 0.9))
    for tv in (0.0, 0.29, 0.91, 1.0):  # outside the interval: conditional, one call of batch B
        calls.clear()
        torch.testing.assert_close(fn(z, at(tv)), m.velocity(z, at(tv), cond))
        assert calls == [6]
    for tv in (0.3, 0.6, 0.9):  # inside: v_u + s (v_c - v_u), one call of batch 2B
        calls.clear()
        v_c, v_u = m.velocity(z, at(tv), cond), m.velocity(z, at(tv), null)
        torch.testing.assert_close(fn(z, at(tv)), v_u + 1.5 * (v_c - v_u), rtol=1e-5, atol=1e-5)
        assert calls == [12]
        assert not torch.allclose(v_c, v_u)  # the guidance really changes something


def _train(m: TokenGeneratorMethod, data_fn, steps: int, lr: float = 2e-3, batch: int = 256) -> list[float]:
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # decay: less noisy final weights
    losses = []
    for _ in range(steps):
        out = m(data_fn(batch))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        losses.append(out["loss"].item())
    return losses


MU = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-2.0, 1.0, 0.0, 1.5]])
SD = torch.tensor([0.5, 0.3])


@pytest.fixture(scope="module")
def toy() -> tuple[TokenGeneratorMethod, list[float]]:
    """A tiny generator trained on two classes of Gaussian tokens N(MU[c], SD[c]^2 I)."""
    torch.manual_seed(0)

    def data(b):
        y = torch.randint(0, 2, (b,))
        return {"z": MU[y] + SD[y, None] * torch.randn(b, 4), "label": y}

    m = TokenGeneratorMethod(GeneratorConfig(token_dim=4, preset="tiny", num_classes=2, cond_dropout=0.1))
    losses = _train(m, data, steps=400)
    return m.eval(), losses


@pytest.mark.slow
def test_euler_sampling_of_toy_gaussians_reaches_mean_and_std(toy):
    m, losses = toy
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:10]) / 10
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        z = sample_tokens(m, class_condition(torch.full((600,), c)), SamplingConfig(steps=50, cfg_scale=1.0),
                          generator=g)
        torch.testing.assert_close(z.mean(0), MU[c], atol=0.12, rtol=0)
        assert abs(z.std(0).mean().item() - SD[c].item()) < 0.08, (c, z.std(0))


@pytest.mark.slow
def test_heun_agrees_with_fine_euler_and_guidance_sharpens(toy):
    m, _ = toy
    noise = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    cond = class_condition(torch.ones(200, dtype=torch.long))
    ze = sample_tokens(m, cond, SamplingConfig(steps=100, solver="euler", cfg_scale=1.0), noise=noise)
    zh = sample_tokens(m, cond, SamplingConfig(steps=25, solver="heun", cfg_scale=1.0), noise=noise)
    assert (ze - zh).abs().mean() < 0.05
    # guidance pushes samples away from the unconditional mixture, i.e. further from the other class
    zg = sample_tokens(m, cond, SamplingConfig(steps=50, cfg_scale=3.0, cfg_interval=(0.0, 1.0)), noise=noise)
    d_plain = (ze - MU[0]).norm(dim=1).mean()
    d_guided = (zg - MU[0]).norm(dim=1).mean()
    assert d_guided > d_plain


@pytest.mark.slow
def test_loss_goes_down_on_digits_features():
    """Class-conditional flow on sklearn's 8x8 digits (64-d vectors) as stand-in tokens."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    mean, std = x.mean(0), x.sub(x.mean(0)).pow(2).mean().sqrt()
    m = TokenGeneratorMethod(GeneratorConfig(token_dim=64, preset="tiny"), z_mean=mean, z_std=std)

    def data(b):
        i = torch.randint(0, len(x), (b,))
        return {"z": x[i], "label": y[i]}

    def eval_loss():  # fixed noise/time draws for a fair before/after comparison
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(m({"z": x[:512], "label": y[:512]})["loss"].item() for _ in range(4)) / 4

    before = eval_loss()
    _train(m, data, steps=100)
    after = eval_loss()
    assert math.isclose(before, 1 + 1, rel_tol=0.1)  # zero velocity at init: E|z - eps|^2 = 1 + 1
    assert after < 0.75 * before, (before, after)


def test_normalisation_is_undone():
    mean, std = torch.randn(16), torch.tensor(3.0)
    m = TokenGeneratorMethod(GeneratorConfig(token_dim=16, preset="tiny"), z_mean=mean, z_std=std)
    z = torch.randn(5, 16)
    torch.testing.assert_close(m.denormalize(m.normalize(z)), z)
    # with zero velocity the ODE keeps the Gaussian start: samples are mean + std * noise
    noise = torch.randn(5, 16)
    out = sample_tokens(m, class_condition(torch.zeros(5, dtype=torch.long)), SamplingConfig(steps=3), noise=noise)
    torch.testing.assert_close(out, mean + std * noise)


def test_save_and_load_roundtrip(tmp_path):
    m = _method(classes=["a", "b"], tokenizer_path="/x")
    # a saved generator holds its tokenizer: one that is not there is refused before anything is written
    with pytest.raises(UnisslError, match="/x is not a RepTok tokenizer directory"):
        m.save_pretrained(tmp_path / "gen")
    assert not (tmp_path / "gen").exists()
    m = _method(classes=["a", "b"])
    _randomize(m.net)
    m.z_mean.normal_()
    m.save_pretrained(tmp_path / "gen")
    m2 = TokenGeneratorMethod.from_pretrained(tmp_path / "gen")
    assert m2.cfg == m.cfg
    z, t, y = torch.randn(3, 16), torch.rand(3), torch.tensor([0, 1, 2])
    torch.testing.assert_close(m2.velocity(z, t, {"label": y}), m.velocity(z, t, {"label": y}))
    torch.testing.assert_close(m2.z_mean, m.z_mean)
    with pytest.raises(UnisslError, match="is not a token generator directory"):
        TokenGeneratorMethod.from_pretrained(tmp_path)


def test_config_validation():
    with pytest.raises(UnisslError, match="preset"):
        GeneratorConfig(token_dim=8, preset="huge")
    with pytest.raises(UnisslError, match="text_dim"):
        GeneratorConfig(token_dim=8, conditioning="text")
