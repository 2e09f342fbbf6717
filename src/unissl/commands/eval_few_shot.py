"""``unissl eval few-shot``: linear probes on 5/10/13/25 images per class, several seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from unissl.commands.eval_common import FeatureEvalConfig, load_train_test_features, record
from unissl.config import arg
from unissl.eval.few_shot import few_shot
from unissl.eval.probe import ProbeConfig


@dataclass
class Config(FeatureEvalConfig):
    """Few-shot linear probe: mean and standard deviation of test top-1 over seeds for each shot count."""

    shots: list[int] = arg([5, 10, 13, 25], help="labelled images per class")
    seeds: list[int] = arg([0, 1, 2, 3, 4], help="seeds of the per-class subsets (at least 2 for a spread)")
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "probe hyper-parameters"})
    min_steps: int = arg(300, help="optimizer steps at least (tiny train sets get more epochs)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.shots or min(self.shots) <= 0:
            raise ValueError(f"shots must be positive integers, got {self.shots}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


def run(cfg: Config) -> dict[str, float]:
    """Run every (shots, seed) probe and record mean/std test top-1 per shot count."""
    data = load_train_test_features(cfg)
    table = few_shot(data["train_x"], data["train_y"], data["test_x"], data["test_y"], data["num_classes"],
                     dataclasses.replace(cfg.probe, min_steps=cfg.min_steps), cfg.shots, cfg.seeds, data["device"])
    metrics: dict[str, float] = {}
    for k, row in table.items():
        metrics[f"{k}shot_top1"] = row["top1_mean"]  # type: ignore[assignment]
        metrics[f"{k}shot_std"] = row["top1_std"]  # type: ignore[assignment]
    return record(cfg, data, "few_shot", metrics, {"seeds": cfg.seeds, "per_seed": table},
                  f"few-shot ({cfg.extractor} on {cfg.dataset}; {len(cfg.seeds)} seeds)")
