"""Frozen feature extraction with an on-disk cache.

Every evaluation (linear probe, few-shot, kNN, transfer, FD/IS/precision-recall, rFD) starts from
frozen features of a dataset split. A *feature extractor* is anything with

* ``features(images (B, C, H, W) float in [0, 1]) -> (B, D)`` and
* ``identity() -> str``: a string that changes whenever the features would change (method, weights
  hash, pooling); it is the cache key together with the dataset's ``fingerprint()`` and split.

Optional attributes ``input_channels`` / ``input_size`` (int or None) declare what the extractor expects;
:func:`adapt_images` resizes images and matches channels before :meth:`features` is called, which is
what lets ``unissl eval transfer`` probe a Fashion-MNIST encoder on another dataset.

Extractors are named in :data:`EXTRACTORS` (``name -> "module:loader"``, ``loader(checkpoint, device)``);
``load_extractor("sorcen:/runs/x/checkpoint.safetensors")`` imports the module lazily.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save

from unissl.data.base import ImageDataset, adapt_images
from unissl.engine.runtime import resolve_device
from unissl.errors import UnisslError
from unissl.utils.io import atomic_file
from unissl.utils.progress import progress as progress_bar
from unissl.utils.progress import progress_write


@runtime_checkable
class FeatureExtractor(Protocol):
    """A frozen image -> vector map used by every evaluation."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, D) features."""
        ...

    def identity(self) -> str:
        """A string that identifies the features (cache key)."""
        ...


# name -> "module:loader"; loader(checkpoint: str | None, device: torch.device) -> FeatureExtractor
EXTRACTORS: dict[str, str] = {
    "pixels": "unissl.eval.features:load_pixels",
    "sorcen": "unissl.methods.sorcen.features:load_extractor",
    "sorcen-released": "unissl.methods.sorcen.features:load_released_extractor",
    "sorcen-blocks": "unissl.methods.sorcen.features:load_blocks_extractor",
    "sorcen-grid": "unissl.methods.sorcen.features:load_grid_extractor",
    "reptok": "unissl.methods.reptok.features:load_extractor",
    "domain": "unissl.eval.domain:load_extractor",
    "inception": "unissl.eval.inception:load_extractor",
}


class PixelExtractor:
    """Flattened pixels: the floor every learned representation has to beat."""

    input_channels: int | None = None
    input_size: int | None = None

    def __init__(self, image_size: int | None = None, channels: int | None = None) -> None:
        self.input_size = image_size
        self.input_channels = channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C*H*W)."""
        return images.flatten(1).float()

    def identity(self) -> str:
        return f"pixels(size={self.input_size},channels={self.input_channels})"


def load_pixels(checkpoint: str | None, device: torch.device) -> PixelExtractor:
    """Loader of the ``pixels`` extractor; ``checkpoint`` may be an image size (``pixels:28``)."""
    if checkpoint:
        try:
            return PixelExtractor(image_size=int(checkpoint))
        except ValueError:
            raise UnisslError(f"extractor 'pixels:{checkpoint}': the argument must be an image size "
                              f"such as 'pixels:28'") from None
    return PixelExtractor()


def metric_name(extractor_spec: str) -> str:
    """The name of a Frechet distance in that feature space: 'FID' for Inception-v3, 'FD_<name>' otherwise."""
    name = parse_spec(extractor_spec)[0]
    return "FID" if name == "inception" else f"FD_{name}"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:argument"`` -> (name, argument or None)."""
    name, sep, rest = spec.partition(":")
    return name.strip(), (rest if sep and rest else None)


def load_extractor(spec: str, device: str | torch.device | None = "cpu") -> FeatureExtractor:
    """Build an extractor from ``"name[:checkpoint]"`` via the :data:`EXTRACTORS` registry."""
    name, checkpoint = parse_spec(spec)
    if name not in EXTRACTORS:
        raise UnisslError(f"unknown feature extractor {name!r} (from {spec!r}); choose one of "
                          f"{sorted(EXTRACTORS)} as 'name' or 'name:checkpoint'")
    module_name, _, fn_name = EXTRACTORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UnisslError(f"feature extractor {name!r} needs module {module_name} which is not available "
                          f"({e}); is that method installed in this checkout?") from None
    loader = getattr(module, fn_name, None)
    if loader is None:
        raise UnisslError(f"feature extractor {name!r}: {module_name} has no function {fn_name}()")
    extractor = loader(checkpoint, resolve_device(device))
    if not isinstance(extractor, FeatureExtractor):
        raise UnisslError(f"feature extractor {name!r}: {EXTRACTORS[name]} returned {type(extractor).__name__}, "
                          f"which lacks features()/identity()")
    return extractor


@torch.no_grad()
def features_of(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256,
                device: torch.device | None = None, progress: str | None = None) -> torch.Tensor:
    """Features (N, D) float32 on CPU of an in-memory image tensor (N, C, H, W) in [0, 1]."""
    device = device or getattr(extractor, "device", None) or torch.device("cpu")
    out = []
    for i in progress_bar(range(0, images.shape[0], batch_size), desc=progress, disable=progress is None,
                  leave=False):
        x = adapt_images(images[i:i + batch_size].to(device).float(),
                         getattr(extractor, "input_channels", None), getattr(extractor, "input_size", None))
        out.append(extractor.features(x).float().cpu())
    if not out:
        raise UnisslError("no images to extract features from (empty input)")
    return torch.cat(out)


def _fetch(dataset: ImageDataset, idx: list[int]) -> dict[str, torch.Tensor]:
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(idx)
    plain: Any = dataset  # a map-style Dataset outside the contract: one item at a time
    items = [plain[i] for i in idx]
    return {"image": torch.stack([it["image"] for it in items]),
            "label": torch.as_tensor([int(it["label"]) for it in items], dtype=torch.int64)}


def dataset_key(dataset: ImageDataset) -> str:
    """A string identifying a dataset split: name, split and fingerprint."""
    fp = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    if fp is None:
        raise UnisslError(f"dataset {type(dataset).__name__} has no fingerprint(); cannot cache its features")
    return f"{getattr(dataset, 'name', '?')}:{getattr(dataset, 'split', '?')}:{fp}"


def cache_path(cache_dir: str | Path, extractor: FeatureExtractor, dataset: ImageDataset, suffix: str = "features") -> Path:
    """The cache file for (extractor identity, dataset split)."""
    key = hashlib.sha256(f"{extractor.identity()}|{dataset_key(dataset)}".encode()).hexdigest()[:20]
    name = f"{getattr(dataset, 'name', 'data')}-{getattr(dataset, 'split', 'x')}-{key}.{suffix}.safetensors"
    return Path(cache_dir) / name


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, dataset: ImageDataset, batch_size: int = 256, cache_dir: str | Path | None = None,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of a whole dataset split, cached on disk.

    The cache file name hashes ``extractor.identity()`` with the dataset name, split and fingerprint, so a
    new checkpoint or a changed dataset never reuses stale features. Files are written atomically.
    """
    path = cache_path(cache_dir, extractor, dataset) if cache_dir else None
    if path is not None and path.is_file():
        try:
            data = load_file(str(path))
            if data["features"].shape[0] == len(dataset) == data["labels"].shape[0]:
                return data["features"], data["labels"]
            progress_write(f"unissl: feature cache {path} does not match the dataset size; recomputing")
        except Exception as e:  # a corrupt cache is recomputed, never trusted
            progress_write(f"unissl: ignoring unreadable feature cache {path} ({e})")
    n = len(dataset)
    if n == 0:
        raise UnisslError(f"dataset {dataset_key(dataset)} is empty")
    # An extractor may know a cheaper exact route for a whole split (a Sorcen run reads its token store).
    direct = getattr(extractor, "dataset_features", None)
    got = direct(dataset, batch_size) if direct is not None else None
    if got is not None:
        f, y = got[0].float().contiguous(), got[1].long().contiguous()
        if path is not None:
            with atomic_file(path, "wb") as fh:
                fh.write(save({"features": f, "labels": y},
                              metadata={"extractor": extractor.identity(), "dataset": dataset_key(dataset)}))
        return f, y
    device = device or getattr(extractor, "device", None) or torch.device("cpu")
    feats, labels = [], []
    desc = f"features {getattr(dataset, 'name', '')}:{getattr(dataset, 'split', '')}"
    for start in progress_bar(range(0, n, batch_size), total=math.ceil(n / batch_size), desc=desc, leave=False):
        batch = _fetch(dataset, list(range(start, min(n, start + batch_size))))
        x = adapt_images(batch["image"].to(device).float(), getattr(extractor, "input_channels", None),
                         getattr(extractor, "input_size", None))
        feats.append(extractor.features(x).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long().cpu())
    f, y = torch.cat(feats).contiguous(), torch.cat(labels).contiguous()
    if f.ndim != 2 or f.shape[0] != n:
        raise UnisslError(f"extractor {extractor.identity()} returned features of shape {tuple(f.shape)}; "
                          f"expected ({n}, D)")
    if path is not None:
        with atomic_file(path, "wb") as fh:
            fh.write(save({"features": f, "labels": y},
                          metadata={"extractor": extractor.identity(), "dataset": dataset_key(dataset)}))
    return f, y


__all__ = ["EXTRACTORS", "FeatureExtractor", "PixelExtractor", "adapt_images", "cache_path", "dataset_key",
           "extract_features", "features_of", "load_extractor", "parse_spec"]
