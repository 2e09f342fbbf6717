"""``unissl eval knn``: weighted k-NN (cosine, exp(sim/T) votes, DINO protocol) on frozen features."""

from __future__ import annotations

from dataclasses import dataclass, field

from unissl.commands.eval_common import (
    FeatureEvalConfig,
    describe,
    load_train_test_features,
    print_metrics,
    result_name,
)
from unissl.eval.knn import KNNConfig, knn_accuracy
from unissl.eval.results import record_result


@dataclass
class Config(FeatureEvalConfig):
    """Weighted k-NN classifier: k nearest train features by cosine similarity vote with exp(sim / T)."""

    knn: KNNConfig = field(default_factory=KNNConfig)


def run(cfg: Config) -> dict[str, float]:
    """Classify the test split by its k nearest train features and record top-1/top-5."""
    data = load_train_test_features(cfg)
    metrics = knn_accuracy(data["train_x"], data["train_y"], data["test_x"], data["test_y"], data["num_classes"],
                           cfg.knn.k, cfg.knn.temperature)
    extra = {**describe(cfg, data), "k": cfg.knn.k, "temperature": cfg.knn.temperature}
    name = cfg.name or result_name("knn", cfg.extractor, cfg.dataset)
    path = record_result(cfg.run_dir, name, metrics, extra)
    print_metrics(f"k-NN ({cfg.extractor} on {cfg.dataset}; k={cfg.knn.k}, T={cfg.knn.temperature})", metrics, path)
    return metrics
