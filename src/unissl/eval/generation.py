"""Generation metrics with a pluggable feature extractor: FD, Inception Score, k-NN precision/recall.

* FD (:mod:`unissl.eval.frechet`) between Gaussians of generated and reference features. It is called
  FID only with the Inception-v3 extractor; with a domain classifier it is ``FD_<name>`` (e.g.
  ``FD_domain``), a different and non-comparable number.
* Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities (the extractor's ``probs``).
* Improved precision/recall (Kynkäänniemi et al. 2019): a sample is "inside" a set if it lies in the
  ball around some member whose radius is that member's distance to its k-th nearest neighbour in the
  set; precision = share of generated samples inside the real set, recall = share of real samples
  inside the generated set.
* :func:`class_consistency`: share of class-conditional samples that a classifier assigns to the
  requested label (per label: :func:`class_hits`, then :func:`share_by_label`).

Reference statistics (mu, sigma) are cached per dataset split and extractor identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unissl.data.base import ImageDataset, to_float_images
from unissl.errors import UnisslError
from unissl.eval.features import FeatureExtractor, adapt_images, cache_path, extract_features, features_of
from unissl.eval.frechet import GaussianStats, frechet_distance_stats, gaussian_stats
from unissl.utils.progress import progress


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class probabilities (N, C): mean and std over ``splits`` equal chunks.

    Uniform predictions give 1; confident predictions spread evenly over C classes give C.
    """
    p = probs.double()
    if p.ndim != 2 or p.shape[0] < splits:
        raise UnisslError(f"Inception Score needs probabilities (N, C) with N >= splits={splits}, "
                          f"got {tuple(p.shape)}")
    scores = []
    for chunk in torch.tensor_split(p, splits):
        py = chunk.mean(0, keepdim=True)  # (1, C) marginal
        # KL(p(y|x) || p(y)) with 0 log 0 = 0
        kl = torch.where(chunk > 0, chunk * (chunk.clamp_min(1e-300).log() - py.clamp_min(1e-300).log()),
                         torch.zeros_like(chunk)).sum(1)
        scores.append(kl.mean().exp().item())
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


def _pairwise_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (A, B), float64 for exact ties in the radius comparison."""
    return torch.cdist(a.double(), b.double())


def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Distance (N,) of every sample to its k-th nearest neighbour in the same set (itself excluded)."""
    n = feats.shape[0]
    if n <= k:
        raise UnisslError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    out = []
    for i in range(0, n, chunk):
        d = _pairwise_dist(feats[i:i + chunk], feats)  # (c, N); the zero self-distance is the 1st smallest
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    """Share of ``queries`` within ``radii[j]`` of some ``support[j]``."""
    inside = []
    for i in range(0, queries.shape[0], chunk):
        d = _pairwise_dist(queries[i:i + chunk], support)  # (c, S)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside).double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real`` features."""
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


@torch.no_grad()
def predict_probs(classifier: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, C) of a classifier extractor (one with ``probs(images)``)."""
    if not hasattr(classifier, "probs"):
        raise UnisslError(f"extractor {classifier.identity()} has no classifier head (probs); "
                          "use a domain classifier or Inception-v3")
    device = getattr(classifier, "device", torch.device("cpu"))
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = adapt_images(images[i:i + batch_size].to(device).float(), getattr(classifier, "input_channels", None),
                         getattr(classifier, "input_size", None))
        out.append(classifier.probs(x).double().cpu())
    return torch.cat(out)


def class_hits(classifier: FeatureExtractor, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) bool: whether ``classifier`` assigns each of ``images`` (N, C, H, W) in [0, 1] to its label."""
    images = to_float_images(images)
    labels = torch.as_tensor(labels).long().flatten()
    if labels.shape[0] != images.shape[0]:
        raise UnisslError(f"class consistency: {images.shape[0]} images but {labels.shape[0]} labels")
    return predict_probs(classifier, images, batch_size).argmax(1) == labels


def class_consistency(classifier: FeatureExtractor, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Share (0..1) of ``images`` (N, C, H, W) in [0, 1] that ``classifier`` assigns to ``labels`` (N,)."""
    return class_hits(classifier, images, labels, batch_size).double().mean().item()


def share_by_label(hits: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Per requested label: the share (0..1) of its samples with a hit (labels that occur only)."""
    labels = torch.as_tensor(labels).long().flatten()
    return {int(c): hits[labels == c].double().mean().item() for c in labels.unique().tolist()}


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] rounded to the 256 levels of uint8 (and back to float)."""
    return (images.float().clamp(0, 1) * 255.0).round() / 255.0


def balanced_by_label(labels: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
    """Indices that keep the same number of samples of every label (the smallest count), or None if the
    counts are equal already. Class-conditional FID compares equal numbers per class."""
    labels = torch.as_tensor(labels).long().flatten()
    classes, counts = torch.unique(labels, return_counts=True)
    if counts.min() == counts.max():
        return None
    g = torch.Generator().manual_seed(seed)
    m = int(counts.min())
    keep = [torch.nonzero(labels == c).flatten()[torch.randperm(int(n), generator=g)[:m]]
            for c, n in zip(classes, counts)]
    return torch.cat(keep).sort().values


def load_npz_images(path: str | Path, key: str = "images") -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Read ``key`` (N, C, H, W) float [0, 1] or uint8 from an ``.npz`` and return it with the other arrays."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"samples file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UnisslError(f"{path} is not a readable .npz file ({e})") from None
    if key not in arrays:
        raise UnisslError(f"{path} has no array {key!r} (found {sorted(arrays)}); save images as {key}=(N,C,H,W)")
    images = arrays.pop(key)
    try:
        return to_float_images(images), arrays
    except UnisslError as e:
        raise UnisslError(f"{path}:{key}: {e}") from None


def reference_stats(extractor: FeatureExtractor, dataset: ImageDataset, batch_size: int = 256,
                    cache_dir: str | Path | None = None) -> tuple[GaussianStats, torch.Tensor]:
    """(mu, sigma) of a reference split (cached per split + extractor identity) and its features.

    The features themselves are cached too (precision/recall needs them).
    """
    feats, _ = extract_features(extractor, dataset, batch_size, cache_dir, getattr(extractor, "device", None))
    stats_path = cache_path(cache_dir, extractor, dataset, "stats") if cache_dir else None
    if stats_path is not None and stats_path.is_file():
        stats = GaussianStats.load(stats_path)
    else:
        stats = gaussian_stats(feats)
        if stats_path is not None:
            stats.save(stats_path, {"extractor": extractor.identity()})
    return stats, feats


def generation_metrics(extractor: FeatureExtractor, images: torch.Tensor, reference: ImageDataset, metric_name: str,
                       batch_size: int = 256, cache_dir: str | Path | None = None, pr_k: int = 3,
                       pr_samples: int = 10000, is_splits: int = 10, seed: int = 0, bootstrap: int = 0,
                       draws_out: list[float] | None = None) -> dict[str, float]:
    """FD (named ``metric_name``), IS (if the extractor classifies) and precision/recall of ``images``.

    Args:
        extractor: feature extractor; if it has ``probs(images)`` the Inception Score is reported.
        images: generated images (N, C, H, W) float in [0, 1].
        reference: the reference dataset split (``build_dataset`` object).
        metric_name: "FID" for Inception-v3, otherwise ``FD_<name>``.
        pr_samples: precision/recall use at most this many samples of each set (seeded subset).
        bootstrap: if > 0, the FD's 95% percentile interval over this many resamples of the samples (the
            reference held fixed; :func:`unissl.eval.bootstrap.fd_bootstrap`) as ``<metric>_ci_low`` /
            ``<metric>_ci_high`` and its standard error ``<metric>_se``; the draws are appended to
            ``draws_out`` when given (a later verdict combines two models' draws).
    """
    images = quantize_uint8(images)  # what a PNG of the samples holds: the published protocols score uint8
    ref_stats, ref_feats = reference_stats(extractor, reference, batch_size, cache_dir)
    device = getattr(extractor, "device", None)
    fake_feats = features_of(extractor, images, batch_size, device, progress="features of samples")
    fake_stats = gaussian_stats(fake_feats)
    metrics: dict[str, float] = {metric_name: frechet_distance_stats(fake_stats, ref_stats)}
    if bootstrap > 0:
        from unissl.eval.bootstrap import fd_bootstrap, percentile_interval

        draws = fd_bootstrap(fake_feats, ref_stats, bootstrap, seed=seed)
        metrics[f"{metric_name}_ci_low"], metrics[f"{metric_name}_ci_high"] = percentile_interval(draws)
        metrics[f"{metric_name}_se"] = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
        if draws_out is not None:
            draws_out.extend(float(v) for v in draws)
    if hasattr(extractor, "probs"):
        probs = predict_probs(extractor, images, batch_size)
        metrics["IS"], metrics["IS_std"] = inception_score(probs, min(is_splits, probs.shape[0]))
    g = torch.Generator().manual_seed(seed)

    def subset(x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[0] <= pr_samples else x[torch.randperm(x.shape[0], generator=g)[:pr_samples]]

    with progress(total=1, desc="precision/recall", leave=False):
        metrics["precision"], metrics["recall"] = precision_recall(subset(ref_feats), subset(fake_feats), pr_k)
    metrics["num_samples"] = float(images.shape[0])
    return metrics
