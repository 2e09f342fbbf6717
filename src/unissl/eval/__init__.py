"""Evaluation suite: frozen features (+ cache), linear probe, few-shot, kNN, generation and reconstruction
metrics, results table. Independent of the methods: anything exposing frozen features or images works.

Modules (one concept each): ``features`` (extractor protocol, registry, cache), ``probe`` (multi-head
linear probe), ``few_shot``, ``knn``, ``frechet`` (Fréchet distance), ``generation`` (IS, precision/recall,
class consistency, reference statistics), ``inception`` (FID Inception-v3), ``domain`` (domain classifier),
``reconstruction`` (PSNR/SSIM/rFD), ``results`` (JSON + Markdown table).
"""

from unissl.eval.features import (
                                  EXTRACTORS,
                                  FeatureExtractor,
                                  PixelExtractor,
                                  adapt_images,
                                  extract_features,
                                  features_of,
                                  load_extractor,
)
from unissl.eval.few_shot import few_shot, sample_per_class
from unissl.eval.frechet import (
                                  GaussianStats,
                                  frechet_distance,
                                  frechet_distance_stats,
                                  gaussian_stats,
                                  sqrtm_psd,
)
from unissl.eval.generation import (
                                  class_consistency,
                                  generation_metrics,
                                  inception_score,
                                  load_npz_images,
                                  precision_recall,
                                  reference_stats,
)
from unissl.eval.knn import knn_accuracy, knn_scores
from unissl.eval.probe import (
                                  MultiHeadProbe,
                                  ProbeConfig,
                                  ProbeResult,
                                  fit_probes,
                                  linear_probe,
                                  topk_accuracy,
)
from unissl.eval.reconstruction import reconstruction_metrics, ssim
from unissl.eval.results import record_result

__all__ = [
    "EXTRACTORS", "FeatureExtractor", "GaussianStats", "MultiHeadProbe", "PixelExtractor", "ProbeConfig",
    "ProbeResult", "adapt_images", "class_consistency", "extract_features", "features_of", "few_shot",
    "fit_probes", "frechet_distance", "frechet_distance_stats", "gaussian_stats", "generation_metrics",
    "inception_score", "knn_accuracy", "knn_scores", "linear_probe", "load_extractor", "load_npz_images",
    "precision_recall", "reconstruction_metrics", "record_result", "reference_stats", "sample_per_class",
    "sqrtm_psd", "ssim", "topk_accuracy",
]
