"""``unissl sample sorcen``: unconditional MaskGIT samples from a trained Sorcen / MAGE run.

Writes ``<out>/samples.png`` (a grid of decoded images) and ``<out>/samples.npz`` with ``ids`` (N, h, w)
int64 and ``images`` (N, C, H, W) float32 in [0, 1]. Ids are decoded with the tokenizer recorded in the
run's ``sorcen.json`` (the token store's tokenizer), or ``--tokenizer``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.methods.sorcen.maskgit import MaskGITConfig, maskgit_generate
from unissl.methods.sorcen.run import load_model, load_run_tokenizer
from unissl.utils.images import save_grid
from unissl.utils.io import atomic_file, check_writable


@dataclass
class Config:
    """Generate images with MaskGIT decoding (cosine schedule, annealed Gumbel confidence)."""

    checkpoint: str = arg(help="run directory of `unissl train sorcen` (or one of its checkpoints/step_* dirs)")
    out: str | None = arg(None, output="dir", help="output directory (default: <run>/samples)")
    num_samples: int = arg(64, help="images to generate")
    batch_size: int = arg(64, help="images generated per batch")
    tokenizer: str | None = arg(None, help="decode with this tokenizer instead of the run's")
    seed: int = arg(0, help="random seed")
    nrow: int | None = arg(None, help="images per grid row (default: square)")
    scale: int = arg(2, help="upscale the PNG grid by this factor (nearest)")
    device: str = device_arg()
    maskgit: MaskGITConfig = field(default_factory=MaskGITConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise UnisslError("--num-samples and --batch-size must be positive")


def generate_images(model, tokenizer, num_samples: int, maskgit: MaskGITConfig, generator: torch.Generator,
                    batch_size: int = 64, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` MaskGIT id maps (N, h, w) and their decoded images (N, C, H, W) float in [0, 1], on CPU."""
    ids, images = [], []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        batch_ids = maskgit_generate(model, n, maskgit, generator=generator, device=device)  # (n, h, w)
        with torch.no_grad():
            images.append(tokenizer.decode(batch_ids).clamp(0, 1).float().cpu())  # (n, C, H, W)
        ids.append(batch_ids.cpu())
    return torch.cat(ids), torch.cat(images)


def write_samples(out: Path, ids: torch.Tensor, images: torch.Tensor, nrow: int | None = None, scale: int = 2,
                  grid_max: int | None = None) -> None:
    """``<out>/samples.png`` (a grid of the images, the first ``grid_max`` if given) and ``<out>/samples.npz``
    (``ids`` int64, ``images`` float32), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    save_grid(images[:grid_max], out / "samples.png", nrow=nrow, scale=scale)
    buf = io.BytesIO()
    np.savez(buf, ids=ids.numpy().astype(np.int64), images=images.numpy().astype(np.float32))
    with atomic_file(out / "samples.npz", "wb") as f:
        f.write(buf.getvalue())


def run(cfg: Config) -> None:
    """Load the run, generate ``num_samples`` id maps, decode them, write PNG + NPZ."""
    device = resolve_device(cfg.device)
    model, info = load_model(cfg.checkpoint, device)
    if cfg.tokenizer is not None:
        info = {**info, "tokenizer": cfg.tokenizer}
    tokenizer = load_run_tokenizer(info, device)
    out = Path(cfg.out) if cfg.out else Path(info["run_dir"]) / "samples"
    check_writable(out, "--out")  # the default lies in the run directory, which may be read-only (a hub cache)
    gen = torch.Generator().manual_seed(cfg.seed)
    all_ids, all_images = generate_images(model, tokenizer, cfg.num_samples, cfg.maskgit, gen, cfg.batch_size, device)
    write_samples(out, all_ids, all_images, cfg.nrow, cfg.scale)
    print(f"unissl sample sorcen: {len(all_ids)} samples ({cfg.maskgit.steps} steps) from {info['checkpoint']} -> "
          f"{out / 'samples.png'}, {out / 'samples.npz'}")
