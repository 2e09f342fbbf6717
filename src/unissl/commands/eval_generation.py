"""``unissl eval generation``: FD / IS / precision-recall (and class consistency) of generated images.

The FD is called FID only with ``--extractor inception:WEIGHTS``; with a domain classifier it is
``FD_domain``. If the samples file has ``labels`` and the extractor is a classifier, the share of
samples assigned to their requested label is reported as ``class_consistency``, and per requested class
in the result's ``extra`` (and on stdout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from unissl.commands.eval_common import build_split, print_metrics
from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.eval.ceilings import judge_accuracy, load_roundtrip_tokenizer, matching_reference, roundtrip
from unissl.eval.features import adapt_images, load_extractor, metric_name
from unissl.eval.generation import (
    balanced_by_label,
    class_hits,
    generation_metrics,
    load_npz_images,
    share_by_label,
)
from unissl.eval.results import record_result
from unissl.methods.reptok.tokenizer import DECODE_STEPS


@dataclass
class Config:
    """Generation metrics of an .npz of samples against a reference dataset split."""

    samples: str = arg(help="npz with 'images' (N,C,H,W) float [0,1] or uint8, optionally 'labels' (N,)")
    extractor: str = arg(help="domain:DIR (FD_domain) or inception:WEIGHTS (FID); see `unissl eval train-extractor`")
    reference: str = arg("fashion-mnist:test", help="reference 'dataset:split'")
    data_dir: str | None = arg(None, help="reference dataset location")
    image_size: int | None = arg(None, help="resize reference images (default: native)")
    run_dir: str = arg("runs/eval", output="dir", help="directory receiving results/<name>.json and results.md")
    cache_dir: str | None = arg(None, output="dir", help="cache of reference features/statistics (default: <run_dir>/feature_cache)")
    name: str | None = arg(None, help="result name (default: generation-<samples file stem>)")
    images_key: str = arg("images", help="array name of the images in the npz")
    labels_key: str = arg("labels", help="array name of the requested labels in the npz (if present)")
    pr_k: int = arg(3, help="k of the k-NN radii of precision/recall")
    pr_samples: int = arg(10000, help="at most this many samples per set for precision/recall")
    batch_size: int = arg(256, help="images per feature batch")
    device: str = device_arg()
    ceiling_tokenizer: str | None = arg(None, help="tokenizer that decoded the samples (RepTok or VQ directory): "
                                                   "also score real reference images passed through it")
    ceiling_decode_steps: int = arg(DECODE_STEPS, help="RepTok decoder Euler steps for the ceiling's reconstructions")
    seed: int = arg(0, help="seed of the ceiling's reference subset, decoder noise and the bootstrap")
    bootstrap: int = arg(0, help="bootstrap resamples of the samples for the 95 percent interval of the FD (e.g. 200; 0: none); "
                                 "the draws are kept in the result for `unissl eval verdict`")

    def __post_init__(self) -> None:
        if self.ceiling_decode_steps <= 0 or self.batch_size <= 0:
            raise UnisslError("--ceiling-decode-steps and --batch-size must be positive")
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise UnisslError(f"--bootstrap must be 0 (none) or >= 2 resamples, got {self.bootstrap}")


def ceiling_metrics(cfg: Config, extractor, reference, n: int, labels: torch.Tensor | None, cache: Path,
                    extra: dict) -> dict[str, float]:
    """The judge's accuracy on real images and the tokenizer's ceiling (see the module docstring)."""
    out: dict[str, float] = {}
    is_classifier = hasattr(extractor, "probs")
    if is_classifier and hasattr(reference, "labels"):
        out["judge_accuracy"] = judge_accuracy(extractor, reference, cfg.batch_size)
    if cfg.ceiling_tokenizer is None:
        return out
    tok = load_roundtrip_tokenizer(cfg.ceiling_tokenizer, resolve_device(cfg.device))
    tcfg = getattr(tok, "cfg", tok)
    idx = matching_reference(reference, labels, n, cfg.seed)
    real = reference.__getitems__(idx.tolist())
    images = adapt_images(real["image"].float(), int(tcfg.channels), int(tcfg.image_size))
    recs = roundtrip(tok, images, cfg.ceiling_decode_steps, seed=cfg.seed)
    recs = (recs * 255.0 + 0.5).floor() / 255.0  # quantised like the uint8 samples
    ceiling = generation_metrics(extractor, recs, reference, metric_name(cfg.extractor), cfg.batch_size, cache,
                                 cfg.pr_k, cfg.pr_samples)
    name = metric_name(cfg.extractor)
    out[f"ceiling_{name}"] = ceiling[name]
    if is_classifier:
        out["ceiling_class_consistency"] = class_hits(extractor, recs, real["label"], cfg.batch_size).double().mean().item()
    extra["ceiling"] = {"tokenizer": cfg.ceiling_tokenizer, "num_images": int(idx.numel()),
                        "decode_steps": cfg.ceiling_decode_steps, "labels_matched": labels is not None}
    return out


def run(cfg: Config) -> dict[str, float]:
    """Compute and record the metrics."""
    images, arrays = load_npz_images(cfg.samples, cfg.images_key)
    balance = None
    if cfg.labels_key in arrays:  # class-conditional samples: the same number per class

        keep = balanced_by_label(torch.as_tensor(arrays[cfg.labels_key]), cfg.seed)
        if keep is not None:
            balance = {"kept": int(keep.numel()), "of": int(images.shape[0])}
            images = images[keep]
            arrays = {**arrays, cfg.labels_key: arrays[cfg.labels_key][keep.numpy()]}
    ref_name, _, ref_split = cfg.reference.partition(":")
    reference = build_split(ref_name, ref_split or "test", cfg.data_dir, cfg.image_size)
    extractor = load_extractor(cfg.extractor, resolve_device(cfg.device))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_dir) / "feature_cache"
    draws: list[float] = []
    metrics = generation_metrics(extractor, images, reference, metric_name(cfg.extractor), cfg.batch_size, cache,
                                 cfg.pr_k, cfg.pr_samples, seed=cfg.seed, bootstrap=cfg.bootstrap, draws_out=draws)
    extra = {"bootstrap": {metric_name(cfg.extractor): {"resamples": cfg.bootstrap, "draws": [round(v, 6) for v in draws]}}
             if draws else None,
             "samples": str(cfg.samples), "reference": cfg.reference, "extractor": cfg.extractor,
             "balanced_per_class": balance,
             "extractor_identity": extractor.identity(), "reference_fingerprint": reference.fingerprint()}
    if cfg.labels_key in arrays:
        if not hasattr(extractor, "probs"):
            raise UnisslError(f"{cfg.samples} has labels but extractor {cfg.extractor} is not a classifier")
        labels = torch.as_tensor(arrays[cfg.labels_key]).long()
        hits = class_hits(extractor, images, labels, cfg.batch_size)
        metrics["class_consistency"] = hits.double().mean().item()
        names = reference.classes  # per requested class: which classes the samples miss
        extra["class_consistency_per_class"] = {
            (names[c] if 0 <= c < len(names) else str(c)): round(v, 4) for c, v in share_by_label(hits, labels).items()}
    metrics.update(ceiling_metrics(cfg, extractor, reference, images.shape[0],
                                   torch.as_tensor(arrays[cfg.labels_key]).long() if cfg.labels_key in arrays else None,
                                   cache, extra))
    name = cfg.name or re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"generation-{Path(cfg.samples).stem}")
    path = record_result(cfg.run_dir, name, metrics, extra)
    print_metrics(f"generation metrics of {cfg.samples} vs {cfg.reference} ({cfg.extractor})", metrics, path)
    if "class_consistency_per_class" in extra:
        print("  class_consistency per class: " + ", ".join(
            f"{k} {v:.2f}" for k, v in extra["class_consistency_per_class"].items()))
    return metrics
