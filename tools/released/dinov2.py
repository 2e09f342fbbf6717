"""Golden DINOv2 fixtures written by facebookresearch/dinov2's own ``DinoVisionTransformer``.

Two tiny backbones (width 64, one head of 64 as in every release, depth 2 / 1, MLP ratio 2, patch 14, a 4 x 4
native grid), random seeded weights
(every parameter drawn, so layer scale, [cls] and registers are non-trivial), built exactly as the hub builds
``dinov2_vitb14_reg`` (4 registers, antialiased interpolation without offset) and ``dinov2_vitb14`` (no
registers, offset 0.1). Each writes its hub-format state dict (what ``torch.hub`` downloads as
``dinov2_vit*14*_pretrain.pth``) and the outputs of ``forward_features`` for fixed images:

    dinov2_tiny_reg4_pretrain.pth   hub state dict, 4 registers
    dinov2_tiny_pretrain.pth        hub state dict, no registers
    dinov2_outputs.safetensors      inputs (normalised pixels) and cls / registers / patch tokens per model

The registered model is also run at 70 x 70 (a 5 x 5 grid: position embeddings interpolated).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

try:
    from env import activate
except ImportError:  # imported as tools.released.dinov2
    from .env import activate


def _tiny_dinov2(registers: int, depth: int) -> torch.nn.Module:
    """A tiny ``DinoVisionTransformer`` with the hub's settings for its kind (reg: antialias, no offset)."""
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    hub = {"interpolate_antialias": True, "interpolate_offset": 0.0} if registers else {}
    return DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=depth, num_heads=1, mlp_ratio=2,
                                 init_values=1.0, block_chunks=0, num_register_tokens=registers,
                                 block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), **hub)


def _randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter drawn: matrices ~ N(0, 1/fan_in), tokens and positions ~ N(0, 0.5^2), norm and
    layer-scale gains ~ 1 + N(0, 0.3^2), biases ~ N(0, 0.1^2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "token" in name or "pos_embed" in name:
                p.copy_(0.5 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("gamma") or "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.1 * noise)


def write_dinov2(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """Write the DINOv2 hub-format fixtures into ``out_dir``; return the files written."""
    import os

    os.environ.setdefault("XFORMERS_DISABLED", "1")  # the plain attention path, on CPU
    activate("dinov2", root)
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(20260)
    images = {"native": torch.rand(2, 3, 56, 56, generator=gen), "resized": torch.rand(2, 3, 70, 70, generator=gen)}
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tensors: dict[str, torch.Tensor] = {f"images_{k}": v for k, v in images.items()}  # in [0, 1]
    written = []
    for name, registers, sizes in (("reg4", 4, ("native", "resized")), ("noreg", 0, ("native",))):
        torch.manual_seed(7 + registers)
        model = _tiny_dinov2(registers, depth=2 if registers else 1).eval()
        _randomise(model, gen)
        file = out / ("dinov2_tiny_reg4_pretrain.pth" if registers else "dinov2_tiny_pretrain.pth")
        torch.save(model.state_dict(), file)  # the hub format: a plain state dict
        written.append(file)
        for size in sizes:
            with torch.no_grad():
                f = model.forward_features((images[size] - mean) / std)
            tensors[f"{name}_{size}_cls"] = f["x_norm_clstoken"].contiguous()  # (B, D)
            tensors[f"{name}_{size}_registers"] = f["x_norm_regtokens"].contiguous()  # (B, R, D)
            tensors[f"{name}_{size}_patch"] = f["x_norm_patchtokens"].contiguous()  # (B, N, D)
    save_file(tensors, str(out / "dinov2_outputs.safetensors"))
    written.append(out / "dinov2_outputs.safetensors")
    return written
