"""RepTok tokenizer pieces against naive references: layers, projection, decoder, tokenizer, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unissl.errors import UnisslError
from unissl.layers.adaln import AdaRMSNorm
from unissl.layers.cosine_attention import CosineAttention
from unissl.layers.rmsnorm import RMSNorm
from unissl.layers.rope import AxialRoPE2D, apply_rotary, axial_positions
from unissl.layers.swiglu import SwiGLU
from unissl.methods.reptok.decoder import DECODER_PRESETS, DecoderBlock, FlowDecoder
from unissl.methods.reptok.projection import ResidualProjection, cosine_loss
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer

RANDOM_ENC = {"kind": "random", "image_size": 16, "dim": 32, "depth": 2, "heads": 2, "patch": 4}


def tiny_tokenizer(**kw) -> RepTokTokenizer:
    torch.manual_seed(0)
    cfg = RepTokConfig(encoder=dict(RANDOM_ENC), image_size=16, channels=1, decoder="tiny", patch_size=4, **kw)
    return RepTokTokenizer(cfg)


# ---------------------------------------------------------------- layers
def test_rmsnorm_and_adarmsnorm_against_naive() -> None:
    x = torch.randn(2, 5, 8)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.scale.uniform_(0.5, 1.5)
    ref = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * norm.scale
    assert torch.allclose(norm(x), ref, atol=1e-6)
    ada = AdaRMSNorm(8, 4)
    c = torch.randn(2, 4)
    y, gate = ada(x, c)  # zero-init: plain RMSNorm, gate 1
    assert torch.allclose(y, x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), atol=1e-6)
    assert torch.equal(gate, torch.ones(2, 1, 8))
    with torch.no_grad():
        ada.proj.weight.normal_()
    y, gate = ada(x, c)
    scale, shift, g = (c @ ada.proj.weight.T).chunk(3, -1)
    rms = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert torch.allclose(y, rms * (1 + scale[:, None]) + shift[:, None], atol=1e-5)
    assert torch.allclose(gate, 1 + g[:, None], atol=1e-6)


def test_swiglu_against_naive() -> None:
    m = SwiGLU(6, 10, bias=True)
    x = torch.randn(3, 6)
    a, b = (x @ m.up.weight.T + m.up.bias).chunk(2, -1)
    assert torch.allclose(m(x), (a * F.silu(b)) @ m.down.weight.T + m.down.bias, atol=1e-6)
    assert torch.equal(SwiGLU(6, 10, zero_init_out=True)(x), torch.zeros(3, 6))


def test_rope_depends_only_on_relative_position_and_preserves_norm() -> None:
    rope = AxialRoPE2D(head_dim=16, n_heads=2)
    q, k = torch.randn(2, 1, 16), torch.randn(2, 1, 16)  # (H, N=1, E)

    def score(pq: torch.Tensor, pk: torch.Tensor) -> torch.Tensor:
        rq = apply_rotary(q, rope(pq[None]))
        rk = apply_rotary(k, rope(pk[None]))
        return (rq * rk).sum(-1)  # (H, 1)

    p1, p2, shift = torch.tensor([0.3, -0.2]), torch.tensor([-0.5, 0.7]), torch.tensor([0.25, 0.4])
    assert torch.allclose(score(p1, p2), score(p1 + shift, p2 + shift), atol=1e-5)
    assert not torch.allclose(score(p1, p2), score(p1, p2 + shift), atol=1e-3)
    r = apply_rotary(q, rope(p1[None]))
    assert torch.allclose(r.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.equal(r[..., 8:], q[..., 8:])  # only half of the head dim rotates
    assert torch.allclose(apply_rotary(q, rope(torch.zeros(1, 2))), q)  # the centre is not rotated
    pos = axial_positions(2, 2)
    assert torch.allclose(pos, torch.tensor([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]]))


def test_cosine_attention_against_naive() -> None:
    torch.manual_seed(0)
    attn = CosineAttention(16, 8, rope=False, zero_init_out=False)
    with torch.no_grad():
        attn.scale.copy_(torch.tensor([3.0, 7.0]))
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * attn.scale.view(1, 2, 1, 1)
    y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    assert torch.allclose(attn(x), attn.out(y), atol=1e-5)
    # with RoPE the prefix token is left unrotated == given the centre position (0, 0)
    attn_r = CosineAttention(16, 8, rope=True, zero_init_out=False)
    pos = axial_positions(2, 2)
    a = attn_r(x, pos, n_prefix=1)
    b = attn_r(x, torch.cat([torch.zeros(1, 2), pos]), n_prefix=0)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- projection and cosine loss
def test_projection_starts_as_the_padded_token_and_cosine_loss_reference() -> None:
    proj = ResidualProjection(5, 8)
    z = torch.randn(3, 5)
    assert torch.equal(proj(z), torch.cat([z, torch.zeros(3, 3)], dim=1))
    with torch.no_grad():
        proj.fc.weight.normal_()
    h = proj(z)
    assert torch.allclose(h, F.layer_norm(z @ proj.fc.weight.T, (8,)) + F.pad(z, (0, 3)), atol=1e-5)
    with pytest.raises(UnisslError, match="wider decoder preset"):
        ResidualProjection(8, 5)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    naive = sum(1 - (a[i] @ b[i]) / (a[i].norm() * b[i].norm()) for i in range(4)) / 4
    assert torch.allclose(cosine_loss(a, b), naive, atol=1e-6)
    assert cosine_loss(a, 3 * a).abs() < 1e-6 and torch.allclose(cosine_loss(a, -a), torch.tensor(2.0))


# ---------------------------------------------------------------- decoder
@pytest.mark.parametrize("name", ["tiny", "compact", "small"])
def test_decoder_presets_forward_backward_and_zero_init(name: str) -> None:
    dec = FlowDecoder(DECODER_PRESETS[name], channels=3, size=16, patch_size=4)
    x, t, h = torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, dec.width)
    v = dec(x, t, h)
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(v))  # zero-initialised output
    with torch.no_grad():  # move every zero-initialised weight off zero (as training does)
        for prm in dec.parameters():
            if not prm.any():
                prm.normal_(std=0.05)
    v = dec(x, t, h)
    v.square().mean().backward()
    assert torch.isfinite(v).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dec.parameters())
    # the condition token influences the output, and patchify is the exact inverse of unpatchify
    assert not torch.allclose(dec(x, t, h), dec(x, t, h + 1.0))
    assert torch.equal(dec.unpatchify(dec.patchify(x)), x)
    # patch (i, j) holds pixels [4i:4i+4, 4j:4j+4]
    assert torch.equal(dec.patchify(x)[:, 1 * 4 + 2].view(2, 3, 4, 4), x[:, :, 4:8, 8:12])


def test_paper_preset_shape_and_one_block() -> None:
    p = DECODER_PRESETS["paper"]
    assert (p.width, p.depth, p.head_dim, p.width // p.head_dim) == (1152, 28, 72, 16)
    block = DecoderBlock(p)
    x = torch.randn(1, 1 + 4, p.width)
    y = block(x, torch.randn(1, p.time_dim), axial_positions(2, 2), n_prefix=1)
    assert torch.equal(y, x)  # zero-initialised residual branches: the identity at start


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_loss_terms_and_only_expected_trainables() -> None:
    tok = tiny_tokenizer(cos_weight=0.5)
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("encoder") else "")
                 for n, p in tok.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.cls", "projection", "decoder"}
    images = torch.rand(4, 1, 16, 16)
    torch.manual_seed(3)
    out = tok({"image": images})
    # at init v = 0, so the flow MSE is E|eps - x|^2 for the sampled noise: recompute it by hand
    torch.manual_seed(3)
    t = torch.sigmoid(torch.randn(4))
    eps = torch.randn(4, 1, 16, 16)
    assert torch.allclose(out["flow_mse"], (eps - (2 * images - 1)).pow(2).mean(), atol=1e-5)
    assert out["cos_loss"].abs() < 1e-6 and torch.allclose(out["loss"], out["flow_mse"])
    assert t.shape == (4,)
    with torch.no_grad():
        tok.encoder.cls.add_(torch.randn_like(tok.encoder.cls))
    out = tok({"image": images})
    assert out["cos_loss"] > 1e-4
    assert torch.allclose(out["loss"], out["flow_mse"] + 0.5 * out["cos_loss"], atol=1e-6)


def test_linear_cka_and_drift_against_naive() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 5)
    # naive HSIC form: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with Gram matrices K = X X^T, L = Y Y^T
    h = torch.eye(32, dtype=torch.float64) - 1.0 / 32
    k, lm = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    naive = hsic(k, lm) / torch.sqrt(hsic(k, k) * hsic(lm, lm))
    from unissl.methods.reptok.projection import linear_cka, token_drift

    assert torch.allclose(linear_cka(x, y).double(), naive, atol=1e-6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-5)  # rotation, scale and shift
    # a shift shared by every image moves 1 - cos but not the centred drift nor the CKA
    d = token_drift(x + 5.0, x)
    assert d["drift_1mcos"] > 0.1 and d["drift_centred_1mcos"].abs() < 1e-6 and d["drift_cka"] == pytest.approx(1.0)


def test_cls_lr_scale_makes_its_own_optimizer_group() -> None:
    from unissl.engine.optim import build_optimizer

    tok = tiny_tokenizer(cls_lr_scale=20.0)
    opt = build_optimizer(tok, 1e-3, 0.0)
    scaled = [g for g in opt.param_groups if g.get("lr_scale") == 20.0]
    assert len(scaled) == 1 and len(scaled[0]["params"]) == 1 and scaled[0]["params"][0] is tok.encoder.cls
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in tok.parameters())
    assert not any("lr_scale" in g for g in build_optimizer(tiny_tokenizer(), 1e-3, 0.0).param_groups)
    with pytest.raises(UnisslError, match="cls_lr_scale"):
        tiny_tokenizer(cls_lr_scale=0.0)
    out = tok({"image": torch.rand(4, 1, 16, 16)})
    assert {"drift_1mcos", "drift_centred_1mcos", "drift_cka"} <= set(out)


def test_decode_integrates_from_noise_to_data_with_the_exact_velocity() -> None:
    """For a point-mass target x*, v(x, t) = (x - x*) / t is exact and linear in t along its trajectories,
    so Euler from t=1 to t=0 lands on x* exactly (Heun would evaluate the singular field at t=0)."""
    tok = tiny_tokenizer()
    target = torch.rand(2, 1, 16, 16)
    x_star = 2 * target - 1
    tok.decoder.forward = lambda x_t, t, h: (x_t - x_star) / t.view(-1, 1, 1, 1)  # type: ignore[method-assign]
    z = torch.randn(2, tok.encoder.dim)
    out = tok.decode(z, steps=7, solver="euler")
    assert torch.allclose(out, target, atol=1e-5)


def test_training_reduces_the_flow_loss() -> None:
    """Adam steps on 8 fixed disc images: the flow loss at fixed (t, eps) drops well below its start."""
    tok = tiny_tokenizer()
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    images = torch.stack([((yy - cy).pow(2) + (xx - cx).pow(2) < 16).float()[None]  # discs at 8 places
                          for cy, cx in [(4, 4), (4, 11), (11, 4), (11, 11), (8, 8), (4, 8), (11, 8), (8, 4)]])

    def eval_loss() -> float:
        torch.manual_seed(123)  # the same t and eps before and after training
        with torch.no_grad():
            return float(tok({"image": images})["flow_mse"])

    before = eval_loss()
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        loss = tok({"image": images})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


def test_save_load_roundtrip_gives_identical_reconstructions(tmp_path) -> None:
    tok = tiny_tokenizer(cos_weight=1.0)
    with torch.no_grad():
        for p in tok.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    tok.save_pretrained(tmp_path / "tok")
    back = RepTokTokenizer.from_pretrained(tmp_path / "tok")
    assert back.cfg.cos_weight == 1.0
    x = torch.rand(3, 1, 16, 16)
    a = tok.reconstruct(x, steps=4, generator=torch.Generator().manual_seed(1))
    b = back.reconstruct(x, steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(UnisslError, match="not a RepTok tokenizer"):
        RepTokTokenizer.from_pretrained(tmp_path)


def test_dinov2_tokenizer_reloads_backbone_from_path_and_checks_it(tmp_path) -> None:
    pytest.importorskip("transformers")
    from unissl.methods.reptok.tiny import save_random_dinov2

    save_random_dinov2(tmp_path / "dino")
    cfg = RepTokConfig(encoder={"kind": "dinov2", "path": str(tmp_path / "dino")}, image_size=16, channels=1,
                       decoder="tiny")
    tok = RepTokTokenizer(cfg)
    tok.save_pretrained(tmp_path / "tok")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "tok" / "model.safetensors")).keys()
    assert "encoder.cls" in keys and not any(k.startswith("encoder.backbone.") for k in keys)
    back = RepTokTokenizer.from_pretrained(tmp_path / "tok")
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(back.encode(x), tok.encode(x))
    save_random_dinov2(tmp_path / "other", seed=1)  # different weights at the recorded path
    with pytest.raises(UnisslError, match="differ"):
        RepTokTokenizer.from_pretrained(tmp_path / "tok", encoder_path=str(tmp_path / "other"))


def test_vae_space_with_a_tiny_autoencoder(tmp_path) -> None:
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL

    from unissl.methods.reptok.tiny import save_random_autoencoder_kl

    save_random_autoencoder_kl(tmp_path / "vae")
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    tok = RepTokTokenizer(RepTokConfig(encoder=dict(RANDOM_ENC), image_size=16, channels=1, decoder="tiny",
                                       patch_size=2, space="vae", vae_path=str(tmp_path / "vae")))
    assert tok.space.shape == (4, 8, 8) and tok.decoder.grid == 4
    images = torch.rand(2, 1, 16, 16)
    lat = tok.space.encode(images)
    assert lat.shape == (2, 4, 8, 8)
    ref = vae.encode(images.repeat(1, 3, 1, 1) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert (lat - ref).abs().mean() < (ref.abs().mean() + 1)  # a posterior sample around the mean
    out = tok({"image": images})
    out["loss"].backward()
    assert all(p.grad is None for p in tok.space.parameters())
    rec = tok.reconstruct(images, steps=2)
    assert rec.shape == images.shape and rec.min() >= 0 and rec.max() <= 1
    tok.save_pretrained(tmp_path / "tok")
    back = RepTokTokenizer.from_pretrained(tmp_path / "tok")
    assert back.space.shape == (4, 8, 8)
    with pytest.raises(UnisslError, match="config.json"):
        RepTokTokenizer(RepTokConfig(encoder=dict(RANDOM_ENC), image_size=16, channels=1, space="vae",
                                     vae_path=str(tmp_path / "missing")))
    assert math.isfinite(out["loss"].detach().item())


def test_patchify_matches_a_naive_loop_and_round_trips() -> None:
    """One patchify for the decoder and the random ViT: row-major patches, each flattened as (C, p, p)."""
    from unissl.layers import patchify, unpatchify

    x = torch.randn(2, 3, 8, 12)
    p = 4
    got = patchify(x, p)  # (2, 6, 48)
    naive = torch.stack([torch.stack([x[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(-1)
                                      for i in range(2) for j in range(3)]) for b in range(2)])
    assert torch.equal(got, naive)
    assert torch.equal(unpatchify(got, p, 3, (2, 3)), x)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.randn(1, 1, 10, 10), 4)


def _perturb(tok: RepTokTokenizer) -> RepTokTokenizer:
    """Move every trainable weight off its (partly zero) init, so that every path is exercised."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in tok.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return tok


def test_new_registers_only_nonreg_config_leaves_the_condition_unchanged(tmp_path) -> None:
    """CompVis/RepTok's `nr_new_reg: 2, new_target_key: only_nonreg`: the registers go through the token-wise
    projection beside z and are dropped, so the decoder sees exactly what it sees without them; they get no
    gradient, every other weight starts identical, and the option round-trips through save/load."""
    plain = _perturb(tiny_tokenizer())
    reg = tiny_tokenizer(new_registers=2)
    assert reg.new_registers is not None and reg.new_registers.shape == (2, 32)
    reg.load_state_dict({**plain.state_dict(), "new_registers": reg.new_registers.detach()})
    z = torch.randn(3, 32)
    torch.testing.assert_close(reg.condition(z), plain.condition(z), rtol=0, atol=0)
    # the released computation, literally: project [registers; z] token by token, keep the non-register slot
    literal = reg.projection(torch.cat([reg.new_registers.expand(3, -1, -1), z[:, None]], dim=1))[:, 2]
    torch.testing.assert_close(reg.condition(z), literal, rtol=0, atol=1e-6)
    images = torch.rand(2, 1, 16, 16)
    torch.manual_seed(5)
    a = plain({"image": images})
    torch.manual_seed(5)
    b = reg({"image": images})
    assert torch.equal(a["loss"], b["loss"])
    b["loss"].backward()
    assert reg.new_registers.grad is None
    # the same seed builds every other module with the same weights (the registers are created last)
    fresh_plain, fresh_reg = tiny_tokenizer(), tiny_tokenizer(new_registers=2)
    other = {k: v for k, v in fresh_reg.state_dict().items() if k != "new_registers"}
    assert all(torch.equal(v, fresh_plain.state_dict()[k]) for k, v in other.items())
    reg.save_pretrained(tmp_path / "reg")
    back = RepTokTokenizer.from_pretrained(tmp_path / "reg")
    assert back.cfg.new_registers == 2 and torch.equal(back.new_registers, reg.new_registers)


def test_new_registers_all_are_extra_condition_tokens() -> None:
    """`register_target: all` keeps the projected registers as image-independent in-context tokens before z:
    the decoder's velocity equals a naive run with those K = 3 prefix tokens, the registers get a gradient,
    and a decoder over a (B, 1, D) condition equals the (B, D) form."""
    tok = _perturb(tiny_tokenizer(new_registers=2, register_target="all"))
    z = torch.randn(2, 32)
    h = tok.condition(z)
    assert h.shape == (2, 3, tok.decoder.width)
    torch.testing.assert_close(h[:, :2], tok.projection(tok.new_registers).expand(2, -1, -1))
    torch.testing.assert_close(h[:, 2], tok.projection(z))
    dec = tok.decoder
    x_t, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    v = dec(x_t, t, h)
    x = torch.cat([h, dec.patch_in(dec.patchify(x_t))], dim=1)  # naive: the blocks with 3 prefix tokens
    temb = dec.time(t)
    for block in dec.blocks:
        x = block(x, temb, dec.pos, n_prefix=3)
    torch.testing.assert_close(v, dec.unpatchify(dec.patch_out(dec.out_norm(x[:, 3:]))))
    torch.testing.assert_close(dec(x_t, t, h[:, 2]), dec(x_t, t, h[:, 2:]))
    out = tok({"image": torch.rand(2, 1, 16, 16)})
    out["loss"].backward()
    assert tok.new_registers.grad is not None and tok.new_registers.grad.abs().sum() > 0
    with pytest.raises(UnisslError, match="register_target"):
        RepTokConfig(encoder=dict(RANDOM_ENC), image_size=16, channels=1, register_target="some")
