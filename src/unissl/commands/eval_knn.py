"""``unissl eval knn``: weighted k-NN (cosine, exp(sim/T) votes, DINO protocol) on frozen features."""

from __future__ import annotations

from dataclasses import dataclass, field

from unissl.commands.eval_common import FeatureEvalConfig, load_train_test_features, record
from unissl.eval.knn import KNNConfig, knn_accuracy


@dataclass
class Config(FeatureEvalConfig):
    """Weighted k-NN classifier: k nearest train features by cosine similarity vote with exp(sim / T)."""

    knn: KNNConfig = field(default_factory=KNNConfig)


def run(cfg: Config) -> dict[str, float]:
    """Classify the test split by its k nearest train features and record top-1/top-5."""
    data = load_train_test_features(cfg)
    metrics = knn_accuracy(data["train_x"], data["train_y"], data["test_x"], data["test_y"], data["num_classes"],
                           cfg.knn.k, cfg.knn.temperature)
    return record(cfg, data, "knn", metrics, {"k": cfg.knn.k, "temperature": cfg.knn.temperature},
                  f"k-NN ({cfg.extractor} on {cfg.dataset}; k={cfg.knn.k}, T={cfg.knn.temperature})")
