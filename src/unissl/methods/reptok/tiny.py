"""Small randomly initialised stand-ins for pretrained weights (offline tests and CPU smoke runs).

They exercise exactly the loading code that real weights go through (``from_pretrained`` of a local
directory); a random DINOv2 is *not* a self-supervised encoder, so results obtained with it say nothing
about the SSL geometry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unissl.methods.reptok.dinov2_hub import build_transformers_dinov2
from unissl.utils.optional import require


def save_random_dinov2(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, patch: int = 4,
                       image_size: int = 28, registers: int = 0, dropout: float = 0.0, seed: int = 0) -> Path:
    """Write a randomly initialised transformers DINOv2 (with ``registers`` register tokens) to ``path``."""
    require("transformers", "hf", "a random DINOv2")  # the message names what needs it

    kw: dict[str, Any] = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=2,
              patch_size=patch, image_size=image_size, hidden_dropout_prob=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_transformers_dinov2(registers, **kw)
        with torch.no_grad():  # a non-trivial class token (the default init is almost zero)
            model.embeddings.cls_token.normal_()
    model.save_pretrained(str(path))
    return Path(path)


def save_random_autoencoder_kl(path: str | Path, latent_channels: int = 4, width: int = 8, seed: int = 0) -> Path:
    """Write a tiny randomly initialised diffusers AutoencoderKL (downsampling 2) to ``path``."""
    diffusers = require("diffusers", "hf", "a random AutoencoderKL")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae: Any = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(width, width),
                                      layers_per_block=1, latent_channels=latent_channels,
                                      norm_num_groups=min(4, width))
    vae.save_pretrained(str(path))
    return Path(path)
