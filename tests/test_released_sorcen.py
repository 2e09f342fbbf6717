"""Golden tests: unissl against outputs the released MAGE (LTH14/mage @ 1becb14) and Sorcen (ImaGonEs/LEASE @
171b157) code wrote, at small sizes with seeded weights (``tools/make_released_fixtures.py --only
vqgan,mage,lease`` wrote ``tests/fixtures/released/{mage_vqgan,mage,lease}.*``; their JSON files name the commit,
the sizes and the settings).

The weights are loaded in the release's layout through unissl's own loaders (the taming checkpoint loader, the
MAGE / Sorcen converter); the release's random draws (masking ratio and noise, echo draw, window side and
corners) were recorded and are replayed into unissl's own masking and windowing code. fp32 throughout.
``UNISSL_PRINT_DIFFS=1 pytest -s -k released`` prints every max abs diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import unissl.methods.sorcen.method as method_module
from unissl.engine.optim import no_decay_names
from unissl.methods.sorcen.config import EchoConfig, LossConfig, SorcenConfig, TeacherConfig
from unissl.methods.sorcen.convert import convert_official_state_dict, converted_name
from unissl.methods.sorcen.echo import echo_candidates
from unissl.methods.sorcen.features import pooled_features
from unissl.methods.sorcen.losses import masked_token_loss
from unissl.methods.sorcen.masking import random_masking, sample_mask_ratio, window_mask
from unissl.methods.sorcen.method import build_method
from unissl.methods.sorcen.presets import SorcenArch
from unissl.tokenizers import TamingConfig, load_taming_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "released"
TOL = 1e-5


def _load(stem: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    path = FIXTURES / f"{stem}.safetensors"
    if not path.exists():
        pytest.fail(f"{path} missing: run python tools/make_released_fixtures.py --only vqgan,mage,lease")
    return load_file(str(path)), json.loads((FIXTURES / f"{stem}.json").read_text())


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _close(name: str, ours: torch.Tensor, released: torch.Tensor, tol: float = TOL) -> None:
    """max |ours - released| <= tol * max(1, max |released|) (fp32 rounding grows with the values' size)."""
    assert ours.shape == released.shape, name
    diff = float((ours.detach().double() - released.double()).abs().max())
    scale = max(1.0, float(released.abs().max()))
    if os.environ.get("UNISSL_PRINT_DIFFS"):
        print(f"max abs diff {name}: {diff:.3g} (tolerance scale {scale:.3g})")
    assert diff <= tol * scale, f"{name}: max abs diff {diff:.3g} > {tol} x {scale:.3g}"


def _arch(meta: dict, proj: tuple[int, int, int] = (64, 64, 64), pred_hidden: int = 64) -> SorcenArch:
    v = meta["vit"]
    return SorcenArch(codebook_size=meta["codebook_size"], grid=(16, 16), dim=v["embed_dim"], depth=v["depth"],
                      heads=v["num_heads"], decoder_dim=v["decoder_embed_dim"], decoder_depth=v["decoder_depth"],
                      decoder_heads=v["decoder_num_heads"], mlp_ratio=v["mlp_ratio"], dropout=0.0,
                      proj_hidden=proj[1], proj_dim=proj[2], pred_hidden=pred_hidden)


def _method(state: dict[str, torch.Tensor], arch: SorcenArch, variant: str, step: int = 0, **kw):
    """A unissl method holding the released weights, loaded through the converter (strict)."""
    converted, report = convert_official_state_dict(state, arch)
    assert report.variant == variant
    method = build_method(arch, variant, **kw)
    full = method.state_dict()
    full.update(converted)
    full["step"] = torch.tensor(step)
    method.load_state_dict(full, strict=True)
    return method


# ------------------------------------------------------------------------------------------------ VQGAN
def test_released_mage_vqgan_ids_and_decode(tmp_path):
    t, meta = _load("mage_vqgan")
    assert meta["commit"] == "1becb14"
    dd = meta["config"]["ddconfig"]
    cfg = TamingConfig(ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                       z_channels=dd["z_channels"], embed_dim=meta["config"]["embed_dim"],
                       n_embed=meta["config"]["n_embed"], resolution=dd["resolution"], norm_groups=32)
    torch.save({"state_dict": _part(t, "state/")}, tmp_path / "vqgan.ckpt")  # the release's checkpoint form
    tok = load_taming_checkpoint(tmp_path / "vqgan.ckpt", config=cfg)
    ids = tok.encode(t["input/images"])
    assert torch.equal(ids, t["out/ids"])  # every id equal
    with torch.no_grad():
        _close("vqgan decode(ids)", tok._decode(ids), t["out/decoded"])
        _close("vqgan decode(random ids)", tok._decode(t["input/random_ids"]), t["out/decoded_random"])
    assert torch.equal(tok.decode(ids), tok._decode(ids).clamp(0, 1))


# ------------------------------------------------------------------------------------------------ MAGE
def test_released_mage_logits_for_recorded_mask():
    t, meta = _load("mage")
    assert meta["commit"] == "1becb14"
    arch = _arch(meta)
    model = _method(_part(t, "state/"), arch, "mage").model.eval()
    ids = t["out/ids"]  # (B, 256): the VQGAN ids of input/images (the vqgan test checks unissl gives the same)
    masking = random_masking(ids.shape[0], ids.shape[1], float(t["draw/mask_ratio"]), 0.5, noise=t["draw/noise"])
    assert torch.equal(masking.token_mask, t["out/token_all_mask"])
    assert torch.equal(masking.drop_mask, t["out/token_drop_mask"])
    with torch.no_grad():
        latent, logits = model(ids, masking)
    _close("mage encoder output", latent, t["out/latent"])
    _close("mage code logits", logits, t["out/code_logits"])
    _close("mage loss", masked_token_loss(logits, ids, masking.token_mask, 0.1), t["out/loss"])


def test_released_mage_generation_step_logits():
    """gen_img_uncond.gen_image's first step (every id [MASK], nothing dropped) = ``predict``, MaskGIT's path."""
    t, meta = _load("mage")
    model = _method(_part(t, "state/"), _arch(meta), "mage").model.eval()
    expected = t["out/generation_step0_code_logits"]  # (B, 256, K)
    with torch.no_grad():
        logits = model.predict(torch.full(expected.shape[:2], model.special.mask))
    _close("mage generation step-0 logits", logits, expected)


# ------------------------------------------------------------------------------------------------ LEASE (Sorcen)
# the released options (docs/fidelity.md): echo warm-up `epoch <= 10`, epoch-wise EMA over 1600 epochs from
# 0.996, uniformity over all encoder outputs with the diagonal, a teacher projector trained by the contrast term
RELEASED = SorcenConfig(loss=LossConfig(uniformity_pool="all", uniformity_diagonal=True),
                        echo=EchoConfig(warmup_unit="released"),
                        teacher=TeacherConfig(momentum=0.996, momentum_schedule="epoch", momentum_epochs=1600,
                                              projector_grad=True), probe=False)
GRAD_NAMES = {"blocks.0.attn.qkv.weight": "model.blocks.0.attn.qkv.weight", "norm.weight": "model.norm.weight",
              "decoder_blocks.1.mlp.fc2.weight": "model.decoder_blocks.1.mlp.fc2.weight",
              "mlm_layer.fc.weight": "model.head.fc.weight",
              "token_emb.position_embeddings.weight": "model.embed.position.weight",
              "decoder_pos_embed_learned": "model.decoder_pos", "projector.projector.0.weight": "projector.net.0.weight",
              "predictor.projector.3.weight": "predictor.net.3.weight",
              "momentum_projector.projector.0.weight": "teacher_projector.net.0.weight"}


def _replay(monkeypatch, t: dict[str, torch.Tensor], run: str, mask_label: int, seen: dict) -> None:
    """Feed run ``run``'s recorded draws into unissl's own masking / echo / window code."""
    monkeypatch.setattr(method_module, "sample_mask_ratio", lambda *a, **k: float(t[run + "mask_ratio"]))

    def masking(*args, **kwargs):
        seen["masking"] = random_masking(*args, **kwargs, noise=t[run + "noise"])
        return seen["masking"]

    def echo(logits, k, temperature, generator=None):  # the release's draw, checked against our candidates
        draw = t[run + "echo_draw"]
        values, index = echo_candidates(logits, k)  # (B, N, k)
        assert (index == draw.unsqueeze(-1)).any(-1).all(), "released echo outside our top-k without argmax"
        probs = torch.zeros_like(logits[0]).scatter(-1, index[0], (values[0] / temperature).softmax(-1))
        seen["echo_probs"] = probs  # (N, K) of the first sample
        return draw

    def window(ids, side, mask_id, generator=None):
        assert side == int(t[run + "window_side"])
        seen["window"] = window_mask(ids, side, mask_id, corners=t[run + "window_corners"])
        return seen["window"]

    monkeypatch.setattr(method_module, "random_masking", masking)
    monkeypatch.setattr(method_module, "sample_echo", echo)
    monkeypatch.setattr(method_module, "sample_window_side", lambda *a, **k: int(t[run + "window_side"]))
    monkeypatch.setattr(method_module, "window_mask", window)


@pytest.mark.parametrize("run", [0, 1], ids=["echo-warmup", "sampled-echo"])
def test_released_sorcen_losses_for_recorded_draws(monkeypatch, run):
    t, meta = _load("lease")
    assert meta["commit"] == "171b157"
    p, epoch = f"run{run}/", int(t[f"run{run}/epoch"])
    arch = _arch(meta, tuple(meta["projector"]), meta["predictor"][1])
    k, mask_label = meta["codebook_size"], meta["mask_token_label"]
    state = _part(t, "state/")  # the weights run 0 computed with
    method = _method(state, arch, "sorcen", step=0 if run else epoch, cfg=RELEASED, steps_per_epoch=1)
    method.train()
    if run == 1:  # the release pulls the teacher at the start of its epoch-20 step; ours after a step
        method.on_train_step_end(epoch, epoch)
        after = dict(state, **_part(t, "teacher_after/"))
        expected, _ = convert_official_state_dict(after, arch)
        ours = method.state_dict()
        names = [n for n in expected if n.startswith(("teacher_blocks.", "teacher_projector."))
                 and "running" not in n and "num_batches" not in n]
        assert len(names) == 2 * 12 + 6  # every teacher block and projector parameter
        _close("sorcen EMA teacher (all parameters)", torch.cat([ours[n].flatten() for n in names]),
               torch.cat([expected[n].flatten() for n in names]), 1e-6)
    assert method.in_echo_warmup() == (epoch <= 10)
    seen: dict = {}
    _replay(monkeypatch, t, p, mask_label, seen)
    ids = t["input/ids"]
    out = method({"ids": ids})
    assert torch.equal(seen["masking"].token_mask, t[p + "token_all_mask"])
    assert torch.equal(seen["masking"].drop_mask, t[p + "token_drop_mask"])
    assert ("echo_probs" in seen) == (epoch > 10)
    if epoch > 10:
        _close("sorcen echo probabilities (first sample)", seen["echo_probs"], t[p + "echo_probs_sample0"])
    released_window = t[p + "teacher_input"].view(ids.shape)
    assert torch.equal(seen["window"], torch.where(released_window == mask_label, k, released_window))
    _close(f"sorcen reconstruction (epoch {epoch})", out["recon"], t[p + "recon"])
    _close(f"sorcen uniformity x 0.01 (epoch {epoch})", RELEASED.loss.uniformity_weight * out["uniformity"],
           t[p + "uniformity_x0.01"])
    _close(f"sorcen contrast (epoch {epoch})", out["contrast"], t[p + "contrast"])
    _close(f"sorcen total loss (epoch {epoch})", out["loss"], t[p + "total"])
    if run == 1:
        out["loss"].backward()
        params = dict(method.named_parameters())
        for released_name, ours_name in GRAD_NAMES.items():
            _close(f"sorcen grad {released_name}", params[ours_name].grad, t[f"grad/{released_name}"])


def test_replayed_draws_are_checked():
    """The arguments that replay recorded draws refuse shapes and positions that cannot come from a draw."""
    with pytest.raises(ValueError, match=r"noise must be \(2, 16\)"):
        random_masking(2, 16, 0.6, noise=torch.rand(2, 15))
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="corners"):
        window_mask(ids, 3, 9, corners=torch.tensor([[0, 0], [2, 0]]))  # a 3-wide window starts at row <= 1
    out = window_mask(ids, 3, 9, corners=torch.tensor([[1, 0], [0, 1]]))
    assert out[0, 1:, :3].eq(0).all() and int(out[0].ne(9).sum()) == 9 and out[1, :3, 1:].eq(0).all()


def test_released_mask_ratio_law():
    """The masking ratio's quantile function is that of the release's scipy truncnorm (mean 0.55, std 0.25, [0.5, 1])."""
    t, _ = _load("lease")
    for i, (u, ppf) in enumerate(zip(t["mask_ratio_law/u"], t["mask_ratio_law/ppf"])):
        assert float(u) == float(torch.rand((), generator=torch.Generator().manual_seed(i), dtype=torch.float64))
        _close(f"mask ratio quantile at u={float(u):.3f}", torch.tensor(sample_mask_ratio(
            generator=torch.Generator().manual_seed(i)), dtype=torch.float64), ppf, 1e-9)


def test_released_weight_decay_groups():
    """``decay_embeddings`` gives the groups the release's timm ``add_weight_decay`` makes (every trained tensor)."""
    t, meta = _load("lease")
    groups = meta["weight_decay_groups"]
    method = _method(_part(t, "state/"), _arch(meta, tuple(meta["projector"]), meta["predictor"][1]), "sorcen",
                     cfg=SorcenConfig(teacher=TeacherConfig(projector_grad=True), decay_embeddings=True))
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    ours_no_decay = no_decay_names(method)

    def ours(names: list[str]) -> set[str]:  # the teacher blocks get no gradient in either: AdamW skips them
        return {n for n in map(converted_name, names) if n is not None and not n.startswith("teacher_blocks.")}

    assert ours(groups["no_decay"]) == ours_no_decay
    assert ours(groups["decay"]) == trained - ours_no_decay


def test_released_linear_probe_features():
    """``sorcen-released`` pooling = main_linprobe.py's ``VisionTransformerMage(global_pool=True)`` features."""
    t, meta = _load("lease")
    vq, _ = _load("mage_vqgan")
    assert torch.equal(t["probe/ids"], vq["out/ids"].flatten(1))  # the probe tokenized mage_vqgan's images
    model = _method(_part(t, "state/"), _arch(meta, tuple(meta["projector"]), meta["predictor"][1]), "sorcen").model
    with torch.no_grad():
        feats = pooled_features(model.eval(), vq["out/ids"], "released")
    _close("linear-probe features (released pooling)", feats, t["probe/features"])
