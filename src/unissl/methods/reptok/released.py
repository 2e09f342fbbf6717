"""CompVis/RepTok's state-dict layout -> unissl's: the one key map for converters and golden tests.

The release (CompVis/RepTok @ 85c3519) holds the tokenizer as a ``RepTokLatentRF2D`` (``reptok/encoder/
encoder.py``, built from ``configs/model/reptok.yaml``) and the generator as a ``FlowModel`` whose ``net`` is an
``MLPMixer1D`` (``reptok/flow.py``, ``reptok/models/mlp-mixer.py``). :func:`released_to_unissl` maps either
state dict onto the modules of the ``released-*`` presets (decoder :data:`~.decoder.DECODER_PRESETS`
``released-xl`` / ``released-tiny``, generator :data:`~.mixer.GENERATOR_PRESETS` of the same names):

Tokenizer (``part="tokenizer"``; keys of ``RepTokLatentRF2D.state_dict()``, after ``prefix``):

============================================================  ==================================================
released                                                      unissl ``RepTokTokenizer``
============================================================  ==================================================
``encoder.dino.model.cls_token`` (1, 1, D)                    ``encoder.cls`` (D,)  (the tuned [cls])
``encoder.dino.target_model.cls_token``                       ``encoder.cls_init`` (D,) (the frozen target's)
``encoder.dino.model.*`` (other keys)                         :attr:`ReleasedParts.dinov2` (torch-hub layout)
``encoder.dino.target_model.*`` (other keys)                  dropped (a frozen copy of the same weights)
``encoder.dino.temp_pos_embed`` (1, 1, 1, D)                  folded: ``projection.fc.bias += W s``,
                                                              ``projection.norm.bias += pad(s)`` (exact)
``encoder.dino.new_reg`` (1, R, D)                            ``new_registers`` (R, D)
``encoder.dino.backbone.fc.*`` / ``.ln.*``                    ``projection.fc.*`` / ``projection.norm.*``
``time_emb.weight``                                           ``decoder.time.fourier.weight``
``time_in_proj.weight``                                       ``decoder.time.inp.weight``
``mapping.in_norm`` / ``out_norm`` ``.scale``                 ``decoder.time.in_norm`` / ``out_norm`` ``.scale``
``mapping.blocks.i.norm.scale``                               ``decoder.time.norms.i.scale``
``mapping.blocks.i.up_proj`` / ``down_proj``                  ``decoder.time.mlps.i.up`` / ``down``
``backbone.mid_merge.pre_proj.proj.weight`` (D, p p C)        ``decoder.patch_in.weight``, columns reordered
                                                              from (p_y, p_x, C) to unissl's (C, p_y, p_x)
``backbone.mid_merge.proj.weight``                            ``decoder.in_proj.weight`` (the shared Linear)
``backbone.mid_level.i.self_attn.norm.linear.weight``         ``decoder.blocks.i.norm1.proj.weight``
``backbone.mid_level.i.self_attn.qkv_proj`` / ``out_proj``    ``decoder.blocks.i.attn.qkv`` / ``attn.out``
``backbone.mid_level.i.self_attn.scale``                      ``decoder.blocks.i.attn.scale``
``backbone.mid_level.i.self_attn.pos_emb.freqs``              dropped (fixed RoPE frequencies; unissl computes
                                                              the same ones, checked here)
``backbone.mid_level.i.ff.norm.linear.weight``                ``decoder.blocks.i.norm2.proj.weight``
``backbone.mid_level.i.ff.up_proj`` / ``down_proj``           ``decoder.blocks.i.mlp.up`` / ``mlp.down``
``backbone.mid_split.post_proj.norm.scale``                   ``decoder.out_norm.scale``
``backbone.mid_split.post_proj.proj.weight`` (p p C, D)       ``decoder.patch_out.weight``, rows reordered
``ae.ae.*`` (and ``ae.scale`` / ``ae.shift`` if tensors)      :attr:`ReleasedParts.vae` (diffusers keys)
============================================================  ==================================================

Generator (``part="generator"``; keys of ``MLPMixer1D.state_dict()``, i.e. a Lightning checkpoint's
``ema_model.net.*`` or ``model.net.*`` after ``prefix``), onto ``TokenGeneratorMethod``:
``pos_embed`` -> ``net.pos``; ``t_embedder.mlp.{0,2}`` -> ``net.time_embed.mlp.{0,2}``;
``label_embedder.embedding_table`` -> ``net.conditioner.embed``; ``mixer[._orig_mod].0`` -> ``net.mixer.in_proj``;
block ``k = 1..depth`` (unissl ``i = k - 1``): ``k.0.norm`` -> ``blocks.i.norm1``, ``k.0.fn.{0,3}`` (Conv1d,
kernel 1: the trailing 1 is squeezed) -> ``blocks.i.token_mlp.fc{1,2}``, ``k.1.norm`` -> ``blocks.i.norm2``,
``k.1.fn.{0,3}`` -> ``blocks.i.channel_mlp.fc{1,2}``; ``depth + 1`` -> ``net.mixer.norm``; ``depth + 2`` ->
``net.mixer.out_proj``. The token statistics (``z_mean``, ``z_std``) are not in the release's ``net``: the
converter sets them from the release's token scale.

Every key of the given state dict (under ``prefix``) is either mapped or listed in
:attr:`ReleasedParts.dropped`; an unknown key is an error, so a layout this map does not know is never
loaded half. The golden tests (``tests/test_released_reptok.py``) load the released code's own weights
through this function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from unissl.errors import UnisslError
from unissl.layers.rope import AxialRoPE2D


@dataclass
class ReleasedParts:
    """A released state dict split by where each part goes in unissl."""

    state: dict[str, torch.Tensor]  # unissl keys: RepTokTokenizer (no backbone, no VAE) or TokenGeneratorMethod
    dinov2: dict[str, torch.Tensor] = field(default_factory=dict)  # the encoder's DINOv2, torch-hub layout
    vae: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers AutoencoderKL keys
    dropped: list[str] = field(default_factory=list)  # released keys deliberately not carried over


def _patch_perm(p: int, c: int) -> torch.Tensor:
    """Index ``perm`` with ``released[..., perm] == unissl[...]`` for flattened patches: the release orders a
    patch's features (p_y, p_x, C) (``TokenMerge2D``'s rearrange), unissl's :func:`~unissl.layers.patchify`
    (C, p_y, p_x)."""
    return torch.arange(p * p * c).view(p, p, c).permute(2, 0, 1).reshape(-1)


def _tokenizer(sd: dict[str, torch.Tensor], patch_size: int) -> ReleasedParts:
    out = ReleasedParts(state={})
    s, dropped = out.state, out.dropped
    taken: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise UnisslError(f"released RepTok tokenizer state has no {key!r}; is it a RepTokLatentRF2D state "
                              "dict (pass the prefix its keys sit under)?")
        taken.add(key)
        return sd[key]

    # encoder: the tuned [cls], the frozen target's [cls], the hub-layout backbone
    s["encoder.cls"] = take("encoder.dino.model.cls_token").reshape(-1).clone()
    s["encoder.cls_init"] = take("encoder.dino.target_model.cls_token").reshape(-1).clone()
    for k in sd:
        if k.startswith("encoder.dino.model."):
            out.dinov2[k[len("encoder.dino.model."):]] = sd[k]
            taken.add(k)
        elif k.startswith("encoder.dino.target_model.") and k != "encoder.dino.target_model.cls_token":
            dropped.append(k)
            taken.add(k)
    # projection, with the learned shift s folded in: LN(W (z + s) + b) + pad(z + s)
    #   = LN(W z + (b + W s)) + pad(z) + pad(s), and pad(s) joins the LayerNorm's bias.
    w, b = take("encoder.dino.backbone.fc.weight"), take("encoder.dino.backbone.fc.bias")
    shift = take("encoder.dino.temp_pos_embed").reshape(-1).to(torch.float64)  # (D_z,)
    ln_w, ln_b = take("encoder.dino.backbone.ln.weight"), take("encoder.dino.backbone.ln.bias")
    s["projection.fc.weight"] = w.clone()
    s["projection.fc.bias"] = (b.double() + w.double() @ shift).to(b.dtype)
    s["projection.norm.weight"] = ln_w.clone()
    pad = torch.zeros_like(ln_b, dtype=torch.float64)
    pad[: shift.shape[0]] = shift
    s["projection.norm.bias"] = (ln_b.double() + pad).to(ln_b.dtype)
    if "encoder.dino.new_reg" in sd:
        s["new_registers"] = take("encoder.dino.new_reg")[0].clone()  # (R, D_z)

    # decoder: time embedding and mapping network
    s["decoder.time.fourier.weight"] = take("time_emb.weight")
    s["decoder.time.inp.weight"] = take("time_in_proj.weight")
    s["decoder.time.in_norm.scale"] = take("mapping.in_norm.scale")
    s["decoder.time.out_norm.scale"] = take("mapping.out_norm.scale")
    n_map = len({m.group(1) for k in sd if (m := re.match(r"mapping\.blocks\.(\d+)\.", k))})
    for i in range(n_map):
        s[f"decoder.time.norms.{i}.scale"] = take(f"mapping.blocks.{i}.norm.scale")
        s[f"decoder.time.mlps.{i}.up.weight"] = take(f"mapping.blocks.{i}.up_proj.weight")
        s[f"decoder.time.mlps.{i}.down.weight"] = take(f"mapping.blocks.{i}.down_proj.weight")
    # patch merge (+ the shared Linear) and the output split, patch features reordered
    w_in = take("backbone.mid_merge.pre_proj.proj.weight")  # (D, p p C) in (p_y, p_x, C) order
    c = w_in.shape[1] // (patch_size * patch_size)
    if c * patch_size * patch_size != w_in.shape[1]:
        raise UnisslError(f"released patch merge has {w_in.shape[1]} inputs, not a multiple of patch_size^2 = "
                          f"{patch_size ** 2}; pass the checkpoint's patch size")
    perm = _patch_perm(patch_size, c)
    s["decoder.patch_in.weight"] = w_in[:, perm].clone()
    s["decoder.in_proj.weight"] = take("backbone.mid_merge.proj.weight")
    s["decoder.out_norm.scale"] = take("backbone.mid_split.post_proj.norm.scale")
    s["decoder.patch_out.weight"] = take("backbone.mid_split.post_proj.proj.weight")[perm].clone()
    # transformer blocks
    depth = len({m.group(1) for k in sd if (m := re.match(r"backbone\.mid_level\.(\d+)\.", k))})
    for i in range(depth):
        r, u = f"backbone.mid_level.{i}.", f"decoder.blocks.{i}."
        s[u + "norm1.proj.weight"] = take(r + "self_attn.norm.linear.weight")
        s[u + "attn.qkv.weight"] = take(r + "self_attn.qkv_proj.weight")
        s[u + "attn.scale"] = take(r + "self_attn.scale")
        s[u + "attn.out.weight"] = take(r + "self_attn.out_proj.weight")
        s[u + "norm2.proj.weight"] = take(r + "ff.norm.linear.weight")
        s[u + "mlp.up.weight"] = take(r + "ff.up_proj.weight")
        s[u + "mlp.down.weight"] = take(r + "ff.down_proj.weight")
        freqs = take(r + "self_attn.pos_emb.freqs")  # (2, H, E/8): both axes share the frequencies
        _check_rope(freqs, r + "self_attn.pos_emb.freqs")
        dropped.append(r + "self_attn.pos_emb.freqs")
    # the VAE
    for k in sd:
        if k.startswith("ae.ae."):
            out.vae[k[len("ae.ae."):]] = sd[k]
            taken.add(k)
        elif k in ("ae.scale", "ae.shift"):
            out.vae[k[len("ae."):]] = sd[k]
            taken.add(k)
    unknown = sorted(set(sd) - taken)
    if unknown:
        raise UnisslError(f"released RepTok tokenizer state has keys this map does not know: {unknown[:5]}"
                          f"{' ...' if len(unknown) > 5 else ''}; it is not the layout of CompVis/RepTok @ 85c3519")
    return out


def _check_rope(freqs: torch.Tensor, key: str) -> None:
    """The release's fixed RoPE frequencies must be the ones unissl's AxialRoPE2D computes."""
    _, heads, k = freqs.shape
    if freqs.is_meta:  # shapes only (a layout check on the meta device)
        return
    ours = AxialRoPE2D(8 * k, heads).freqs  # (H, k)
    if not torch.allclose(freqs.float(), ours.expand(2, -1, -1), rtol=1e-6, atol=0):
        raise UnisslError(f"{key}: RoPE frequencies differ from the released default (learned frequencies are "
                          "not supported)")


def _generator(sd: dict[str, torch.Tensor]) -> ReleasedParts:
    out = ReleasedParts(state={})
    s = out.state
    taken: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise UnisslError(f"released RepTok generator state has no {key!r}; is it an MLPMixer1D state dict "
                              "(a Lightning checkpoint's ema_model.net.* with prefix 'ema_model.net.')?")
        taken.add(key)
        return sd[key]

    mixer = "mixer._orig_mod." if any(k.startswith("mixer._orig_mod.") for k in sd) else "mixer."
    s["net.pos"] = take("pos_embed")  # (1, 1, D)
    for j in (0, 2):
        for p in ("weight", "bias"):
            s[f"net.time_embed.mlp.{j}.{p}"] = take(f"t_embedder.mlp.{j}.{p}")
    s["net.conditioner.embed.weight"] = take("label_embedder.embedding_table.weight")
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(re.escape(mixer) + r"(\d+)\.", k))})
    if not idx or idx != list(range(len(idx))) or len(idx) < 3:
        raise UnisslError(f"released RepTok generator: the mixer's layers {idx} are not 0..depth+2")
    depth = len(idx) - 3
    for p in ("weight", "bias"):
        s[f"net.mixer.in_proj.{p}"] = take(f"{mixer}0.{p}")
        s[f"net.mixer.norm.{p}"] = take(f"{mixer}{depth + 1}.{p}")
        s[f"net.mixer.out_proj.{p}"] = take(f"{mixer}{depth + 2}.{p}")
        for i in range(depth):
            r, u = f"{mixer}{i + 1}.", f"net.mixer.blocks.{i}."
            s[u + f"norm1.{p}"] = take(r + f"0.norm.{p}")
            s[u + f"norm2.{p}"] = take(r + f"1.norm.{p}")
            for j, fc in ((0, "fc1"), (3, "fc2")):
                tm = take(r + f"0.fn.{j}.{p}")
                s[u + f"token_mlp.{fc}.{p}"] = tm.squeeze(-1) if p == "weight" else tm  # Conv1d (o, i, 1) -> (o, i)
                s[u + f"channel_mlp.{fc}.{p}"] = take(r + f"1.fn.{j}.{p}")
    unknown = sorted(set(sd) - taken)
    if unknown:
        raise UnisslError(f"released RepTok generator state has keys this map does not know: {unknown[:5]}"
                          f"{' ...' if len(unknown) > 5 else ''}; it is not the layout of CompVis/RepTok @ 85c3519")
    return out


def released_to_unissl(state_dict: Mapping[str, torch.Tensor], part: Literal["tokenizer", "generator"],
                       prefix: str = "", patch_size: int = 2) -> ReleasedParts:
    """Map a CompVis/RepTok state dict onto unissl's ``released-*`` presets (see the module docstring's table).

    ``state_dict``: the released module's state (a ``RepTokLatentRF2D`` for ``part="tokenizer"``, an
    ``MLPMixer1D`` for ``part="generator"``); only keys starting with ``prefix`` are read, with it stripped
    (e.g. ``"ema_model.net."`` for the EMA generator of a ``TrainerModuleLatentFlow`` checkpoint).
    ``patch_size``: the decoder's patch size (``configs/model/reptok.yaml``: 2).

    Returns :class:`ReleasedParts`: ``state`` loads into ``RepTokTokenizer`` (with ``load_saved_state``: the
    DINOv2 backbone and the VAE are the frozen parts, carried in ``dinov2`` / ``vae``) or into
    ``TokenGeneratorMethod`` (``strict=False`` for ``z_mean`` / ``z_std`` only). No tensor is shared with the
    input where a tensor was changed; the others are the input's own tensors.
    """
    if part not in ("tokenizer", "generator"):
        raise ValueError(f"part must be 'tokenizer' or 'generator', got {part!r}")
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sd:
        raise UnisslError(f"no keys under the prefix {prefix!r} in the released state dict")
    if patch_size < 1 or not math.isfinite(patch_size):
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    return _tokenizer(sd, patch_size) if part == "tokenizer" else _generator(sd)
