"""Losses of Sorcen / MAGE / MAGE-C: masked token cross-entropy and the contrastive terms.

Contrastive losses gather keys from every rank with :func:`unissl.engine.dist.all_gather_with_grad`,
so negatives come from the global batch and gradients reach every rank's keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unissl.engine.dist import all_gather_with_grad, get_rank


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      label_smoothing: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy averaged over masked positions only.

    logits (B, N, K) over the K codes, targets (B, N) in [0, K), mask (B, N) bool.
    Smoothing as in MAGE: ``(1 - eps) * nll + eps * mean_k(-log p_k)``.
    """
    b, n, k = logits.shape
    per_pos = F.cross_entropy(logits.reshape(b * n, k).float(), targets.reshape(b * n),
                              label_smoothing=label_smoothing, reduction="none").view(b, n)  # (B, N)
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives: query i's positive is key i of this rank.

    queries (B, C) of this rank, keys (B, C) of this rank; both are L2-normalised here. With ``gather`` the
    keys of all ranks are concatenated (gradient-preserving), so query i of rank r is scored against
    ``W * B`` keys and its positive sits at index ``r * B + i``. Returns the mean over local queries.
    """
    q = F.normalize(queries.float(), dim=-1)  # (B, C)
    k = F.normalize(keys.float(), dim=-1)  # (B, C)
    offset = 0
    if gather:
        k = all_gather_with_grad(k)  # (W*B, C)
        offset = get_rank() * q.shape[0]
    logits = q @ k.T / temperature  # (B, W*B)
    target = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, target)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B views must pick its partner among all other 2WB - 1 views.

    z1, z2 (B, C) are projections of two augmented views of the same B images (row i of each pairs).
    """
    a = F.normalize(z1.float(), dim=-1)  # (B, C)
    b = F.normalize(z2.float(), dim=-1)  # (B, C)
    n = a.shape[0]
    offset = 0
    if gather:
        all_a, all_b = all_gather_with_grad(a), all_gather_with_grad(b)  # (W*B, C)
        offset = get_rank() * n
    else:
        all_a, all_b = a, b
    keys = torch.cat([all_a, all_b])  # (2WB, C): views 1 then views 2
    total = all_a.shape[0]
    idx = torch.arange(n, device=a.device) + offset  # global row of each local sample
    queries = torch.cat([a, b])  # (2B, C)
    logits = queries @ keys.T / temperature  # (2B, 2WB)
    self_col = torch.cat([idx, idx + total])  # a query must not match itself
    logits[torch.arange(2 * n, device=a.device), self_col] = float("-inf")
    target = torch.cat([idx + total, idx])  # view 1 -> its view 2 and back
    return F.cross_entropy(logits, target)


def uniformity_loss(features: torch.Tensor, gather: bool = True, diagonal: bool = False) -> torch.Tensor:
    """Mean squared cosine similarity between the pooled latents of *different* images.

    features (B, D); 0 for orthogonal features, 1 when all images collapse onto one direction. With
    ``diagonal`` the mean runs over all n^2 pairs including i = j (the released code's form: a constant
    1/n is added to the value, and the gradient scales by (n-1)/n).
    """
    f = F.normalize(features.float(), dim=-1)  # (B, D)
    if gather:
        f = all_gather_with_grad(f)  # (W*B, D)
    n = f.shape[0]
    if diagonal:
        return (f @ f.T).pow(2).mean()
    if n < 2:
        return f.sum() * 0.0
    sim = f @ f.T  # (n, n)
    off_diag = 1.0 - torch.eye(n, dtype=sim.dtype, device=f.device)
    return (sim.pow(2) * off_diag).sum() / (n * (n - 1))


@torch.no_grad()
def masked_top1(logits: torch.Tensor, targets: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Share of masked positions whose argmax code is the target: logits (B, N, K), targets/mask (B, N)."""
    hit = (logits.argmax(dim=-1) == targets) & token_mask
    return hit.sum().float() / token_mask.sum().clamp_min(1).float()
