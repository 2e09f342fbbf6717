"""The continuous token store of a RepTok tokenizer: one token z (D,) per image, next to the VQ id store.

Both are written by ``unissl tokenize`` (the tokenizer directory says which kind), in the same directory
format (``meta.json`` + ``<split>.z.npy`` / ``<split>.labels.npy``, see :mod:`unissl.data.token_writer`), and
read by :class:`~unissl.data.token_store.TokenStore`. The store records the tokenizer's weights checksum and
the per-dimension mean and global std of the train tokens (the generator's normalisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unissl.data.token_writer import write_array_store
from unissl.errors import UnisslError
from unissl.utils.io import sha256_file
from unissl.utils.progress import progress as progress_bar

STATS_KEY = "z_stats"  # meta.json entry: {"mean": [D floats], "std": float}
WEIGHTS_FILE = "model.safetensors"


def default_store_path(tokenizer: str | Path, dataset: str) -> Path:
    """``<tokenizer>-tokens-<dataset>`` next to the tokenizer directory."""
    tok = Path(tokenizer).resolve()
    return tok.parent / f"{tok.name}-tokens-{dataset}"


def tokenizer_checksum(tokenizer_dir: str | Path) -> str:
    """sha256 of a tokenizer directory's weights file (recorded in the store, checked by its readers)."""
    return sha256_file(Path(tokenizer_dir) / WEIGHTS_FILE)


def token_stats(z: np.ndarray, chunk: int = 65536) -> dict[str, Any]:
    """Per-dimension mean and one global std of tokens (N, D), computed chunk-wise in float64."""
    n, d = z.shape
    s, ss = np.zeros(d), np.zeros(d)
    for i in range(0, n, chunk):
        c = np.asarray(z[i:i + chunk], dtype=np.float64)
        s += c.sum(0)
        ss += (c * c).sum(0)
    mean = s / n
    var = np.maximum(ss / n - mean * mean, 0.0)  # (D,) per-dimension variance
    return {"mean": mean.tolist(), "std": float(np.sqrt(var.mean()) + 1e-8)}


@torch.no_grad()
def write_continuous_store(out: str | Path, tokenizer: Any, tokenizer_dir: str | Path, dataset: str,
                           datasets: Mapping[str, Any], batch_size: int = 256, device: torch.device | str = "cpu",
                           progress: bool = True, overwrite: bool = True) -> Path:
    """Encode every ``datasets[split]`` with a RepTok ``tokenizer`` (``encode(images) -> (B, D)``) into a store.

    The datasets must already be at the tokenizer's image size and channels; the store's meta records the
    tokenizer (path, weights sha256), the classes, each split's dataset fingerprint and the train statistics.
    """
    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    fingerprints: dict[str, str] = {}
    classes: list[str] = []
    for split, ds in datasets.items():
        if ds.channels != tokenizer.cfg.channels:
            raise UnisslError(f"dataset {dataset} has {ds.channels} channels but tokenizer {tokenizer_dir} expects "
                              f"{tokenizer.cfg.channels}; use the dataset it was trained on")
        classes = list(ds.classes)
        zs, ys = [], []
        for start in progress_bar(range(0, len(ds), batch_size), desc=f"encode {split}", unit="batch", disable=not progress):
            batch = ds.__getitems__(list(range(start, min(start + batch_size, len(ds)))))
            zs.append(tokenizer.encode(batch["image"].to(device)).float().cpu())  # (B, D)
            ys.append(batch["label"])
        arrays[split] = torch.cat(zs).numpy()
        labels[split] = torch.cat(ys).numpy()
        fingerprints[split] = ds.fingerprint()
    return write_encoded_store(out, tokenizer, tokenizer_dir, dataset, arrays, labels, fingerprints, classes,
                               overwrite=overwrite)


def write_encoded_store(out: str | Path, tokenizer: Any, tokenizer_dir: str | Path, dataset: str,
                        arrays: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                        fingerprints: Mapping[str, str], classes: list[str], overwrite: bool = True) -> Path:
    """Store tokens already computed with ``tokenizer`` (saved at ``tokenizer_dir``): ``arrays[split]`` (N, D)
    and ``labels[split]`` (N,) of the dataset split whose fingerprint is ``fingerprints[split]``.

    The meta is :func:`write_continuous_store`'s (which ends here), so readers cannot tell the two apart.
    """
    meta = {"tokenizer": {"path": str(Path(tokenizer_dir).resolve()), "sha256": tokenizer_checksum(tokenizer_dir),
                          "class": f"{type(tokenizer).__module__}.{type(tokenizer).__name__}"},
            "classes": list(classes), "dataset": {"name": dataset, "fingerprints": dict(fingerprints)},
            STATS_KEY: token_stats(arrays["train"] if "train" in arrays else next(iter(arrays.values())))}
    return write_array_store(out, arrays, labels, meta, overwrite=overwrite)


def is_reptok_tokenizer(path: str | Path) -> bool:
    """Whether ``path`` is a saved RepTok tokenizer directory (its config.json names the RepTok format)."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return str(json.loads(cfg.read_text()).get("format", "")).startswith("unissl-reptok-tokenizer")
    except (OSError, ValueError, AttributeError):
        return False
