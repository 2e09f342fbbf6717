"""``unissl eval train-extractor``: train the domain classifier whose features give ``FD_<name>``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from unissl.commands.eval_common import build_split, print_metrics
from unissl.config import arg
from unissl.engine.runtime import device_arg, resolve_device
from unissl.eval.domain import DomainClassifierConfig, accuracy, save_classifier, train_classifier
from unissl.eval.results import record_result


@dataclass
class Config:
    """Train a small CNN classifier on a dataset; saved as config.json + model.safetensors."""

    out: str = arg("runs/eval/domain_classifier", output="dir", help="output directory of the classifier")
    dataset: str = arg("fashion-mnist", help="dataset the classifier is trained on")
    data_dir: str | None = arg(None, help="dataset location (default: the dataset's own default)")
    image_size: int | None = arg(None, help="resize images to this side (must match what it will evaluate)")
    train_split: str = arg("train", help="training split")
    test_split: str = arg("test", help="split the accuracy is reported on")
    epochs: int = arg(3, help="training epochs")
    batch_size: int = arg(128, help="batch size")
    lr: float = arg(2e-3, help="peak AdamW learning rate (one-cycle schedule)")
    weight_decay: float = arg(5e-4, help="AdamW weight decay")
    widths: list[int] = arg([16, 32, 64], help="channels of the conv stages")
    feature_dim: int = arg(128, help="dimension of the penultimate features used for FD")
    augment: bool = arg(True, help="random translations by up to 2 pixels")
    seed: int = arg(0, help="seed")
    device: str = device_arg()
    run_dir: str | None = arg(None, output="dir", help="also record the accuracy in this run directory's results table")

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or not self.widths:
            raise ValueError("epochs, batch_size must be positive and widths non-empty")


def run(cfg: Config) -> dict[str, float]:
    """Train, report test accuracy, save atomically."""
    device = resolve_device(cfg.device)
    train = build_split(cfg.dataset, cfg.train_split, cfg.data_dir, cfg.image_size)
    test = build_split(cfg.dataset, cfg.test_split, cfg.data_dir, cfg.image_size)
    mcfg = DomainClassifierConfig(channels=train.channels, image_size=train.image_size,
                                  num_classes=train.num_classes, widths=list(cfg.widths),
                                  feature_dim=cfg.feature_dim, classes=list(train.classes),
                                  dataset=train.fingerprint())
    t0 = time.time()
    model = train_classifier(train, mcfg, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed,
                             cfg.augment, device)
    metrics = {"test_top1": accuracy(model, test, device=device), "train_seconds": time.time() - t0}
    info = {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "test_split": cfg.test_split, **metrics}
    out = save_classifier(model.cpu(), cfg.out, info)
    if cfg.run_dir:
        record_result(cfg.run_dir, f"domain_classifier-{cfg.dataset}", metrics, {"out": str(out)})
    print_metrics(f"domain classifier on {cfg.dataset} ({cfg.epochs} epochs)", metrics, Path(out))
    return metrics
