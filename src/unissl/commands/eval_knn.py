"""``unissl eval knn``: weighted k-NN (cosine, exp(sim/T) votes, DINO protocol) on frozen features."""

from __future__ import annotations

from dataclasses import dataclass

from unissl.commands.eval_common import (
    FeatureEvalConfig,
    describe,
    load_train_test_features,
    print_metrics,
    result_name,
)
from unissl.config import arg
from unissl.eval.knn import knn_accuracy
from unissl.eval.results import record_result


@dataclass
class Config(FeatureEvalConfig):
    """Weighted k-NN classifier: k nearest train features by cosine similarity vote with exp(sim / T)."""

    k: int = arg(20, help="number of neighbours")
    temperature: float = arg(0.07, help="temperature T of the exp(sim / T) vote weights")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k <= 0 or self.temperature <= 0:
            raise ValueError(f"k and temperature must be positive, got k={self.k}, T={self.temperature}")


def run(cfg: Config) -> dict[str, float]:
    """Classify the test split by its k nearest train features and record top-1/top-5."""
    data = load_train_test_features(cfg)
    metrics = knn_accuracy(data["train_x"], data["train_y"], data["test_x"], data["test_y"], data["num_classes"],
                           cfg.k, cfg.temperature)
    extra = {**describe(cfg, data), "k": cfg.k, "temperature": cfg.temperature}
    name = cfg.name or result_name("knn", cfg.extractor, cfg.dataset)
    path = record_result(cfg.run_dir, name, metrics, extra)
    print_metrics(f"k-NN ({cfg.extractor} on {cfg.dataset}; k={cfg.k}, T={cfg.temperature})", metrics, path)
    return metrics
