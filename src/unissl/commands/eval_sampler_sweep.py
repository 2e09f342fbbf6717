"""``unissl eval sampler-sweep``: a Sorcen / MAGE generator's FD at the released MaskGIT setting and at its best.

Each arm is a MaskGIT setting ``STEPS:CHOICE_TEMPERATURE``. The first arm is the default (Sorcen's released
setting, T = 20 steps, choice temperature 6.0; MAGE's ``gen_img_uncond.py`` uses 12 and 4.5, the second arm).
Every arm generates ``--select-samples`` images from the selection seed (``seed + 10000``) and the arm of the
lowest FD is chosen on them. The default arm and the chosen one then generate ``--num-samples`` *fresh* images
from ``--seed``, and only those are reported, with a bootstrap interval over samples: a setting chosen and
scored on the same samples would be scored too well (the winner's curse).

Metrics: ``<FD>_default`` and ``<FD>_best`` with ``_ci_low`` / ``_ci_high`` / ``_se``, ``best_steps``,
``best_choice_temperature``; the selection FD of every arm and the bootstrap draws are in the result's extra
(``unissl eval verdict`` combines the draws of two models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unissl.commands.eval_common import build_split, print_metrics
from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.eval.features import load_extractor, metric_name
from unissl.eval.results import record_result
from unissl.methods.sorcen.maskgit import MaskGITConfig

SELECT_SEED_OFFSET = 10000  # the selection samples' generator seed is seed + this: never the reported ones
DEFAULT_ARMS = ["20:6.0", "12:4.5", "8:4.5", "12:2.0", "20:3.0", "12:9.0"]


def parse_arm(text: str) -> MaskGITConfig:
    """``"12:4.5"`` -> MaskGITConfig(steps=12, choice_temperature=4.5); one clear line otherwise."""
    steps, sep, temp = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return MaskGITConfig(steps=int(steps), choice_temperature=float(temp))
    except (ValueError, UnisslError):
        raise UnisslError(f"sampler arm {text!r} is not STEPS:CHOICE_TEMPERATURE with STEPS >= 1 "
                          f"(e.g. 20:6.0)") from None


def arm_name(m: MaskGITConfig) -> str:
    """The arm's label, ``<steps>:<choice temperature>``."""
    return f"{m.steps}:{m.choice_temperature:g}"


@dataclass
class Config:
    """FD of MaskGIT samples at the default sampler setting and at the best of a small sweep, chosen on other
    samples than the reported ones."""

    checkpoint: str = arg(help="run directory of `unissl train sorcen` (or a saved encoder)")
    extractor: str = arg(help="domain:DIR (FD_domain) or inception:WEIGHTS (FID)")
    tokenizer: str | None = arg(None, help="decode with this tokenizer instead of the run's")
    reference: str = arg("fashion-mnist:test", help="reference 'dataset:split'")
    data_dir: str | None = arg(None, help="reference dataset location")
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS),
                            metadata={"help": "MaskGIT settings STEPS:CHOICE_TEMPERATURE; the first is the default"})
    select_samples: int = arg(2000, help="samples per arm for choosing the best arm (selection seed: seed + 10000)")
    num_samples: int = arg(10000, help="fresh samples of the default and the chosen arm that are reported")
    bootstrap: int = arg(200, help="bootstrap resamples of the reported samples for the 95 percent interval")
    seed: int = arg(0, help="generator seed of the reported samples")
    batch_size: int = arg(256, help="images per generation / feature batch")
    run_dir: str = arg("runs/eval", output="dir", help="directory receiving results/<name>.json and results.md")
    cache_dir: str | None = arg(None, output="dir", help="cache of reference features (default: <run_dir>/feature_cache)")
    name: str | None = arg(None, help="result name (default: sampler-sweep-<checkpoint directory name>)")
    save_samples: str | None = arg(None, output="dir", help="also write the default arm's reported samples here "
                                                            "(samples.npz with ids and images, as `sample sorcen`), "
                                                            "for `eval generation` (ceiling, precision/recall)")
    device: str = device_arg()

    def __post_init__(self) -> None:
        if not self.arms:
            raise UnisslError("--arms needs at least one STEPS:CHOICE_TEMPERATURE")
        for a in self.arms:
            parse_arm(a)
        if self.select_samples < 2 or self.num_samples < 2 or self.batch_size < 1:
            raise UnisslError("--select-samples and --num-samples must be >= 2, --batch-size positive")
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise UnisslError(f"--bootstrap must be 0 (none) or >= 2 resamples, got {self.bootstrap}")


def run(cfg: Config) -> dict[str, float]:
    """Select on the selection samples, report on fresh ones; record the result."""
    from unissl.commands.sample_sorcen import generate_images, write_samples
    from unissl.eval.bootstrap import fd_bootstrap, percentile_interval
    from unissl.eval.features import features_of
    from unissl.eval.frechet import frechet_distance_stats, gaussian_stats
    from unissl.eval.generation import quantize_uint8, reference_stats
    from unissl.methods.sorcen.run import load_model, load_run_tokenizer

    device = resolve_device(cfg.device)
    arms = [parse_arm(a) for a in cfg.arms]
    model, info = load_model(cfg.checkpoint, device)
    if cfg.tokenizer is not None:
        info = {**info, "tokenizer": cfg.tokenizer}
    tokenizer = load_run_tokenizer(info, device)
    ref_name, _, ref_split = cfg.reference.partition(":")
    reference = build_split(ref_name, ref_split or "test", cfg.data_dir, None)
    extractor = load_extractor(cfg.extractor, device)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_dir) / "feature_cache"
    ref_stats, _ = reference_stats(extractor, reference, cfg.batch_size, cache)
    fd_name = metric_name(cfg.extractor)

    def features(m: MaskGITConfig, n: int, seed: int, save: bool = False) -> torch.Tensor:
        ids, images = generate_images(model, tokenizer, n, m, torch.Generator().manual_seed(seed), cfg.batch_size,
                                      device)
        if save and cfg.save_samples:
            write_samples(Path(cfg.save_samples), ids, images, grid_max=256)
        return features_of(extractor, quantize_uint8(images), cfg.batch_size)  # (n, D)

    selection = {}
    for m in arms:
        selection[arm_name(m)] = frechet_distance_stats(gaussian_stats(features(m, cfg.select_samples,
                                                                                cfg.seed + SELECT_SEED_OFFSET)),
                                                        ref_stats)
        print(f"  selection {fd_name} of {arm_name(m)} ({cfg.select_samples} samples): {selection[arm_name(m)]:.4f}",
              flush=True)
    best = arms[min(range(len(arms)), key=lambda i: selection[arm_name(arms[i])])]
    metrics: dict[str, float] = {}
    draws: dict[str, dict] = {}
    reported: dict[str, float] = {}
    for role, m in (("default", arms[0]), ("best", best)):
        key = f"{fd_name}_{role}"
        if arm_name(m) in reported and role == "best":  # the default won: the same fresh samples
            for suffix in ("", "_ci_low", "_ci_high", "_se"):
                if f"{fd_name}_default{suffix}" in metrics:
                    metrics[key + suffix] = metrics[f"{fd_name}_default{suffix}"]
            draws[key] = draws.get(f"{fd_name}_default", {})
            continue
        feats = features(m, cfg.num_samples, cfg.seed, save=role == "default")
        metrics[key] = reported[arm_name(m)] = frechet_distance_stats(gaussian_stats(feats), ref_stats)
        if cfg.bootstrap:
            d = fd_bootstrap(feats, ref_stats, cfg.bootstrap, seed=cfg.seed)
            metrics[key + "_ci_low"], metrics[key + "_ci_high"] = percentile_interval(d)
            metrics[key + "_se"] = float(d.std(ddof=1))
            draws[key] = {"resamples": cfg.bootstrap, "draws": [round(float(v), 6) for v in d]}
    metrics["best_steps"] = float(best.steps)
    metrics["best_choice_temperature"] = float(best.choice_temperature)
    metrics["num_samples"] = float(cfg.num_samples)
    extra = {"checkpoint": cfg.checkpoint, "extractor": cfg.extractor, "reference": cfg.reference,
             "default_arm": arm_name(arms[0]), "best_arm": arm_name(best), "selection": selection,
             "select_samples": cfg.select_samples, "select_seed": cfg.seed + SELECT_SEED_OFFSET,
             "report_seed": cfg.seed, "bootstrap": draws or None}
    name = cfg.name or re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"sampler-sweep-{Path(cfg.checkpoint).name}")
    path = record_result(cfg.run_dir, name, metrics, extra)
    print_metrics(f"sampler sweep of {cfg.checkpoint} ({fd_name}; default {arm_name(arms[0])}, chosen "
                  f"{arm_name(best)} on {cfg.select_samples} other samples)", metrics, path)
    return metrics
