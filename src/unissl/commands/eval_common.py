"""Shared options and helpers of the ``unissl eval`` commands (not a command itself)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.errors import UnisslError
from unissl.eval.features import extract_features, load_extractor, parse_spec
from unissl.eval.results import record_result


@dataclass
class FeatureEvalConfig:
    """Options common to evaluations on frozen features of a train and a test split."""

    extractor: str = arg("pixels", help="feature extractor 'name[:checkpoint]': pixels, sorcen:CKPT, "
                                        "reptok:CKPT, domain:DIR, inception:WEIGHTS")
    dataset: str = arg("fashion-mnist", help="dataset name (digits, fashion-mnist, folder, webdataset)")
    data_dir: str | None = arg(None, help="dataset location (default: the dataset's own default)")
    image_size: int | None = arg(None, help="resize dataset images to this side (default: native size)")
    train_split: str = arg("train", help="split the classifier is fitted on")
    test_split: str = arg("test", help="split the accuracy is reported on")
    run_dir: str = arg("runs/eval", output="dir", help="directory receiving results/<name>.json and results.md")
    cache_dir: str | None = arg(None, output="dir", help="feature cache directory (default: <run_dir>/feature_cache)")
    name: str | None = arg(None, help="result name (default: derived from the evaluation, extractor and dataset)")
    batch_size: int = arg(256, help="images per feature-extraction batch")
    device: str = device_arg()

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


def cache_dir_of(cfg: Any) -> Path:
    """The feature cache directory of a command config."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.run_dir) / "feature_cache"


def result_name(kind: str, extractor: str, dataset: str) -> str:
    """A file-safe default result name such as ``linear_probe-pixels-fashion-mnist``."""
    ext_name = parse_spec(extractor)[0]
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", f"{kind}-{ext_name}-{dataset}")


def build_split(name: str, split: str, data_dir: str | None, image_size: int | None) -> Any:
    """``unissl.data.build_dataset`` with a clear error if the data package is unavailable."""
    try:
        from unissl.data import build_dataset
    except ImportError as e:  # pragma: no cover - the data package is part of unissl
        raise UnisslError(f"unissl.data is not available ({e})") from None
    return build_dataset(name, split, data_dir=data_dir, image_size=image_size)


def load_train_test_features(cfg: FeatureEvalConfig) -> dict[str, Any]:
    """Extractor + cached features of the train and test splits of ``cfg.dataset``."""
    device = resolve_device(cfg.device)
    extractor = load_extractor(cfg.extractor, device)
    train = build_split(cfg.dataset, cfg.train_split, cfg.data_dir, cfg.image_size)
    test = build_split(cfg.dataset, cfg.test_split, cfg.data_dir, cfg.image_size)
    if train.num_classes != test.num_classes:
        raise UnisslError(f"{cfg.dataset}: splits {cfg.train_split!r} and {cfg.test_split!r} have different "
                          f"classes ({train.num_classes} vs {test.num_classes})")
    cache = cache_dir_of(cfg)
    train_x, train_y = extract_features(extractor, train, cfg.batch_size, cache)
    test_x, test_y = extract_features(extractor, test, cfg.batch_size, cache)
    return {"extractor": extractor, "device": device, "train": train, "test": test, "num_classes": train.num_classes,
            "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def describe(cfg: FeatureEvalConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The 'extra' part of a result: what was evaluated on what."""
    return {"extractor": cfg.extractor, "extractor_identity": data["extractor"].identity(),
            "dataset": cfg.dataset, "train": f"{cfg.train_split} ({len(data['train_y'])})",
            "test": f"{cfg.test_split} ({len(data['test_y'])})", "feature_dim": int(data["train_x"].shape[1]),
            "train_fingerprint": data["train"].fingerprint()}


def print_metrics(title: str, metrics: dict[str, Any], path: Path) -> None:
    """One readable block on stdout."""
    print(title)
    for k, v in metrics.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"  -> {path}")



def record(cfg: FeatureEvalConfig, data: dict[str, Any], kind: str, metrics: dict[str, Any],
           extra: dict[str, Any], title: str) -> dict[str, Any]:
    """The end of every feature evaluation: record ``metrics`` with :func:`describe` + ``extra`` under
    ``cfg.name`` (default ``<kind>-<extractor>-<dataset>``), print them under ``title``; returns ``metrics``."""
    name = cfg.name or result_name(kind, cfg.extractor, cfg.dataset)
    path = record_result(cfg.run_dir, name, metrics, {**describe(cfg, data), **extra})
    print_metrics(title, metrics, path)
    return metrics
