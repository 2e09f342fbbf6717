"""Writing token stores: a frozen tokenizer run once over dataset splits, or precomputed continuous tokens.

Both writers build the store in a temporary sibling directory and rename it into place, so an exception
(or a crash) never leaves a partial store. See :mod:`unissl.data.token_store` for the layout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unissl.data.sampler import collate_batched
from unissl.data.store_format import FORMAT, VERSION, as_grid, id_dtype
from unissl.errors import ConfigError, UnisslError
from unissl.tokenizers.base import Tokenizer  # ``identity``/``checksum`` are optional extras
from unissl.utils.io import atomic_dir, sha256_file, write_json
from unissl.utils.progress import progress as progress_bar


def tokenizer_identity(tokenizer: Any, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"path", "class", "config", "checksum"}`` of a tokenizer, from its optional ``identity()``/``checksum()``."""
    ident = dict(tokenizer.identity()) if hasattr(tokenizer, "identity") else {}
    ident.setdefault("class", f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}")
    ident.setdefault("config", None)
    if path is not None:
        ident["path"] = str(path)
    ident.setdefault("path", None)
    if hasattr(tokenizer, "checksum"):
        ident["checksum"] = tokenizer.checksum()
    ident.setdefault("checksum", None)
    return ident


def _collate_items(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([it["image"] for it in items]), "label": torch.stack([it["label"] for it in items])}


def _ordered_batches(ds: Any, batch_size: int, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``ds`` in index order, ``{"image": (B, C, H, W), "label": (B,)}``, decoded by workers if asked."""
    n = len(ds)
    index_lists = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    if num_workers <= 0:
        for idx in index_lists:
            yield ds.__getitems__(idx) if hasattr(ds, "__getitems__") else _collate_items([ds[i] for i in idx])
        return
    collate = collate_batched if hasattr(ds, "__getitems__") else _collate_items
    yield from torch.utils.data.DataLoader(ds, batch_sampler=index_lists, collate_fn=collate, num_workers=num_workers)


def _check_images(images: torch.Tensor, tokenizer: Any, split: str) -> None:
    """Fail early, naming the fix, when the dataset's images do not fit the tokenizer."""
    size, channels = getattr(tokenizer, "image_size", None), getattr(tokenizer, "channels", None)
    c, h, w = images.shape[1:]
    if size is not None and (h, w) != as_grid(size):
        raise ConfigError("image_size", f"split {split}: images are {h}x{w} but the tokenizer expects "
                                        f"{size}x{size}; set it to {size}")
    if channels is not None and c != channels:
        raise UnisslError(f"split {split}: images have {c} channels but the tokenizer expects {channels}; "
                          f"use a dataset with {channels} channels")


def _encode(tokenizer: Any, images: torch.Tensor, grid: tuple[int, int], codebook_size: int) -> np.ndarray:
    """``tokenizer.encode`` with its output checked: int ids (B, h, w) inside the codebook."""
    ids = tokenizer.encode(images)
    name = type(tokenizer).__name__
    if ids.shape != (images.shape[0], *grid) or ids.dtype.is_floating_point:
        raise UnisslError(f"tokenizer {name}.encode returned {tuple(ids.shape)} {ids.dtype}, expected integer "
                          f"ids {(images.shape[0], *grid)}; check the tokenizer")
    ids = ids.detach().cpu()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= codebook_size:
        raise UnisslError(f"tokenizer {name}.encode returned id {hi if hi >= codebook_size else lo} outside "
                          f"[0, {codebook_size}); check the tokenizer's codebook_size")
    return ids.numpy()


def write_token_store(out_dir: str | os.PathLike, tokenizer: Tokenizer, dataset_splits: Mapping[str, Any],
                      batch_size: int = 256, flip: bool = False, device: str | torch.device = "cpu",
                      progress: bool = True, tokenizer_path: str | os.PathLike | None = None,
                      overwrite: bool = True, num_workers: int = 0) -> Path:
    """Encode every split of ``dataset_splits`` with ``tokenizer`` into a VQ token store at ``out_dir``.

    ``flip`` also stores the ids of the horizontally flipped images; ``num_workers`` > 0 loads (decodes)
    images in DataLoader worker processes. The directory appears only when every split is written (an
    exception leaves no output). Returns ``out_dir``.
    """
    if not dataset_splits:
        raise UnisslError("write_token_store: no splits given; pass at least one split")
    if batch_size <= 0:
        raise UnisslError(f"batch size must be positive, got {batch_size}")
    codebook_size, grid = int(tokenizer.codebook_size), as_grid(tokenizer.grid)
    dtype = id_dtype(codebook_size)
    device = torch.device(device)
    if hasattr(tokenizer, "to"):
        tokenizer = tokenizer.to(device)
    if hasattr(tokenizer, "eval"):
        tokenizer.eval()
    first = next(iter(dataset_splits.values()))
    classes = [str(c) for c in getattr(first, "classes", [])]
    splits_meta: dict[str, Any] = {}
    fingerprints: dict[str, str | None] = {}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for split, ds in dataset_splits.items():
            n = len(ds)
            if n == 0:
                raise UnisslError(f"split {split} of the dataset is empty; check the data path")
            files = {"ids": f"{split}.ids.npy", "labels": f"{split}.labels.npy"}
            if flip:
                files["flip"] = f"{split}.flip.ids.npy"
            ids_mm = np.lib.format.open_memmap(tmp / files["ids"], mode="w+", dtype=dtype, shape=(n, *grid))
            flip_mm = (np.lib.format.open_memmap(tmp / files["flip"], mode="w+", dtype=dtype, shape=(n, *grid))
                       if flip else None)
            labels = np.empty(n, dtype=np.int64)  # (N,)
            with torch.no_grad():
                batches = _ordered_batches(ds, batch_size, num_workers)
                start = 0
                for batch in progress_bar(batches, total=-(-n // batch_size), desc=f"tokenize {split}", disable=not progress,
                                  unit="batch"):
                    images, lab = batch["image"], batch["label"]  # (B, C, H, W), (B,)
                    stop = start + len(images)
                    if start == 0:
                        _check_images(images, tokenizer, split)
                    images = images.to(device)
                    ids_mm[start:stop] = _encode(tokenizer, images, grid, codebook_size)  # (B, h, w)
                    if flip_mm is not None:
                        flip_mm[start:stop] = _encode(tokenizer, images.flip(-1), grid, codebook_size)
                    labels[start:stop] = lab.numpy()
                    start = stop
                if start != n:
                    raise UnisslError(f"split {split}: the dataset yielded {start} of its {n} images; check the dataset")
            ids_mm.flush()
            del ids_mm
            if flip_mm is not None:
                flip_mm.flush()
                del flip_mm
            np.save(tmp / files["labels"], labels)
            splits_meta[split] = {"count": n, "flip": flip, "files": files}
            fingerprints[split] = ds.fingerprint() if hasattr(ds, "fingerprint") else None
        meta = {
            "format": FORMAT, "version": VERSION, "kind": "vq",
            "codebook_size": codebook_size, "grid": list(grid), "dtype": dtype.name,
            "tokenizer": tokenizer_identity(tokenizer, tokenizer_path),
            "dataset": {"name": getattr(first, "name", None), "fingerprints": fingerprints,
                        "image_size": getattr(first, "image_size", None), "channels": getattr(first, "channels", None)},
            "classes": classes, "splits": splits_meta,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        meta["sha256"] = {f: sha256_file(tmp / f) for s in splits_meta.values() for f in s["files"].values()}
        write_json(tmp / "meta.json", meta)
    return out_dir


_RESERVED = {"format", "version", "kind", "dim", "dtype", "splits", "sha256"}


def write_array_store(out_dir: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                      labels: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None,
                      flipped: Mapping[str, np.ndarray] | None = None, overwrite: bool = True) -> Path:
    """Write continuous tokens ``arrays[split]`` (N, D) float32 and ``labels[split]`` (N,) as a store.

    ``meta`` (e.g. ``{"tokenizer": {...}, "classes": [...], "dataset": {...}}``) is merged into meta.json;
    ``flipped[split]`` (N, D) optionally holds the tokens of the flipped images.
    """
    meta = dict(meta or {})
    clash = _RESERVED & set(meta)
    if clash:
        raise ValueError(f"meta keys {sorted(clash)} are reserved by the store format")
    if set(labels) != set(arrays):
        raise UnisslError(f"array store: splits of arrays {sorted(arrays)} and labels {sorted(labels)} differ")
    dims = {np.asarray(a).shape[1] if np.asarray(a).ndim == 2 else None for a in arrays.values()}
    if None in dims or len(dims) != 1:
        raise UnisslError(f"array store: every split must be a (N, D) array with the same D, got "
                          f"{ {s: np.asarray(a).shape for s, a in arrays.items()} }")
    dim = int(dims.pop() or 0)  # not None: checked above
    splits_meta: dict[str, Any] = {}
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for split, arr in arrays.items():
            z = np.ascontiguousarray(arr, dtype=np.float32)  # (N, D)
            lab = np.asarray(labels[split], dtype=np.int64)  # (N,)
            if lab.shape != (len(z),):
                raise UnisslError(f"array store: split {split} has {len(z)} rows but labels of shape {lab.shape}")
            files = {"z": f"{split}.z.npy", "labels": f"{split}.labels.npy"}
            np.save(tmp / files["z"], z)
            np.save(tmp / files["labels"], lab)
            has_flip = flipped is not None and split in flipped
            if has_flip:
                zf = np.ascontiguousarray(flipped[split], dtype=np.float32)  # type: ignore[index]
                if zf.shape != z.shape:
                    raise UnisslError(f"array store: flipped {split} has shape {zf.shape}, expected {z.shape}")
                files["flip"] = f"{split}.flip.z.npy"
                np.save(tmp / files["flip"], zf)
            splits_meta[split] = {"count": len(z), "flip": has_flip, "files": files}
        meta.update({"format": FORMAT, "version": VERSION, "kind": "continuous", "dim": int(dim), "dtype": "float32",
                     "splits": splits_meta})
        meta.setdefault("classes", [])
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["sha256"] = {f: sha256_file(tmp / f) for s in splits_meta.values() for f in s["files"].values()}
        write_json(tmp / "meta.json", meta)
    return Path(out_dir)
