"""``unissl convert reptok``: CompVis/RepTok's released Lightning checkpoint -> a unissl tokenizer and generator.

Reads ``reptok-xl-600k-ImageNet.ckpt`` (or any ``TrainerModuleLatentFlow`` checkpoint of the release) without
executing code, and writes ``OUT/tokenizer`` (with its frozen DINOv2 and VAE inside) and ``OUT/generator``
(EMA weights, the token scale, the tokenizer inside): ``unissl reconstruct --tokenizer OUT/tokenizer`` and
``unissl sample reptok --checkpoint OUT/generator`` run on them with no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from unissl.config import arg
from unissl.errors import UnisslError
from unissl.methods.reptok.convert_released import ConvertOptions, convert_released_checkpoint


@dataclass
class Config:
    """Convert CompVis/RepTok's released checkpoint into unissl's tokenizer and generator directories."""

    ckpt: str = arg(help="the release's Lightning checkpoint (e.g. reptok-xl-600k-ImageNet.ckpt)")
    out: str = arg(output="dir", help="output directory: OUT/tokenizer and OUT/generator are written")
    encoder_size: int = arg(224, help="DINOv2 input side (the release's configs/model/reptok.yaml: 224)")
    vae_norm_groups: int = arg(32, help="GroupNorm groups of the VAE (sd-vae-ft-mse: 32; not in the checkpoint)")
    vae_scale: float = arg(0.18215, help="latent scale of the release's VAE wrapper (unless the checkpoint has one)")
    encoder_dtype: Literal["bfloat16", "float32"] = arg("bfloat16", help="DINOv2 precision (the release: bfloat16)")
    online: bool = arg(False, help="convert the generator's online weights instead of its EMA")

    def __post_init__(self) -> None:
        if self.encoder_size <= 0 or self.vae_norm_groups <= 0 or not self.vae_scale > 0:
            raise UnisslError("--encoder-size, --vae-norm-groups and --vae-scale must be positive")


def run(cfg: Config) -> None:
    out = Path(cfg.out)
    taken = [p for p in (out / "tokenizer", out / "generator") if p.exists()]
    if taken:
        raise UnisslError(f"{taken[0]} already exists; choose another --out or remove it")
    opts = ConvertOptions(encoder_size=cfg.encoder_size, vae_norm_groups=cfg.vae_norm_groups,
                          vae_scale=cfg.vae_scale, use_ema=not cfg.online, encoder_dtype=cfg.encoder_dtype)
    res = convert_released_checkpoint(cfg.ckpt, out, opts)
    print(f"read {cfg.ckpt} (allowlisted unpickling, no code run)")
    for note in res.notes:
        print(f"  {note}")
    print(f"tokenizer -> {res.tokenizer} (decoder preset {res.decoder_preset}, frozen DINOv2 and VAE inside)")
    print(f"generator -> {res.generator} (preset {res.generator_preset}, {'online' if cfg.online else 'EMA'} "
          f"weights, {res.num_classes} classes, token scale {res.token_scale:g})")
    print(f"next: unissl reconstruct --tokenizer {res.tokenizer} ...; unissl sample reptok --checkpoint "
          f"{res.generator} --class 0")
