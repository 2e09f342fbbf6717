"""What the frozen encoder computes for every training image, computed once.

RepTok's tokenizer trains one [cls] embedding; everything else in the encoder is frozen and the images
are not augmented. So per image, ``z_frozen`` (the original encoder's token) and the encoder's frozen,
cls-independent first stage (the Sorcen adapter's VQ ids) never change: :func:`build_frozen_cache`
computes them once into a safetensors file keyed by the dataset fingerprint and the backbone checksum,
and :class:`WithFrozenCache` adds them to every batch (``frozen_input``, ``z_frozen``), which
:meth:`RepTokTokenizer.forward` then uses instead of running the frozen encoder twice per step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from unissl.errors import UnisslError
from unissl.methods.reptok.encoders import backbone_checksum
from unissl.utils.io import atomic_file
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
                       device: torch.device | str = "cpu") -> Path:
    """Compute (or reuse) ``<cache_dir>/<key>.safetensors`` with ``z_frozen`` (N, D) and ``frozen_input``."""
    path = Path(cache_dir) / f"frozen-{cache_key(encoder, dataset)}.safetensors"
    if path.is_file():
        return path
    encoder = encoder.to(device)
    zs, prepared = [], []
    for start in progress(range(0, len(dataset), batch_size), desc="frozen encoder (once)", unit="batch"):
        images = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))["image"].to(device)
        x = encoder.prepare(images)
        zs.append((encoder.frozen(images) if x is None else encoder.encode_prepared(x, encoder.cls_init)).float().cpu())
        if x is not None:
            prepared.append(x.cpu())
    tensors = {"z_frozen": torch.cat(zs).contiguous()}
    if prepared:
        tensors["frozen_input"] = torch.cat(prepared).contiguous()
    with atomic_file(path, "wb") as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    return path


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


__all__ = ["WithFrozenCache", "build_frozen_cache", "cache_key"]
