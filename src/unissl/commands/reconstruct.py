"""``unissl reconstruct``: RepTok reconstructions of a dataset split: a grid PNG of originals next to their
reconstructions, an npz of the pairs (input of ``unissl eval reconstruction``) and PSNR / SSIM / rFD."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from unissl.config import arg, save_run_config
from unissl.data import build_dataset
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.eval.features import load_extractor
from unissl.eval.generation import class_consistency, predict_probs
from unissl.eval.reconstruction import reconstruction_metrics
from unissl.eval.results import record_result
from unissl.methods.reptok.reconstruction import reconstruct_dataset
from unissl.methods.reptok.tokenizer import DECODE_STEPS, RepTokTokenizer
from unissl.utils.images import save_grid
from unissl.utils.io import atomic_file, write_json


@dataclass
class Config:
    """Reconstruct images with a trained RepTok tokenizer and measure the reconstructions."""

    tokenizer: str = arg(help="tokenizer directory (the --out of `unissl train reptok-tokenizer`)")
    dataset: str = arg("fashion-mnist", help="image dataset")
    data_dir: str | None = arg(None, help="dataset directory (default: the dataset's standard location)")
    split: str = arg("test", help="dataset split")
    num_images: int = arg(1000, help="reconstruct the first N images of the split (metrics use all of them)")
    show: int = arg(16, help="pairs shown in the grid PNG")
    steps: int = arg(DECODE_STEPS, help="ODE steps of the decoder")
    solver: Literal["euler", "heun"] = arg("euler", help="ODE solver")
    extractor: str | None = arg(None, help="feature extractor for rFD, e.g. domain:DIR (none: PSNR/SSIM only)")
    batch_size: int = arg(250, help="images per decoding batch")
    seed: int = arg(0, help="seed of the decoder's starting noise")
    device: str = device_arg()
    out: str = arg("runs/reconstruct", output="dir", help="output directory: grid.png, pairs.npz, metrics.json")

    def __post_init__(self) -> None:
        if self.num_images <= 0 or self.steps <= 0 or self.batch_size <= 0 or self.show < 0:
            raise UnisslError("--num-images, --steps and --batch-size must be positive, --show >= 0")


def run(cfg: Config) -> dict[str, float]:
    """Reconstruct, write grid.png / pairs.npz / metrics.json under ``--out``; returns the metrics."""
    device = resolve_device(cfg.device)
    tok = RepTokTokenizer.from_pretrained(cfg.tokenizer, device=device)
    data = build_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, image_size=tok.cfg.image_size)
    if int(data.channels) != tok.cfg.channels:
        raise UnisslError(f"{cfg.dataset} has {data.channels}-channel images but {cfg.tokenizer} was trained on "
                          f"{tok.cfg.channels}-channel images; use a matching dataset")
    n = min(cfg.num_images, len(data))
    origs, recs = reconstruct_dataset(tok, data, n, cfg.steps, cfg.solver, cfg.batch_size, cfg.seed, device)
    out = Path(cfg.out)
    save_run_config(out, cfg)
    k = min(cfg.show, n)
    if k:
        pairs = torch.stack([origs[:k], recs[:k]], dim=1).flatten(0, 1)  # (2k, C, H, W): original, reconstruction
        save_grid(pairs, out / "grid.png", nrow=2 * max(1, int(math.sqrt(k))), scale=2)
    with atomic_file(out / "pairs.npz", "wb") as f:
        np.savez_compressed(f, originals=(origs.numpy() * 255 + 0.5).astype(np.uint8),
                            reconstructions=(recs.numpy() * 255 + 0.5).astype(np.uint8))

    extractor = load_extractor(cfg.extractor, device) if cfg.extractor else None
    metrics = reconstruction_metrics(origs, recs, extractor, "rFD", cfg.batch_size)
    if extractor is not None and hasattr(extractor, "probs"):
        # A classifier extractor also tells whether the token kept the class: the share of
        # reconstructions assigned to the class the classifier gives the original (the ceiling of
        # the class share that a token generator can reach through this decoder).
        orig_pred = predict_probs(extractor, origs, cfg.batch_size).argmax(1)
        metrics["class_agreement"] = class_consistency(extractor, recs, orig_pred, cfg.batch_size)
    metrics["mse"] = float((origs - recs).pow(2).mean())
    extra = {"tokenizer": cfg.tokenizer, "dataset": cfg.dataset, "split": cfg.split, "steps": cfg.steps,
             "solver": cfg.solver, "extractor": cfg.extractor}
    write_json(out / "metrics.json", {**extra, **metrics})
    # also into the evaluation results table (results/*.json + results.md) that `unissl report` reads
    record_result(out, "reptok-reconstruction", metrics, extra)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"unissl reconstruct: {n} images, {shown} -> {out}")
    return metrics
