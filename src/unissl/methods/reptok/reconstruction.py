"""Reconstructions of a dataset through a RepTok tokenizer (the ``reconstruct`` command and the ceilings)."""

from __future__ import annotations

import torch

from unissl.utils.progress import progress


def reconstruct_dataset(tok, data, n: int, steps: int, solver: str, batch_size: int, seed: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(originals, reconstructions), each (n, C, H, W) float in [0, 1] on CPU."""
    gen = torch.Generator(device=device).manual_seed(seed)
    origs, recs = [], []
    for start in progress(range(0, n, batch_size), desc="reconstruct", leave=False):
        x = data.__getitems__(list(range(start, min(n, start + batch_size))))["image"].to(device)
        origs.append(x.cpu())
        recs.append(tok.reconstruct(x, steps=steps, solver=solver, generator=gen).cpu())
    return torch.cat(origs), torch.cat(recs)
