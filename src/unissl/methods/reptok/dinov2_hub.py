"""DINOv2 in facebookresearch/dinov2's torch-hub format (``dinov2_vitb14_reg4_pretrain.pth``) -> transformers.

The hub publishes each backbone as a plain state dict of ``dinov2.models.vision_transformer.DinoVisionTransformer``
(``cls_token``, ``pos_embed``, ``register_tokens``, ``blocks.N.attn.qkv`` ...), the format CompVis/RepTok loads.
unissl runs DINOv2 as a transformers model, so this module reads such a file weights-only, infers the architecture
from the tensor shapes, and renames / splits the tensors into the transformers layout:

* the fused ``attn.qkv`` (3D, D) is split into query / key / value (D, D) each, in that order;
* ``ls1.gamma`` / ``ls2.gamma`` (layer scale) become ``layer_scale1.lambda1`` / ``layer_scale2.lambda1``;
* ``pos_embed`` (1, 1 + G*G, D) fixes the native grid G, hence ``image_size = G * patch``.

The heads are not stored in the file: every DINOv2 release (ViT-S/B/L/g) uses 64-dimensional heads, which is
the default. With registers the hub model interpolates its position embeddings with antialiasing and without
the 0.1 offset (``dinov2_vit*14_reg``), exactly as transformers' ``Dinov2WithRegistersModel`` does; the
register-free hub models use an offset of 0.1 that transformers' ``Dinov2Model`` does not, so those two agree
only at the native resolution.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from unissl.errors import UnisslError
from unissl.utils.optional import require
from unissl.utils.weights import read_torch_weights

HEAD_DIM = 64  # every DINOv2 release (ViT-S/14 .. ViT-g/14)
HUB_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight")
FIX = "pass a DINOv2 torch-hub state dict (e.g. dinov2_vitb14_reg4_pretrain.pth) or a transformers directory"


def is_hub_state(state: Any) -> bool:
    """Whether ``state`` is a DINOv2 hub state dict (the keys of ``DinoVisionTransformer``)."""
    return isinstance(state, dict) and all(k in state for k in HUB_KEYS)


def hub_config(state: dict[str, torch.Tensor], heads: int | None = None) -> dict[str, Any]:
    """The architecture a hub state dict holds: width, depth, heads, patch, native image size, registers."""
    dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    if grid * grid != state["pos_embed"].shape[1] - 1:
        raise UnisslError(f"DINOv2 pos_embed of {state['pos_embed'].shape[1]} positions is not 1 + a square grid")
    if "blocks.0.mlp.fc1.weight" not in state:
        raise UnisslError("this DINOv2 hub file has no blocks.0.mlp.fc1 (a SwiGLU ViT-g or a chunked FSDP "
                          "state dict), which unissl does not read; use ViT-S/B/L weights")
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    if hidden % dim:
        raise UnisslError(f"DINOv2 MLP width {hidden} is not a multiple of the width {dim}; {FIX}")
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    heads = heads or max(1, dim // HEAD_DIM)
    if dim % heads:
        raise UnisslError(f"DINOv2 width {dim} is not divisible by {heads} heads")
    return {"hidden_size": dim, "num_hidden_layers": depth, "num_attention_heads": heads,
            "mlp_ratio": hidden // dim, "patch_size": patch, "image_size": grid * patch,
            "num_register_tokens": registers, "layer_norm_eps": 1e-6, "layerscale_value": 1.0,
            "qkv_bias": "blocks.0.attn.qkv.bias" in state}


def _attention_names(model_keys: set[str]) -> tuple[str, str, str, str]:
    """transformers' names of query / key / value / output in this version (they were renamed in v5)."""
    if "encoder.layer.0.attention.q_proj.weight" in model_keys:
        return "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    return ("attention.attention.query", "attention.attention.key", "attention.attention.value",
            "attention.output.dense")


def hub_to_transformers_state(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename / split a hub state dict into the keys of a transformers DINOv2 model (``model_keys``)."""
    q, k, v, o = _attention_names(model_keys)
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"],
    }
    if "mask_token" in state:
        out["embeddings.mask_token"] = state["mask_token"].reshape(1, -1)  # (1, D)
    if "register_tokens" in state:
        out["embeddings.register_tokens"] = state["register_tokens"]
    rename = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "attn.proj": o,
              "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
    for key, value in state.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if not m:
            continue
        layer, rest = f"encoder.layer.{m.group(1)}", m.group(2)
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]  # weight (3D, D) or bias (3D,)
            for name, part in zip((q, k, v), value.chunk(3, dim=0), strict=True):
                out[f"{layer}.{name}.{kind}"] = part
            continue
        base, kind = rest.rsplit(".", 1)
        target = rename.get(rest) or (f"{rename[base]}.{kind}" if base in rename else None)
        if target is None:
            raise UnisslError(f"unexpected key {key!r} in a DINOv2 hub state dict; {FIX}")
        out[f"{layer}.{target}"] = value
    dim, depth = state["cls_token"].shape[-1], hub_config(state)["num_hidden_layers"]
    for i in range(depth):  # a hub model built with init_values=None has no layer scale: the same as ones
        for ls in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            out.setdefault(f"encoder.layer.{i}.{ls}", torch.ones(dim))
    return out


def build_transformers_dinov2(registers: int, **config: Any) -> Any:
    """A freshly initialised transformers ``Dinov2WithRegistersModel`` (``Dinov2Model`` when ``registers`` is 0)."""
    transformers = require("transformers", "hf", "DINOv2")
    if registers:
        return transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **config))
    return transformers.Dinov2Model(transformers.Dinov2Config(**config))


def dinov2_from_hub_state(state: dict[str, torch.Tensor], heads: int | None = None, where: str = "state") -> Any:
    """A transformers ``Dinov2WithRegistersModel`` (or ``Dinov2Model`` without registers) holding ``state``."""
    cfg = hub_config(state, heads)
    model = build_transformers_dinov2(cfg.pop("num_register_tokens"), **cfg)
    converted = hub_to_transformers_state(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise UnisslError(f"{where} does not match a DINOv2 of its own shapes (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); {FIX}")
    return model.eval()


def load_hub_dinov2(path: str | Path, heads: int | None = None) -> Any:
    """Read a hub-format ``.pth`` weights-only and return it as a transformers model (eval mode)."""
    state = read_torch_weights(path, FIX)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and is_hub_state(state["model"]):
        state = state["model"]  # a training checkpoint of dinov2 that wraps the weights
    if not is_hub_state(state):
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise UnisslError(f"{path} is not a DINOv2 torch-hub state dict (found {keys}); {FIX}")
    return dinov2_from_hub_state({k: v.float() for k, v in state.items()}, heads, where=str(path))
