"""Where the decoder's flow lives: pixels (small images) or the latents of a frozen diffusers AutoencoderKL.

A space maps images (B, C, H, W) in [0, 1] to the flow's data ``x`` and back. Both are deterministic
functions of the images except the VAE's posterior sample; the VAE is frozen and kept in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unissl.errors import UnisslError
from unissl.utils.optional import require
from unissl.utils.weights import load_pretrained_dir


class PixelSpace(nn.Module):
    """x = 2 * image - 1: the flow runs directly on pixels in [-1, 1]."""

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the flow's data."""
        return (self.channels, self.image_size, self.image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> [-1, 1]
        return images * 2.0 - 1.0

    def decode(self, x: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> [0, 1]
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def load_autoencoder_kl(path: str | Path) -> Any:
    """A diffusers ``AutoencoderKL`` from a local directory (config.json + weights), frozen."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UnisslError(f"VAE directory {path} has no config.json; pass a local diffusers AutoencoderKL "
                          "directory (e.g. one saved with AutoencoderKL.save_pretrained)")

    AutoencoderKL = require("diffusers", "hf", "the VAE space (--space vae)").AutoencoderKL

    vae = load_pretrained_dir(lambda: AutoencoderKL.from_pretrained(str(path), local_files_only=True), path,
                              "VAE (diffusers AutoencoderKL)", "pass a complete local directory saved with "
                              "AutoencoderKL.save_pretrained (e.g. stabilityai/sd-vae-ft-mse downloaded elsewhere)")
    vae.requires_grad_(False)
    return vae.eval()


class VAESpace(nn.Module):
    """x = (E(image) - shift) * scale with a frozen AutoencoderKL (SD-VAE: 4 x H/8 x W/8 latents)."""

    def __init__(self, vae_path: str | Path, channels: int, image_size: int) -> None:
        super().__init__()
        self.vae_path = str(vae_path)
        self.vae = load_autoencoder_kl(vae_path)
        cfg = self.vae.config
        self.channels, self.image_size = channels, image_size
        self.vae_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        if image_size % self.factor:
            raise UnisslError(f"image size {image_size} is not a multiple of the VAE's downsampling {self.factor}")
        self.scale = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents."""
        s = self.image_size // self.factor
        return (self.latent_channels, s, s)

    def train(self, mode: bool = True) -> VAESpace:
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> latents (B, c, H/f, W/f) (a posterior sample)."""
        x = images * 2.0 - 1.0
        if x.shape[1] == 1 and self.vae_channels == 3:
            x = x.repeat(1, 3, 1, 1)  # grey -> RGB
        latent = self.vae.encode(x).latent_dist.sample()
        return (latent - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """latents -> images (B, C, H, W) in [0, 1]."""
        out = self.vae.decode(x / self.scale + self.shift).sample
        if self.channels == 1 and out.shape[1] == 3:
            out = out.mean(dim=1, keepdim=True)
        return ((out + 1.0) / 2.0).clamp(0.0, 1.0)
