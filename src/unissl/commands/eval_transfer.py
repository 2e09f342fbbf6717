"""``unissl eval transfer``: probe a frozen encoder on a dataset it was not trained on.

Images of the target dataset are resized and their channels matched to what the extractor declares
(``input_size`` / ``input_channels``); the report holds the linear probe and the k-NN accuracy, and with
``--finetune.epochs N`` (Sorcen-family encoders) the test top-1 after a brief end-to-end fine-tune
(:mod:`unissl.eval.finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unissl.commands.eval_common import FeatureEvalConfig, load_train_test_features, record
from unissl.config import arg
from unissl.eval.finetune import FinetuneConfig
from unissl.eval.knn import KNNConfig, knn_accuracy
from unissl.eval.probe import ProbeConfig, linear_probe


@dataclass
class Config(FeatureEvalConfig):
    """Transfer: linear probe + k-NN of a frozen encoder on another dataset (default: digits)."""

    dataset: str = arg("digits", help="target dataset the frozen encoder is probed on")
    source: str = arg("", help="what the encoder was pretrained on (recorded in the result, e.g. fashion-mnist)")
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "probe hyper-parameters"})
    knn: KNNConfig = field(default_factory=KNNConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def run(cfg: Config) -> dict[str, float]:
    """Probe and k-NN on the target dataset; record both."""
    data = load_train_test_features(cfg)
    probe_metrics, res = linear_probe(data["train_x"], data["train_y"], data["test_x"], data["test_y"],
                                      data["num_classes"], cfg.probe, data["device"])
    knn = knn_accuracy(data["train_x"], data["train_y"], data["test_x"], data["test_y"], data["num_classes"],
                       min(cfg.knn.k, len(data["train_y"])), cfg.knn.temperature)
    metrics = {"probe_top1": probe_metrics["top1"], "probe_top5": probe_metrics["top5"],
               "knn_top1": knn["top1"], "knn_top5": knn["top5"]}
    if cfg.finetune.epochs > 0:
        from unissl.data.base import to_float_images
        from unissl.eval.finetune import encode_ids, finetune_top1

        def ids_of(split) -> tuple:
            b = split.__getitems__(list(range(len(split))))
            return encode_ids(data["extractor"], to_float_images(b["image"]), cfg.batch_size), b["label"]

        (tr_ids, tr_y), (te_ids, te_y) = ids_of(data["train"]), ids_of(data["test"])
        metrics.update(finetune_top1(data["extractor"], tr_ids, tr_y, te_ids, te_y, data["num_classes"], cfg.finetune))
    extra = {"source": cfg.source or "unspecified", "best_lr": res.best_lr,
             "finetune": {"epochs": cfg.finetune.epochs, "lr": cfg.finetune.lr, "batch_size": cfg.finetune.batch_size}
             if cfg.finetune.epochs > 0 else None,
             "input_size": getattr(data["extractor"], "input_size", None),
             "input_channels": getattr(data["extractor"], "input_channels", None)}
    return record(cfg, data, "transfer", metrics, extra,
                  f"transfer ({cfg.extractor}{' from ' + cfg.source if cfg.source else ''} -> {cfg.dataset})")
