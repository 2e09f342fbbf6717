"""A VQGAN-style convolutional VQ tokenizer (stage 0 of Sorcen, shared by both methods).

Layout (``VQConfig``: ``ch``, ``ch_mult``, ``num_res_blocks``)::

    image (B,C,H,W) in [0,1] -> x*2-1
      encoder: conv_in -> [res blocks at width ch*ch_mult[i], stride-2 conv between levels]
               -> mid res block -> GroupNorm -> SiLU -> 1x1 conv to code_dim    (B, D, H/f, W/f)
      quantizer: nearest code (cosine lookup when l2_norm), EMA or straight-through  ids (B, h, w)
      decoder: mirror of the encoder with nearest upsampling + conv            (B, C, H, W) in [-1, 1]

with downsampling factor f = 2^(len(ch_mult) - 1). Trained with a pixel MSE (no perceptual / GAN
terms: on the small datasets this project trains on they are not needed for PSNR, and LPIPS weights are
not available offline). Named presets live in :data:`PRESETS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import UnisslError
from unissl.tokenizers.base import TokenizerBase
from unissl.tokenizers.quantize import QuantizerOutput, VectorQuantizer
from unissl.utils.hub import PretrainedMixin
from unissl.utils.io import sha256_file
from unissl.utils.weights import read_safetensors

FORMAT = "unissl-vq"  # value of "format" in config.json
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class VQConfig:
    """Architecture and quantizer of a :class:`VQTokenizer`."""

    image_size: int = 28
    channels: int = 1
    ch: int = 64  # base width
    ch_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; f = 2^(len-1)
    num_res_blocks: int = 1  # residual blocks per level
    codebook_size: int = 512
    code_dim: int = 32  # latent / code dimension D
    quantizer: str = "ema"  # "ema" or "st"
    l2_norm: bool = True  # cosine lookup on unit-norm codes
    beta: float = 0.25  # commitment weight
    ema_decay: float = 0.99
    dead_after: int = 50  # restart codes unused for this many steps (0: never)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        f = 2 ** (len(self.ch_mult) - 1)
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty list of positive ints, got {self.ch_mult}")
        if self.image_size % f:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling factor {f} "
                             f"(ch_mult {list(self.ch_mult)}); change one of them")
        if self.quantizer not in ("ema", "st"):
            raise ValueError(f"quantizer must be 'ema' or 'st', got {self.quantizer!r}")
        if self.codebook_size < 2 or self.code_dim < 1 or self.ch < 1 or self.channels < 1:
            raise ValueError("codebook_size >= 2, code_dim >= 1, ch >= 1 and channels >= 1 are required")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.downsample
        return (g, g)


# Named presets (the CLI's choices). Grid = image_size / 2^(len(ch_mult)-1).
PRESETS: dict[str, VQConfig] = {
    # unit tests: 8x8 RGB -> 4x4 ids, a few thousand parameters
    "tiny": VQConfig(image_size=8, channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, codebook_size=16,
                     code_dim=8, dead_after=20),
    # scikit-learn digits (8x8 grey) -> 4x4 ids, trains in seconds on CPU
    "digits": VQConfig(image_size=8, channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, codebook_size=64,
                       code_dim=16, dead_after=20),
    # Fashion-MNIST 28x28 -> 7x7 ids, 512 codes
    "fmnist": VQConfig(image_size=28, channels=1, ch=32, ch_mult=(1, 2, 4), num_res_blocks=1,
                       codebook_size=512, code_dim=32, dead_after=50),
    # Fashion-MNIST 28x28 -> 14x14 ids (fallback with more tokens per image)
    "fmnist14": VQConfig(image_size=28, channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                         codebook_size=512, code_dim=32, dead_after=50),
}


def preset(name: str) -> VQConfig:
    """A fresh copy of a named preset (``tiny``, ``digits``, ``fmnist``, ``fmnist14``)."""
    if name not in PRESETS:
        raise UnisslError(f"unknown VQ preset {name!r}; choose one of {sorted(PRESETS)} "
                          "(the MAGE VQGAN is loaded from its checkpoint, see unissl.tokenizers.taming)")
    return dataclasses.replace(PRESETS[name])


def _norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``ch``."""
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv3x3) x 2 plus a 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Encoder(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> latents (B, code_dim, H/f, W/f)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, w))
                cin = w
            if i < len(widths) - 1:  # stride-2 conv halves the resolution
                layers.append(nn.Conv2d(cin, cin, 4, stride=2, padding=1))
        layers.append(ResBlock(cin, cin))  # middle
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Quantized latents (B, code_dim, h, w) -> images (B, C, h*f, w*f) in about [-1, 1]."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult][::-1]  # deepest level first
        cin = widths[0]
        self.conv_in = nn.Conv2d(cfg.code_dim, cin, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(cin, cin)]  # middle
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(cin, w))
                cin = w
            if i < len(widths) - 1:  # nearest upsampling + conv to the next (narrower) width
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, widths[i + 1], 3, padding=1)]
                cin = widths[i + 1]
        self.body = nn.Sequential(*layers)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class VQOutput:
    """One training forward of :class:`VQTokenizer`."""

    recon: torch.Tensor  # (B, C, H, W) reconstruction in [0, 1] scale, unclamped
    ids: torch.Tensor  # (B, h, w) int64
    vq_loss: torch.Tensor  # scalar
    perplexity: torch.Tensor  # scalar
    usage: torch.Tensor  # scalar


class VQTokenizer(TokenizerBase, PretrainedMixin):
    """Convolutional VQ autoencoder: ``encode`` images to ids, ``decode`` ids to images."""

    kind = "vq"

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.codebook_size, self.grid = cfg.codebook_size, cfg.grid
        self.image_size, self.channels = cfg.image_size, cfg.channels
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, kind=cfg.quantizer,
                                         l2_norm=cfg.l2_norm, beta=cfg.beta, decay=cfg.ema_decay,
                                         dead_after=cfg.dead_after)
        self.decoder = Decoder(cfg)

    def config_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["ch_mult"] = list(self.cfg.ch_mult)
        return d

    # ----------------------------------------------------------- networks
    def forward(self, images: torch.Tensor) -> VQOutput:
        """Autoencode ``images`` (B, C, H, W) in [0, 1] (differentiable; updates codebook stats in training)."""
        z = self.encoder(images * 2.0 - 1.0)  # (B, D, h, w)
        q: QuantizerOutput = self.quantizer(z)
        recon = (self.decoder(q.z_q) + 1.0) / 2.0  # (B, C, H, W)
        return VQOutput(recon=recon, ids=q.ids, vq_loss=q.loss, perplexity=q.perplexity, usage=q.usage)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images.float() * 2.0 - 1.0)  # (B, D, h, w)
        b, d, h, w = z.shape
        z_flat = self.quantizer._prep(z.permute(0, 2, 3, 1).reshape(-1, d))  # (B*h*w, D)
        return self.quantizer.nearest(z_flat).view(b, h, w)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.decoder(self.quantizer.lookup(ids)) + 1.0) / 2.0

    # ----------------------------------------------------------- persistence (utils/hub.py's convention)
    FORMAT = FORMAT
    WHAT = "VQ tokenizer"
    MADE_BY = "`unissl tokenizer train`"
    CARD_TITLE = "unissl VQ tokenizer"

    def pretrained_config(self) -> dict[str, Any]:
        return self.config_dict()

    def pretrained_extra(self) -> dict[str, Any]:
        return {"codebook_size": self.codebook_size, "grid": list(self.grid), "image_size": self.image_size,
                "channels": self.channels}

    def saved_to(self, directory: Path, checksum: str) -> None:
        self._weights_file = directory / WEIGHTS_FILE
        self._weights_sha = checksum

    @classmethod
    def build_pretrained(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         **kwargs: Any) -> VQTokenizer:
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        try:
            cfg = VQConfig(**meta["config"])
        except (TypeError, ValueError, KeyError) as e:
            raise UnisslError(f"{cfg_path}: invalid tokenizer config ({e}); re-save the tokenizer") from e
        model = cls(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UnisslError(f"{w_path}: weights do not match {cfg_path} (missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}); re-save the tokenizer")
        model._weights_file = w_path
        model._weights_sha = sha256_file(w_path)
        return model.requires_grad_(False)

    @classmethod
    def read_version0(cls, directory: Path, meta: dict[str, Any], **kwargs: Any) -> VQTokenizer:
        """Version 0 had the same layout (the config under ``config``), without ``format_version``."""
        state = read_safetensors(directory / WEIGHTS_FILE, "the tokenizer directory is incomplete or damaged: "
                                 "re-save or retrain it")
        return cls.build_pretrained(meta, state, directory)
