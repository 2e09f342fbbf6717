"""``unissl interpolate``: decode tokens on the path between two images' RepTok tokens into a strip PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from unissl.config import arg
from unissl.data import build_dataset
from unissl.data.folder import decode_image
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.methods.reptok.interpolation import INTERPOLATIONS
from unissl.methods.reptok.tokenizer import DECODE_STEPS, RepTokTokenizer
from unissl.utils.images import save_grid


@dataclass
class Config:
    """Interpolate between two images' tokens (slerp or lerp) and decode every point."""

    tokenizer: str = arg(help="tokenizer directory (the --out of `unissl train reptok-tokenizer`)")
    image_a: str | None = arg(None, help="first image file (PNG/JPEG); or use --dataset with --index-a")
    image_b: str | None = arg(None, help="second image file; or use --dataset with --index-b")
    dataset: str | None = arg(None, help="take the two images from this dataset instead of files")
    data_dir: str | None = arg(None, help="dataset directory")
    split: str = arg("test", help="dataset split")
    index_a: int = arg(0, help="index of the first image in the dataset")
    index_b: int = arg(1, help="index of the second image in the dataset")
    points: int = arg(8, help="number of tokens on the path, endpoints included")
    method: Literal["slerp", "lerp"] = arg("slerp", help="interpolation")
    steps: int = arg(DECODE_STEPS, help="ODE steps of the decoder")
    solver: Literal["euler", "heun"] = arg("euler", help="ODE solver")
    seed: int = arg(0, help="seed of the starting noise (the same noise for every point)")
    device: str = device_arg()
    out: str = arg("interpolation.png", output="file", help="output strip PNG")

    def __post_init__(self) -> None:
        if self.points < 2:
            raise UnisslError(f"--points must be >= 2, got {self.points}")
        if self.dataset is None and (self.image_a is None or self.image_b is None):
            raise UnisslError("pass two images with --image-a and --image-b, or --dataset with --index-a/--index-b")


def load_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """An image file -> (1, channels, size, size) in [0, 1], decoded as the folder dataset decodes its images
    (shorter side resized with antialias, centre crop, grey or RGB), so a file and a dataset item match."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"image {path} not found")
    arr = decode_image(path, size, channels, str(path))  # uint8 (H, W, C)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def run(cfg: Config) -> Path:
    """Write the strip: image A, the decoded path (``points`` tokens), image B."""
    device = resolve_device(cfg.device)
    tok = RepTokTokenizer.from_pretrained(cfg.tokenizer, device=device)
    c, s = tok.cfg.channels, tok.cfg.image_size
    if cfg.dataset is not None:
        data = build_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, image_size=s)
        for i in (cfg.index_a, cfg.index_b):
            if not 0 <= i < len(data):
                raise UnisslError(f"index {i} is out of range for {cfg.dataset}/{cfg.split} ({len(data)} images)")
        pair = data.__getitems__([cfg.index_a, cfg.index_b])["image"]
    else:
        pair = torch.cat([load_image(cfg.image_a, c, s), load_image(cfg.image_b, c, s)])  # type: ignore[arg-type]
    pair = pair.to(device)
    z = tok.encode(pair)  # (2, D)
    w = torch.linspace(0, 1, cfg.points, device=device)
    path = INTERPOLATIONS[cfg.method](z[0], z[1], w)  # (points, D)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    noise = torch.randn((1, *tok.space.shape), generator=gen, device=device).expand(cfg.points, -1, -1, -1)
    frames = tok.decode(path, steps=cfg.steps, solver=cfg.solver, noise=noise.contiguous())
    strip = torch.cat([pair[:1], frames, pair[1:]]).cpu()
    out = save_grid(strip, cfg.out, nrow=strip.shape[0], scale=2)
    print(f"unissl interpolate: {cfg.method} with {cfg.points} points -> {out}")
    return out
