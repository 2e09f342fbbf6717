"""Ceilings of generation metrics: what the same decoder and the same judge reach on real data.

A generator's class share or FD says little alone: a tokenizer whose decoder keeps the class of 79% of
real images caps every generator decoded by it near 79%, and a judge that classifies 91% of real images
correctly caps every class share near 91%. Two ceilings sit beside each generation metric:

* **tokenizer ceiling**: real reference images with the samples' label counts, encoded and decoded by
  the tokenizer the samples were decoded with (a RepTok tokenizer: encode -> flow decode; a VQ
  tokenizer: ids -> decode), scored exactly like the samples;
* **judge ceiling**: the classifier's accuracy on the real reference split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from unissl.data.base import ImageDataset
from unissl.errors import UnisslError
from unissl.eval.features import FeatureExtractor
from unissl.eval.generation import class_hits
from unissl.methods.reptok.tokenizer import DECODE_STEPS, RepTokTokenizer
from unissl.tokenizers import load_tokenizer


def matching_reference(reference: Any, labels: torch.Tensor | None, n: int, seed: int = 0) -> torch.Tensor:
    """Indices (n,) of reference items: with ``labels``, the same count per label as the samples, else any n.

    Seeded and without replacement within each label (with replacement only if a label has fewer items).
    """
    g = torch.Generator().manual_seed(seed)
    ref_labels = torch.as_tensor(reference.labels).long()
    if labels is None:
        return torch.randperm(len(reference), generator=g)[:n]
    labels = torch.as_tensor(labels).long().flatten()
    picked = []
    for c, count in zip(*torch.unique(labels, return_counts=True)):
        pool = torch.nonzero(ref_labels == c).flatten()
        if pool.numel() == 0:
            raise UnisslError(f"the reference has no image of class {int(c)}; the samples' labels must be classes "
                              f"of the reference split")
        if pool.numel() >= int(count):
            picked.append(pool[torch.randperm(pool.numel(), generator=g)[:int(count)]])
        else:
            picked.append(pool[torch.randint(pool.numel(), (int(count),), generator=g)])
    return torch.cat(picked)


def load_roundtrip_tokenizer(path: str | Path, device: torch.device) -> Any:
    """A RepTok tokenizer directory or any VQ tokenizer :func:`unissl.tokenizers.load_tokenizer` reads."""
    cfg = Path(path) / "config.json"
    fmt = None
    if cfg.is_file():
        try:
            fmt = json.loads(cfg.read_text()).get("format")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            fmt = None
    if fmt is not None and str(fmt).startswith("unissl-reptok-tokenizer"):
        return RepTokTokenizer.from_pretrained(path, device=device)

    return load_tokenizer(path, device=device)


@torch.no_grad()
def roundtrip(tokenizer: Any, images: torch.Tensor, decode_steps: int = DECODE_STEPS, batch_size: int = 250,
              seed: int = 0) -> torch.Tensor:
    """decode(encode(images)) for images (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1] on CPU."""
    device = next(iter(tokenizer.parameters())).device if isinstance(tokenizer, torch.nn.Module) else "cpu"
    out = []
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(device)
        if isinstance(tokenizer, RepTokTokenizer):
            rec = tokenizer.reconstruct(x, steps=decode_steps, generator=gen)
        else:
            rec = tokenizer.decode(tokenizer.encode(x))
        out.append(rec.float().clamp(0, 1).cpu())
    return torch.cat(out)


def judge_accuracy(classifier: FeatureExtractor, reference: ImageDataset, batch_size: int = 256) -> float:
    """Share (0..1) of the real reference split that the classifier assigns to its true label."""
    items = reference.__getitems__(list(range(len(reference))))
    return class_hits(classifier, items["image"], items["label"], batch_size).double().mean().item()
