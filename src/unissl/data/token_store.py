"""Token stores: a frozen tokenizer run once over a dataset, saved as contiguous memory-mapped arrays.

Layout of a store directory (written atomically: a temporary sibling renamed into place)::

    meta.json                format, kind, codebook_size, grid, tokenizer identity + checksum, dataset
                             fingerprints, class names, per-split counts and files, sha256 of every array
    <split>.ids.npy          (N, h, w) uint16 (int32 if ids do not fit) token ids      kind = "vq"
    <split>.flip.ids.npy     (N, h, w) ids of the horizontally flipped images (optional)
    <split>.z.npy            (N, D) float32 continuous tokens                          kind = "continuous"
    <split>.flip.z.npy       (N, D) tokens of the flipped images (optional)
    <split>.labels.npy       (N,) int64

:class:`TokenStore` memory-maps one split (never reading the whole array into RAM), validates it against
``meta.json`` and serves batches: ``store.__getitems__(indices) -> {"ids": int64 (B, h, w), "label": (B,)}``
(or ``{"z": float32 (B, D), "label"}``); with ``flip=True`` indices ``N..2N-1`` are the flipped copies.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from unissl.data.sampler import ShardedBatchSampler
from unissl.errors import UnisslError
from unissl.utils.io import atomic_dir, read_json, write_json

FORMAT = "unissl-token-store"
VERSION = 1
_CHECK_CHUNK = 1 << 22  # elements per chunk when scanning ids for their range (~8 MB of uint16)


class Tokenizer(Protocol):
    """What :func:`write_token_store` needs from a VQ tokenizer (``identity``/``checksum`` are optional)."""

    codebook_size: int
    grid: Any  # (h, w) or an int for a square grid

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> int64 (B, h, w)
        ...


def id_dtype(codebook_size: int) -> np.dtype:
    """The smallest stored dtype for ids in ``[0, codebook_size)``: uint16 up to 65536 entries, else int32."""
    return np.dtype(np.uint16) if codebook_size <= 1 << 16 else np.dtype(np.int32)


def as_grid(grid: Any) -> tuple[int, int]:
    """An int or a pair -> ``(h, w)``."""
    if isinstance(grid, int):
        return (grid, grid)
    h, w = (int(g) for g in grid)
    return (h, w)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    from unissl.data.sampler import collate_batched

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
        raise UnisslError(f"split {split}: images are {h}x{w} but the tokenizer expects {size}x{size}; "
                          f"pass --image-size {size}")
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
    from tqdm.auto import tqdm

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
                for batch in tqdm(batches, total=-(-n // batch_size), desc=f"tokenize {split}", disable=not progress,
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
    dim = dims.pop()
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


class TokenStore(Dataset):
    """One split of a token store, memory-mapped and validated against its ``meta.json``.

    Args:
        path: the store directory.
        split: which split to serve.
        flip: also serve the flipped copy as indices ``N..2N-1`` (the store must hold one).
        verify: check the sha256 of the split's files against meta.json (reads them once).
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", flip: bool = False,
                 verify: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UnisslError(f"token store {self.path} not found; create it with `unissl tokenize --out {self.path}`")
        meta_path = self.path / "meta.json"
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UnisslError(f"{meta_path} is not a unissl token store meta file; regenerate the store")
        for key in ("version", "kind", "splits", "sha256", "dtype"):
            if key not in meta:
                raise UnisslError(f"{meta_path} lacks {key!r}; the file is corrupt, regenerate the store")
        if meta["version"] > VERSION:
            raise UnisslError(f"{meta_path} has format version {meta['version']} > {VERSION}; upgrade unissl")
        if split not in meta["splits"]:
            raise UnisslError(f"token store {self.path} has no split {split!r}; available: {sorted(meta['splits'])}")
        self.meta: dict[str, Any] = meta
        self.kind: str = meta["kind"]
        self.split = split
        self.flip = bool(flip)
        info = meta["splits"][split]
        self.count = int(info["count"])  # images in the split (without the flipped copy)
        self.files: dict[str, str] = dict(info["files"])
        if self.flip and "flip" not in self.files:
            raise UnisslError(f"token store {self.path} has no flipped copy of {split!r}; "
                              f"re-run `unissl tokenize --flip` or load it with flip=False")
        self.classes: list[str] = [str(c) for c in meta.get("classes", [])]
        self.num_classes = len(self.classes)
        if self.kind == "vq":
            self.codebook_size: int | None = int(meta["codebook_size"])
            self.grid: tuple[int, int] | None = as_grid(meta["grid"])
            self.dim: int | None = None
            self._row_shape: tuple[int, ...] = self.grid
            self._key = "ids"
        elif self.kind == "continuous":
            self.codebook_size, self.grid = None, None
            self.dim = int(meta["dim"])
            self._row_shape = (self.dim,)
            self._key = "z"
        else:
            raise UnisslError(f"{meta_path}: unknown store kind {self.kind!r}; regenerate the store")
        tok = meta.get("tokenizer") or {}
        self.tokenizer_path: str | None = tok.get("path") if isinstance(tok, dict) else None
        if verify:
            self.verify()
        self._open()
        self.labels = self._load_labels()  # (N,) int64, small enough for RAM
        if self.kind == "vq":
            for key in ("ids", "flip") if self.flip else ("ids",):
                self._check_id_range(key)

    # ------------------------------------------------------------------ loading and validation
    def _open(self) -> None:
        """Memory-map the split's arrays and check their shape and dtype against meta.json."""
        expected_dtype = np.dtype(self.meta["dtype"])
        self._arrays: dict[str, np.ndarray] = {}
        for key in (self._key, "flip") if self.flip else (self._key,):
            self._arrays[key] = self._map(self.files[key], expected_dtype, (self.count, *self._row_shape))

    def _map(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        file = self.path / name
        if not file.is_file():
            raise UnisslError(f"{file} not found; the token store is incomplete, regenerate it")
        try:
            arr = np.load(file, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise UnisslError(f"{file}: not a readable .npy array ({e}); regenerate the token store") from e
        if arr.dtype != dtype:
            raise UnisslError(f"{file}: dtype {arr.dtype} but meta.json says {dtype}; regenerate the token store")
        if arr.shape != shape:
            raise UnisslError(f"{file}: shape {arr.shape} but meta.json says {shape}; regenerate the token store")
        return arr

    def _load_labels(self) -> np.ndarray:
        labels = np.array(self._map(self.files["labels"], np.dtype(np.int64), (self.count,)))  # (N,)
        if self.num_classes and len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels.max() if labels.max() >= self.num_classes else labels.min())
            raise UnisslError(f"{self.path / self.files['labels']}: label {bad} outside [0, {self.num_classes}); "
                              f"regenerate the token store")
        return labels

    def _check_id_range(self, key: str) -> None:
        """Every id must be in ``[0, codebook_size)``; scanned chunk-wise over the memmap."""
        flat = self._arrays[key].reshape(-1)
        assert self.codebook_size is not None
        for start in range(0, len(flat), _CHECK_CHUNK):
            chunk = flat[start:start + _CHECK_CHUNK]
            lo, hi = int(chunk.min()), int(chunk.max())
            if lo < 0 or hi >= self.codebook_size:
                bad = hi if hi >= self.codebook_size else lo
                raise UnisslError(f"{self.path / self.files[key]}: token id {bad} outside the codebook "
                                  f"[0, {self.codebook_size}); the store does not match its meta.json, regenerate it")

    def verify(self) -> None:
        """Compare the sha256 of the split's files with meta.json (reads every byte once)."""
        for name in self.files.values():
            expected = self.meta["sha256"].get(name)
            if expected is None:
                raise UnisslError(f"{self.path / 'meta.json'} has no checksum for {name}; regenerate the store")
            actual = sha256_file(self.path / name)
            if actual != expected:
                raise UnisslError(f"{self.path / name}: sha256 {actual[:12]}... differs from meta.json "
                                  f"({expected[:12]}...); the file is corrupt, regenerate the store")

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise unless ``tokenizer`` is the one that wrote this store (codebook, grid and weights checksum).

        Use it before decoding the store's ids (or generated ids) back to images.
        """
        if self.kind != "vq":
            raise UnisslError(f"token store {self.path} holds continuous tokens; it has no VQ tokenizer to check")
        expected = self.meta.get("tokenizer") or {}
        got_grid = as_grid(tokenizer.grid)
        if int(tokenizer.codebook_size) != self.codebook_size or got_grid != self.grid:
            raise UnisslError(f"tokenizer (K={tokenizer.codebook_size}, grid={got_grid}) does not match token store "
                              f"{self.path} (K={self.codebook_size}, grid={self.grid}); use {self.tokenizer_path}")
        want = expected.get("checksum")
        if want and hasattr(tokenizer, "checksum") and tokenizer.checksum() != want:
            raise UnisslError(f"tokenizer weights (sha256 {tokenizer.checksum()[:12]}...) differ from those that "
                              f"wrote token store {self.path} ({want[:12]}...); use {self.tokenizer_path}")

    # Memory maps are reopened (not copied) when the store is sent to DataLoader worker processes.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_arrays", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.count * (2 if self.flip else 1)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"token store index out of range [0, {len(self)}): {int(idx.min())}..{int(idx.max())}")
        flipped = idx >= self.count  # (B,)
        base = idx - self.count * flipped  # (B,) row in the unflipped arrays
        out_dtype = np.int64 if self.kind == "vq" else np.float32
        out = np.empty((len(idx), *self._row_shape), dtype=out_dtype)  # (B, h, w) or (B, D)
        out[~flipped] = self._arrays[self._key][base[~flipped]]
        if flipped.any():
            out[flipped] = self._arrays["flip"][base[flipped]]
        return {self._key: torch.from_numpy(out), "label": torch.from_numpy(self.labels[base])}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([i])
        return {k: v[0] for k, v in batch.items()}

    def sampler(self, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                drop_last: bool = True) -> ShardedBatchSampler:
        """A :class:`ShardedBatchSampler` over this store (flipped copies included when ``flip``)."""
        return ShardedBatchSampler(len(self), global_batch, rank=rank, world_size=world_size, seed=seed,
                                   drop_last=drop_last)

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                num_steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffled batches of this rank's slice of each global batch of ``batch_size``, endless by default."""
        indices: Iterator[list[int]] = iter(self.sampler(batch_size, rank, world_size, seed))
        if num_steps is not None:
            indices = islice(indices, num_steps)
        for idx in indices:
            yield self.__getitems__(idx)

    def __repr__(self) -> str:
        shape = f"grid={self.grid}, codebook_size={self.codebook_size}" if self.kind == "vq" else f"dim={self.dim}"
        return f"TokenStore({str(self.path)!r}, split={self.split!r}, n={len(self)}, kind={self.kind!r}, {shape})"
