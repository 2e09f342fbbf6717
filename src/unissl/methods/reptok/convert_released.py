"""CompVis/RepTok's released checkpoint (``reptok-xl-600k-ImageNet.ckpt``) -> unissl tokenizer + generator.

The checkpoint is a PyTorch Lightning checkpoint of ``reptok/trainer_gen.py: TrainerModuleLatentFlow``:

* ``first_stage.decoder.decoder.*``: the tokenizer, a ``RepTokLatentRF2D`` (its DINOv2 with the tuned [cls]
  ``encoder.dino.model.*``, the frozen target ``encoder.dino.target_model.*``, the projection, the flow decoder,
  the mapping network, the VAE ``ae.ae.*``);
* ``first_stage.encoder.encoder.*``: the inference copy of the tuned DINOv2 (bf16), checked against the above;
* ``ema_model.net.*`` / ``model.net.*``: the MLP-Mixer generator (EMA and online weights);
* ``hyper_parameters``: the trainer's configs (OmegaConf objects): the token scale
  ``first_stage_cfg.params.scale_factor`` (the generator models ``token / scale``) and the image size.

It is read without executing code (:mod:`unissl.utils.restricted_pickle`); the keys are mapped by
:func:`unissl.methods.reptok.released.released_to_unissl`; the frozen DINOv2 (the target's weights, whose [cls]
is the tokenizer's ``cls_init``) and the VAE become a transformers and a diffusers model, and everything is
written by the models' own ``save_pretrained``: ``OUT/tokenizer`` (self-contained: ``encoder/``, ``vae/``)
and ``OUT/generator`` (EMA weights, token statistics ``z_mean = 0``, ``z_std = scale``, the tokenizer inside).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unissl.engine.method import load_saved_state
from unissl.errors import ConfigError, UnisslError
from unissl.methods.reptok.decoder import DECODER_PRESETS, FlowDecoder
from unissl.methods.reptok.dinov2_hub import dinov2_from_hub_state
from unissl.methods.reptok.encoders import Dinov2Encoder
from unissl.methods.reptok.generator import TokenGeneratorMethod
from unissl.methods.reptok.mixer import GENERATOR_PRESETS, GeneratorConfig
from unissl.methods.reptok.released import released_to_unissl
from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
from unissl.utils.optional import require
from unissl.utils.restricted_pickle import read_restricted, to_plain

TOKENIZER_PREFIX = "first_stage.decoder.decoder."
INFERENCE_ENCODER_PREFIX = "first_stage.encoder.encoder."
FIX = "pass the Lightning checkpoint of CompVis/RepTok's TrainerModuleLatentFlow (e.g. reptok-xl-600k-ImageNet.ckpt)"


@dataclass
class ConvertOptions:
    """What the checkpoint does not record (the defaults are the released ImageNet model's)."""

    encoder_size: int = 224  # DINOv2 input side (configs/model/reptok.yaml: model_size)
    encoder_dtype: str = "bfloat16"  # the release encodes in bf16 (RepTokImageEncoder); "float32" for exact fp32
    vae_norm_groups: int = 32  # GroupNorm groups of the VAE (stabilityai/sd-vae-ft-mse: 32)
    vae_scale: float = 0.18215  # the release's AutoencoderKL wrapper scale (used unless the checkpoint stores one)
    use_ema: bool = True  # the generator's EMA weights (False: the online weights)


@dataclass
class Converted:
    """Where the converter wrote, and what it read."""

    tokenizer: Path
    generator: Path
    decoder_preset: str
    generator_preset: str
    token_scale: float
    num_classes: int
    notes: list[str]


def read_released_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the plain hyperparameters of a Lightning checkpoint, read with the allowlist."""
    ckpt = read_restricted(path, FIX)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UnisslError(f"{path} has no state_dict: not a Lightning checkpoint; {FIX}")
    state = {k: v for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    hparams = to_plain(ckpt.get("hyper_parameters") or {})
    return state, hparams if isinstance(hparams, dict) else {}


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return default
        cfg = cfg[part]
    return cfg


def vae_config(vae: dict[str, torch.Tensor], norm_groups: int, scale: float, image_size: int) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config read from its weights' shapes (GroupNorm groups are not in the
    shapes: ``norm_groups``)."""
    n = 1 + max(int(m.group(1)) for k in vae if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
    widths = [int(vae[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n)]
    layers = len({k.split(".")[4] for k in vae if k.startswith("encoder.down_blocks.0.resnets.")})
    latent = int(vae["encoder.conv_out.weight"].shape[0]) // 2  # mean and log-variance
    if any(w % norm_groups for w in widths):
        raise ConfigError("vae_norm_groups", f"the VAE's widths {widths} are not divisible by {norm_groups} GroupNorm "
                          f"groups; set it to the VAE's group count")
    return {"in_channels": int(vae["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(vae["decoder.conv_out.weight"].shape[0]),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": widths, "layers_per_block": layers, "latent_channels": latent,
            "norm_num_groups": norm_groups, "sample_size": image_size, "scaling_factor": scale,
            "use_quant_conv": "quant_conv.weight" in vae, "use_post_quant_conv": "post_quant_conv.weight" in vae,
            "mid_block_add_attention": any(k.startswith("encoder.mid_block.attentions.") for k in vae)}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.named_parameters()}


def _match_decoder_preset(state: dict[str, torch.Tensor], channels: int, size: int, patch: int) -> str:
    """The ``released-*`` decoder preset whose shapes are exactly the checkpoint's (built on the meta device)."""
    want = {k[len("decoder."):]: tuple(v.shape) for k, v in state.items() if k.startswith("decoder.")}
    for name, preset in DECODER_PRESETS.items():
        if not name.startswith("released"):
            continue
        with torch.device("meta"):
            got = _shapes(FlowDecoder(preset, channels, size, patch))
        if got == {k: v for k, v in want.items() if k in got} and set(got) <= set(want):
            return name
    width = want.get("patch_in.weight", (0,))[0]
    raise UnisslError(f"no released-* decoder preset has the checkpoint's decoder shapes (width {width}); the "
                      f"checkpoint is not CompVis/RepTok's released architecture")


def _match_generator_preset(state: dict[str, torch.Tensor]) -> str:
    width = int(state["net.mixer.in_proj.weight"].shape[0])
    depth = len({k.split(".")[3] for k in state if k.startswith("net.mixer.blocks.")})
    slots = int(state["net.mixer.blocks.0.token_mlp.fc1.weight"].shape[1])
    slot_hidden = int(state["net.mixer.blocks.0.token_mlp.fc1.weight"].shape[0])
    channel_hidden = int(state["net.mixer.blocks.0.channel_mlp.fc1.weight"].shape[0])
    for name, p in GENERATOR_PRESETS.items():
        if (name.startswith("released") and p.width == width and p.depth == depth
                and int(slots * p.slot_expansion) == slot_hidden and int(width * p.channel_expansion) == channel_hidden):
            return name
    raise UnisslError(f"no released-* generator preset has width {width}, depth {depth}; the checkpoint is not "
                      f"CompVis/RepTok's released MLP-Mixer")


def _frozen_dinov2(sd: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], notes: list[str]) -> dict[str, Any]:
    """The frozen target DINOv2 (hub layout): the tuned copy's weights with the target's [cls]. unissl keeps one
    backbone, so the two copies must agree everywhere but the [cls]."""
    target_prefix = TOKENIZER_PREFIX + "encoder.dino.target_model."
    target = {k[len(target_prefix):]: v for k, v in sd.items() if k.startswith(target_prefix)}
    if not target:
        raise UnisslError(f"the checkpoint has no frozen DINOv2 ({target_prefix}*); {FIX}")
    differ = [k for k in tuned if k != "cls_token" and not torch.equal(tuned[k], target.get(k, tuned[k] + 1))]
    if differ:
        raise UnisslError(f"the tuned DINOv2 differs from the frozen target beyond its [cls] ({differ[:3]}); unissl's "
                          f"tokenizer tunes only the [cls]")
    inference = {k[len(INFERENCE_ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(INFERENCE_ENCODER_PREFIX)}
    if inference:
        off = max((inference[k].float() - tuned[k].to(inference[k].dtype).float()).abs().max().item()
                  for k in tuned if k in inference)
        if set(inference) != set(tuned) or off > 0:
            raise UnisslError(f"the checkpoint's inference encoder ({INFERENCE_ENCODER_PREFIX}*) is not the tuned "
                              f"DINOv2 (max difference {off:.3g}); {FIX}")
        notes.append(f"inference encoder {INFERENCE_ENCODER_PREFIX}* = the tuned DINOv2 in "
                     f"{next(iter(inference.values())).dtype} (checked)")
    return {**tuned, "cls_token": target["cls_token"]}


def convert_released_checkpoint(ckpt: str | Path, out: str | Path, opts: ConvertOptions | None = None) -> Converted:
    """Convert ``ckpt`` into ``out/tokenizer`` and ``out/generator`` (see the module docstring)."""
    AutoencoderKL = require("diffusers", "hf", "converting the released RepTok checkpoint (its SD-VAE)").AutoencoderKL

    opts = opts or ConvertOptions()
    out, notes = Path(out), []
    sd, hp = read_released_checkpoint(ckpt)
    if not any(k.startswith(TOKENIZER_PREFIX) for k in sd):
        raise UnisslError(f"{ckpt} has no tokenizer ({TOKENIZER_PREFIX}*): not a TrainerModuleLatentFlow "
                          f"checkpoint with its first stage; {FIX}")
    scale = float(_get(hp, "first_stage_cfg.params.scale_factor", 1.0))
    image_size = int(_get(hp, "first_stage_cfg.params.image_size", 256))
    vae_sd = {k[len(TOKENIZER_PREFIX + "ae.ae."):]: v for k, v in sd.items() if k.startswith(TOKENIZER_PREFIX + "ae.ae.")}
    if not vae_sd:
        raise UnisslError(f"{ckpt} has no VAE ({TOKENIZER_PREFIX}ae.ae.*); {FIX}")
    latent_channels = int(vae_sd["encoder.conv_out.weight"].shape[0]) // 2
    patch_in = sd[TOKENIZER_PREFIX + "backbone.mid_merge.pre_proj.proj.weight"]
    patch = round((patch_in.shape[1] / latent_channels) ** 0.5)
    tok_parts = released_to_unissl(sd, "tokenizer", prefix=TOKENIZER_PREFIX, patch_size=patch)
    gen_prefix = "ema_model.net." if opts.use_ema and any(k.startswith("ema_model.net.") for k in sd) else "model.net."
    if opts.use_ema and gen_prefix == "model.net.":
        notes.append("the checkpoint has no EMA generator (ema_model.net.*): the online weights are converted")
    gen_parts = released_to_unissl(sd, "generator", prefix=gen_prefix)
    hub_dino = _frozen_dinov2(sd, tok_parts.dinov2, notes)
    vae_scale = opts.vae_scale
    for key in ("scale", "shift"):  # the wrapper's scale / shift as tensors (a per-channel config): scalars only
        if key in tok_parts.vae:
            value = tok_parts.vae.pop(key).float().unique()
            if value.numel() != 1 or (key == "shift" and value.item() != 0):
                raise UnisslError(f"the checkpoint's VAE {key} is per-channel ({value.tolist()[:4]}); unissl's VAE "
                                  f"space takes one scale and no shift")
            vae_scale = value.item() if key == "scale" else vae_scale

    vcfg = vae_config(tok_parts.vae, opts.vae_norm_groups, vae_scale, image_size)
    factor = 2 ** (len(vcfg["block_out_channels"]) - 1)
    decoder = _match_decoder_preset(tok_parts.state, latent_channels, image_size // factor, patch)
    registers = int(tok_parts.state["new_registers"].shape[0]) if "new_registers" in tok_parts.state else 0
    g = gen_parts.state
    token_dim = int(g["net.pos"].shape[-1])
    if int(hub_dino["cls_token"].shape[-1]) != token_dim:
        raise UnisslError(f"the generator's tokens are {token_dim}-d, the DINOv2's "
                          f"{int(hub_dino['cls_token'].shape[-1])}-d; {FIX}")
    n_rows = int(g["net.conditioner.embed.weight"].shape[0])
    dropout = float(_get(hp, "flow_cfg.params.net_cfg.params.class_dropout_prob", 0.1) or 0.0)
    num_classes = n_rows - 1 if dropout > 0 else n_rows
    gcfg = GeneratorConfig(token_dim=token_dim, preset=_match_generator_preset(g), conditioning="class",
                           num_classes=num_classes, cond_dropout=dropout, tokenizer_path=str(out / "tokenizer"))
    generator = TokenGeneratorMethod(gcfg, z_mean=torch.zeros(token_dim), z_std=torch.tensor(scale))
    missing, unexpected = generator.load_state_dict(g, strict=False)
    if unexpected or set(missing) - {"z_mean", "z_std"}:
        raise UnisslError(f"{ckpt}: the generator does not load (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); {FIX}")

    out.mkdir(parents=True, exist_ok=True)  # everything above is read and checked before anything is written
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out) as tmp:
        work = Path(tmp)
        dinov2_from_hub_state({k: v.float() for k, v in hub_dino.items()}, where=str(ckpt)).save_pretrained(
            str(work / "dinov2"), safe_serialization=True)
        vae: Any = AutoencoderKL(**vcfg)
        missing, unexpected = vae.load_state_dict(tok_parts.vae, strict=False)
        if missing or unexpected:
            raise UnisslError(f"the checkpoint's VAE does not match a diffusers AutoencoderKL of its shapes "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); {FIX}")
        vae.save_pretrained(str(work / "vae"), safe_serialization=True)
        encoder = Dinov2Encoder(work / "dinov2", image_size=opts.encoder_size, resize="released",
                                dtype=opts.encoder_dtype)  # type: ignore[arg-type]  # checked by Dinov2Encoder
        cfg = RepTokConfig(encoder=encoder.spec(), image_size=image_size, channels=3, decoder=decoder,
                           patch_size=patch, space="vae", vae_path=str(work / "vae"), new_registers=registers,
                           register_target="only_nonreg",
                           extra={"converted_from": str(Path(ckpt).name), "release": "CompVis/RepTok"})
        tokenizer = RepTokTokenizer(cfg, encoder)
        try:
            load_saved_state(tokenizer, tok_parts.state)
        except RuntimeError as e:
            raise UnisslError(f"{ckpt}: the tokenizer does not load ({str(e).splitlines()[0]}); {FIX}") from None
        tokenizer.save_pretrained(out / "tokenizer")
    generator.save_pretrained(out / "generator")  # with the tokenizer inside (tokenizer_path)
    return Converted(out / "tokenizer", out / "generator", decoder, gcfg.preset, scale, num_classes, notes)
