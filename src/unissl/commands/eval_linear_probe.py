"""``unissl eval linear-probe``: MAGE-protocol linear probe on frozen features (a grid of heads in one pass)."""

from __future__ import annotations

from dataclasses import dataclass, field

from unissl.commands.eval_common import FeatureEvalConfig, load_train_test_features, record
from unissl.eval.probe import ProbeConfig, linear_probe


@dataclass
class Config(FeatureEvalConfig):
    """Linear probe: norm + BatchNorm1d(affine=False) + Linear, best (lr, wd) head chosen on a validation slice."""

    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "probe hyper-parameters"})


def run(cfg: Config) -> dict[str, float]:
    """Fit the probe grid and record test top-1/top-5 of the selected head."""
    data = load_train_test_features(cfg)
    metrics, res = linear_probe(data["train_x"], data["train_y"], data["test_x"], data["test_y"],
                                data["num_classes"], cfg.probe, data["device"])
    extra = {"best_lr": res.best_lr, "best_wd": res.best_wd,
             "optimizer": cfg.probe.optimizer, "epochs": cfg.probe.epochs, "norm": cfg.probe.norm,
             "grid_val_top1": {f"lr={lr:g},wd={wd:g}": v for (lr, wd), v in zip(res.grid, res.val_top1)}}
    return record(cfg, data, "linear_probe", metrics, extra,
                  f"linear probe ({cfg.extractor} on {cfg.dataset}; lr={res.best_lr:g}, wd={res.best_wd:g})")
