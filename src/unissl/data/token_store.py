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
The writers (:func:`write_token_store`, :func:`write_array_store`) live in :mod:`unissl.data.token_writer`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unissl.data.sampler import ShardedBatchSampler
from unissl.data.store_format import FORMAT, VERSION, as_grid
from unissl.errors import UnisslError
from unissl.utils.io import read_json, sha256_file

__all__ = ["TokenStore"]

_CHECK_CHUNK = 1 << 22  # elements per chunk when scanning ids for their range (~8 MB of uint16)


class TokenStore(Dataset):
    """One split of a token store, memory-mapped and validated against its ``meta.json``.

    Args:
        path: the store directory.
        split: which split to serve.
        flip: also serve the flipped copy as indices ``N..2N-1`` (the store must hold one).
        verify: check the sha256 of the split's files against meta.json before serving them. A file whose
            size and modification time match an earlier successful check (``.verified.json`` in the store) is
            not read again, so the cost is paid once per file; a changed byte changes the mtime.
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", flip: bool = False,
                 verify: bool = True) -> None:
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
        if not isinstance(meta["splits"], dict) or not isinstance(meta["sha256"], dict):
            raise UnisslError(f"{meta_path}: 'splits' and 'sha256' must be mappings; regenerate the store")
        if split not in meta["splits"]:
            raise UnisslError(f"token store {self.path} has no split {split!r}; available: {sorted(meta['splits'])}")
        self.meta: dict[str, Any] = meta
        self.kind: str = meta["kind"]
        self.split = split
        self.flip = bool(flip)
        info = meta["splits"][split]
        try:
            self.count = int(info["count"])  # images in the split (without the flipped copy)
            self.files: dict[str, str] = {str(k): str(v) for k, v in dict(info["files"]).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise UnisslError(f"{meta_path}: splits.{split} needs an integer 'count' and a 'files' mapping ({e!r}); "
                              f"regenerate the store") from None
        if self.count < 0 or "labels" not in self.files:
            raise UnisslError(f"{meta_path}: splits.{split} has count {self.count} / no 'labels' file; regenerate "
                              f"the store")
        try:
            np.dtype(meta["dtype"])
        except TypeError:
            raise UnisslError(f"{meta_path}: unknown dtype {meta['dtype']!r}; regenerate the store") from None
        if self.flip and "flip" not in self.files:
            raise UnisslError(f"token store {self.path} has no flipped copy of {split!r}; "
                              f"re-run `unissl tokenize --flip` or load it with flip=False")
        self.classes: list[str] = [str(c) for c in meta.get("classes", [])]
        self.num_classes = len(self.classes)
        if self.kind == "vq":
            try:
                self.codebook_size: int | None = int(meta["codebook_size"])
                self.grid: tuple[int, int] | None = as_grid(meta["grid"])
            except (KeyError, TypeError, ValueError) as e:
                raise UnisslError(f"{meta_path}: a vq store needs an integer 'codebook_size' and a 'grid' [h, w] "
                                  f"({e!r}); regenerate the store") from None
            if self.codebook_size <= 0:
                raise UnisslError(f"{meta_path}: codebook_size {self.codebook_size} must be positive")
            self.dim: int | None = None
            self._row_shape: tuple[int, ...] = self.grid
            self._key = "ids"
        elif self.kind == "continuous":
            self.codebook_size, self.grid = None, None
            try:
                self.dim = int(meta["dim"])
            except (KeyError, TypeError, ValueError):
                raise UnisslError(f"{meta_path}: a continuous store needs an integer 'dim'; regenerate the store") \
                    from None
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

    VERIFIED_FILE = ".verified.json"

    def verify(self, use_cache: bool = True) -> None:
        """Compare the sha256 of the files this split serves with meta.json.

        A file whose (size, mtime) match an earlier successful check recorded in ``.verified.json`` is not
        read again (``use_cache=False`` reads every byte); a failed check is never cached.
        """
        import json

        cache_path = self.path / self.VERIFIED_FILE
        cache: dict[str, Any] = {}
        if use_cache and cache_path.is_file():
            try:
                cache = json.loads(cache_path.read_text())
            except (ValueError, OSError):
                cache = {}
        changed = False
        served = [self._key, "labels"] + (["flip"] if self.flip else [])
        for name in (self.files[k] for k in served if k in self.files):
            expected = self.meta["sha256"].get(name)
            if expected is None:
                raise UnisslError(f"{self.path / 'meta.json'} has no checksum for {name}; regenerate the store")
            file = self.path / name
            if not file.is_file():
                raise UnisslError(f"{file} not found; the token store is incomplete, regenerate it")
            st = file.stat()
            stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}
            if use_cache and cache.get(name) == stamp:
                continue
            actual = sha256_file(file)
            if actual != expected:
                raise UnisslError(f"{file}: sha256 {actual[:12]}... differs from meta.json "
                                  f"({expected[:12]}...); the file was altered or is corrupt, regenerate the store")
            cache[name] = stamp
            changed = True
        if changed and use_cache:
            try:  # best effort: a read-only store is verified again next time
                from unissl.utils.io import atomic_file

                with atomic_file(cache_path, "w") as f:
                    f.write(json.dumps(cache, indent=1))
            except OSError:
                pass

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
