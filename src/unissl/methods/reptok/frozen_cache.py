"""What the frozen encoder computes for every training image, computed once.

RepTok's tokenizer trains one [cls] embedding; everything else in the encoder is frozen and the images
are not augmented. So per image, ``z_frozen`` (the original encoder's token) and the encoder's frozen,
cls-independent first stage (the Sorcen adapter's VQ ids) never change: :func:`build_frozen_cache`
computes them once into a safetensors file keyed by the dataset fingerprint and the backbone checksum,
and :class:`WithFrozenCache` adds them to every batch (``frozen_input``, ``z_frozen``), which
:meth:`RepTokTokenizer.forward` then uses instead of running the frozen encoder twice per step.

The Sorcen adapter's VQ ids are exactly what ``unissl tokenize`` stored for the Sorcen run's own training:
:func:`store_ids` reads them from that VQ id store (after checking it is the same tokenizer, dataset and
order), so the cache then only runs the cheap transformer over them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from unissl.data.base import FirstN
from unissl.errors import UnisslError
from unissl.methods.reptok.encoders import backbone_checksum
from unissl.utils.io import atomic_file, read_json
from unissl.utils.progress import progress
from unissl.utils.weights import read_safetensors

FORMAT = "unissl-reptok-frozen-cache-v1"


def cache_key(encoder: Any, dataset: Any) -> str:
    """16 hex digits of sha256(backbone checksum, encoder spec, dataset fingerprint, length)."""
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else f"{type(dataset).__name__}"
    text = f"{backbone_checksum(encoder)}|{sorted(encoder.spec().items())}|{fingerprint}|{len(dataset)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def build_frozen_cache(encoder: Any, dataset: Any, cache_dir: str | Path, batch_size: int = 256,
                       device: torch.device | str = "cpu", ids: torch.Tensor | None = None) -> Path:
    """Compute (or reuse) ``<cache_dir>/<key>.safetensors`` with ``z_frozen`` (N, D) and ``frozen_input``.

    ``ids`` (N, ...) are ``encoder.prepare``'s outputs already at hand (:func:`store_ids`): then no image is
    read and only ``encode_prepared`` runs. The key stays the same: :func:`store_ids` guarantees they are
    exactly the ids ``prepare`` gives, so the cache's content does not depend on where they came from.
    """
    path = Path(cache_dir) / f"frozen-{cache_key(encoder, dataset)}.safetensors"
    if path.is_file():
        return path
    if ids is not None and len(ids) != len(dataset):
        raise UnisslError(f"frozen-encoder cache: {len(ids)} precomputed inputs for {len(dataset)} images")
    encoder = encoder.to(device)
    zs, prepared = [], []
    for start in progress(range(0, len(dataset), batch_size), desc="frozen encoder (once)", unit="batch"):
        stop = min(start + batch_size, len(dataset))
        if ids is None:
            images = dataset.__getitems__(list(range(start, stop)))["image"].to(device)
            x = encoder.prepare(images)
        else:
            x = ids[start:stop].to(device)
        zs.append((encoder.frozen(images) if x is None else encoder.encode_prepared(x, encoder.cls_init)).float().cpu())
        if x is not None:
            prepared.append(x.cpu())
    tensors = {"z_frozen": torch.cat(zs).contiguous()}
    if prepared:
        tensors["frozen_input"] = torch.cat(prepared).contiguous()
    with atomic_file(path, "wb") as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    return path


SPOT_CHECK = 64  # images whose VQ ids store_ids recomputes and compares with the store's


@torch.no_grad()
def store_ids(encoder: Any, dataset: Any, store: str | Path, split: str,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The Sorcen adapter's VQ ids (N, h, w) of ``dataset`` read from the ``split`` of a VQ id store.

    Refused, each time with one line that names the store and the fix, unless the store was written by the
    encoder's own VQ tokenizer (weights checksum) from this very dataset (the split's fingerprint; a
    ``--limit`` dataset takes the first rows of its full split), without ``--flip``; and the ids the encoder
    computes for the first :data:`SPOT_CHECK` images must equal the store's rows exactly.
    """
    from unissl.data.token_store import TokenStore

    store = Path(store)
    vq = getattr(encoder, "vq", None)
    if vq is None:
        raise UnisslError(f"VQ id store {store}: the {type(encoder).__name__} has no VQ tokenizer; precomputed ids "
                          f"are for the sorcen encoder only")
    meta = read_json(store / "meta.json") if (store / "meta.json").is_file() else None
    if not isinstance(meta, dict) or meta.get("kind") != "vq":
        what = "has no meta.json" if meta is None else f"is a {meta.get('kind')!r} store" \
            if isinstance(meta, dict) else "has an unreadable meta.json"
        raise UnisslError(f"VQ id store {store} {what}, not a VQ id store; write it with `unissl tokenize` and the "
                          f"Sorcen run's VQ tokenizer")
    recorded = (meta.get("tokenizer") or {}).get("checksum")
    own = vq.checksum()
    if recorded != own:
        raise UnisslError(f"VQ id store {store} was written by other VQ tokenizer weights (sha256 "
                          f"{str(recorded)[:12]}...) than the Sorcen encoder's own ({own[:12]}...); tokenize with the "
                          f"Sorcen run's tokenizer")
    splits = meta.get("splits") or {}
    if split not in splits:
        raise UnisslError(f"VQ id store {store} has no split {split!r} (it has {sorted(splits)}); tokenize it with "
                          f"`unissl tokenize --splits {split}`")
    if (splits[split] or {}).get("flip"):
        raise UnisslError(f"VQ id store {store} also holds the flipped images of split {split!r}; tokenize it "
                          f"without flipping")
    full = dataset.dataset if isinstance(dataset, FirstN) else dataset
    recorded_fp = ((meta.get("dataset") or {}).get("fingerprints") or {}).get(split)
    if recorded_fp != full.fingerprint():
        raise UnisslError(f"VQ id store {store} split {split!r} was tokenized from another dataset ({recorded_fp}) "
                          f"than the one trained on ({full.fingerprint()}); tokenize this dataset at the VQ "
                          f"tokenizer's image size")
    ids = TokenStore(store, split).__getitems__(range(len(dataset)))["ids"]  # (N, h, w) int64, dataset order
    encoder = encoder.to(device)
    k = min(SPOT_CHECK, len(dataset))
    own_ids = encoder.prepare(dataset.__getitems__(list(range(k)))["image"].to(device)).cpu()  # (k, h, w)
    if own_ids.shape != ids[:k].shape or not torch.equal(own_ids.long(), ids[:k]):
        differ = int((own_ids.long() != ids[:k]).sum()) if own_ids.shape == ids[:k].shape else "all"
        raise UnisslError(f"VQ id store {store}: the Sorcen encoder's VQ ids of the first {k} images differ from "
                          f"the store's ({differ} ids); re-run `unissl tokenize` with this "
                          f"encoder's VQ tokenizer")
    return ids.to(own_ids.dtype)


class WithFrozenCache:
    """A dataset whose batches also carry the cached ``z_frozen`` (B, D) and ``frozen_input`` (B, ...)."""

    def __init__(self, dataset: Any, cache_path: str | Path) -> None:
        tensors = read_safetensors(cache_path, "delete it to recompute the frozen-encoder cache")
        if tensors["z_frozen"].shape[0] != len(dataset):
            raise UnisslError(f"frozen-encoder cache {cache_path} holds {tensors['z_frozen'].shape[0]} items, the "
                              f"dataset {len(dataset)}; delete it to recompute")
        self.dataset, self.tensors = dataset, tensors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = dict(self.dataset.__getitems__(indices))
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch.update({k: v[idx] for k, v in self.tensors.items()})
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "tensors"):  # not set yet (e.g. while unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


__all__ = ["WithFrozenCache", "build_frozen_cache", "cache_key", "store_ids"]
