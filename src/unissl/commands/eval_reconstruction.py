"""``unissl eval reconstruction``: PSNR / SSIM / rFD of (original, reconstruction) pairs in an .npz."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from unissl.commands.eval_common import print_metrics
from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.eval.features import load_extractor, metric_name
from unissl.eval.generation import load_npz_images
from unissl.eval.reconstruction import reconstruction_metrics
from unissl.eval.results import record_result


@dataclass
class Config:
    """Reconstruction quality of an npz with 'originals' and 'reconstructions' (N,C,H,W)."""

    pairs: str = arg(help="npz with 'originals' and 'reconstructions' (N,C,H,W) float [0,1] or uint8")
    extractor: str | None = arg(None, help="domain:DIR or inception:WEIGHTS for rFD (none: PSNR/SSIM only)")
    run_dir: str = arg("runs/eval", output="dir", help="directory receiving results/<name>.json and results.md")
    name: str | None = arg(None, help="result name (default: reconstruction-<pairs file stem>)")
    batch_size: int = arg(256, help="images per feature batch")
    device: str = device_arg()


def run(cfg: Config) -> dict[str, float]:
    """Compute and record PSNR, SSIM and (with an extractor) rFD."""
    originals, _ = load_npz_images(cfg.pairs, "originals")
    recons, _ = load_npz_images(cfg.pairs, "reconstructions")
    if originals.shape != recons.shape:
        raise UnisslError(f"{cfg.pairs}: originals {tuple(originals.shape)} and reconstructions "
                          f"{tuple(recons.shape)} differ in shape")
    extractor = load_extractor(cfg.extractor, resolve_device(cfg.device)) if cfg.extractor else None
    name_fd = "r" + metric_name(cfg.extractor) if cfg.extractor else "rFD"
    metrics = reconstruction_metrics(originals, recons, extractor, name_fd, cfg.batch_size)
    extra = {"pairs": str(cfg.pairs), "extractor": cfg.extractor or "none",
             "extractor_identity": extractor.identity() if extractor else "none"}
    name = cfg.name or re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"reconstruction-{Path(cfg.pairs).stem}")
    path = record_result(cfg.run_dir, name, metrics, extra)
    print_metrics(f"reconstruction metrics of {cfg.pairs}", metrics, path)
    return metrics
