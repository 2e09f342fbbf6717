"""``unissl tokenize``: run a frozen tokenizer once over dataset splits into a token store (VQ ids or RepTok tokens)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unissl.config import arg
from unissl.data.continuous_store import is_reptok_tokenizer, write_continuous_store
from unissl.data.datasets import DATASETS, build_dataset
from unissl.data.token_store import TokenStore
from unissl.data.token_writer import write_token_store
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.methods.reptok.tokenizer import load_reptok_tokenizer
from unissl.tokenizers import load_tokenizer


@dataclass
class Config:
    """Encode dataset splits with a frozen tokenizer into a memory-mapped token store (meta.json + .npy): VQ ids
    for a VQ tokenizer, one continuous token per image for a RepTok tokenizer."""

    tokenizer: str = arg(help="tokenizer directory (from `unissl tokenizer train` or `unissl train reptok-tokenizer`) "
                              "or a taming .ckpt file")
    out: str = arg(output="dir", help="output token-store directory (written atomically)")
    dataset: str = arg("fashion-mnist", help="dataset name (digits, fashion-mnist, folder, webdataset)")
    data_dir: str | None = arg(None, help="dataset directory; unset: the dataset's standard location")
    splits: list[str] = arg(["train", "test"], help="splits to encode")
    image_size: int | None = arg(None, help="resize images to this side; unset: the tokenizer's image_size")
    batch_size: int = arg(256, help="images per encode call")
    num_workers: int = arg(0, help="DataLoader worker processes that load/decode images (0: in the main process)")
    flip: bool = arg(False, help="also store the ids of horizontally flipped images (indices N..2N-1)")
    device: str = device_arg(what="device for the tokenizer")
    overwrite: bool = arg(False, help="replace an existing store at --out")
    progress: bool = arg(True, help="show a progress bar")

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset!r} is not one of {list(DATASETS)}")
        if not self.splits:
            raise ValueError("--splits needs at least one split")
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"--splits has duplicates: {self.splits}")
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"--image-size must be positive, got {self.image_size}")


def run(cfg: Config) -> Path:
    """Build the datasets at the tokenizer's resolution, encode them and print one summary line."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UnisslError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    device = resolve_device(cfg.device)
    if is_reptok_tokenizer(cfg.tokenizer):
        return _continuous(cfg, out, device)
    tokenizer = load_tokenizer(cfg.tokenizer, device=device)
    image_size = cfg.image_size or getattr(tokenizer, "image_size", None)
    kw = {"channels": tokenizer.channels} if getattr(tokenizer, "channels", None) else {}
    datasets = {split: build_dataset(cfg.dataset, split, data_dir=cfg.data_dir, image_size=image_size, **kw)
                for split in cfg.splits}
    start = time.perf_counter()
    write_token_store(out, tokenizer, datasets, batch_size=cfg.batch_size, flip=cfg.flip, device=device,
                      progress=cfg.progress, tokenizer_path=Path(cfg.tokenizer).resolve(), overwrite=True,
                      num_workers=cfg.num_workers)
    seconds = time.perf_counter() - start
    store = TokenStore(out, cfg.splits[0])
    n_images = sum(len(d) for d in datasets.values()) * (2 if cfg.flip else 1)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    counts = ", ".join(f"{s} {len(d)}" for s, d in datasets.items())
    h, w = store.grid or (0, 0)
    print(f"tokenized {cfg.dataset} ({counts}{', +flipped' if cfg.flip else ''}) -> {h}x{w} ids, "
          f"codebook {store.codebook_size}: {out} ({size_mb:.1f} MiB) in {seconds:.1f}s "
          f"({n_images / max(seconds, 1e-9):.0f} images/s on {device})")
    return out


def _continuous(cfg: Config, out: Path, device: Any) -> Path:
    """The RepTok tokenizer's continuous store: one token z (D,) per image of each split."""
    if cfg.flip:
        raise UnisslError("--flip is for VQ id stores; a RepTok token store holds the un-flipped images only")
    tok = load_reptok_tokenizer(cfg.tokenizer, device=device)
    size = cfg.image_size or tok.cfg.image_size
    datasets = {split: build_dataset(cfg.dataset, split, data_dir=cfg.data_dir, image_size=size)
                for split in cfg.splits}
    start = time.perf_counter()
    write_continuous_store(out, tok, cfg.tokenizer, cfg.dataset, datasets, cfg.batch_size, device,
                           progress=cfg.progress)
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{s} {len(d)}" for s, d in datasets.items())
    print(f"tokenized {cfg.dataset} ({counts}) -> one {tok.encoder.dim}-d token per image: {out} in {seconds:.1f}s")
    return out
