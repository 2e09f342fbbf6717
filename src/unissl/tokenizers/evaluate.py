"""Held-out quality of a VQ tokenizer: reconstruction PSNR and codebook usage / perplexity."""

from __future__ import annotations

import torch

from unissl.tokenizers.quantize import code_histogram, perplexity_of
from unissl.utils.images import psnr


@torch.no_grad()
def evaluate(tokenizer, dataset, batch_size: int = 500) -> dict[str, float]:
    """PSNR (mean of per-image PSNR) and codebook usage / perplexity over every image of ``dataset``."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    counts = torch.zeros(tokenizer.codebook_size, device=device)
    total, n = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        x = batch["image"].to(device)  # (B, C, H, W)
        ids = tokenizer.encode(x)  # (B, h, w)
        total += float(psnr(tokenizer.decode(ids), x).sum())
        n += x.shape[0]
        counts += code_histogram(ids, tokenizer.codebook_size)
    return {"psnr": total / max(n, 1), "usage": float((counts > 0).float().mean()),
            "perplexity": float(perplexity_of(counts)), "images": n}
