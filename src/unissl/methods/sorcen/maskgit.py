"""MaskGIT iterative decoding from all-[MASK] (MAGE's unconditional generation).

At step t of T every unknown position gets a sampled code; the ``N * cos(pi/2 * (t+1)/T)`` least
confident of the *newly* sampled positions are masked again, the rest become known. Confidence is
``log p(sampled) + tau_t * Gumbel`` with ``tau_t = choice_temperature * (1 - (t+1)/T)``, so early steps
choose more randomly. Known ids (given or revealed earlier) have infinite confidence: never re-masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unissl.config import arg
from unissl.errors import ConfigError
from unissl.methods.sorcen.model import SorcenModel
from unissl.utils.noise import gumbel_noise


@dataclass
class MaskGITConfig:
    """Decoding settings (MAGE's defaults)."""

    steps: int = arg(20, help="MaskGIT decoding steps T")
    choice_temperature: float = arg(6.0, help="Gumbel scale on the confidence, annealed as t*(1-(t+1)/T)")
    sample_temperature: float = arg(1.0, help="temperature of the per-position code sampling")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError("steps", f"must be >= 1, got {self.steps}")


def num_masked_after(step: int, steps: int, num_positions: int) -> int:
    """Positions left masked after 0-based ``step``: floor(N * cos(pi/2 * (step+1)/T)), 0 at the end."""
    return int(math.floor(num_positions * math.cos(math.pi / 2 * (step + 1) / steps)))


@torch.no_grad()
def maskgit_generate(model: SorcenModel, num_samples: int, cfg: MaskGITConfig | None = None,
                     init_ids: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, history: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Generate id maps (num_samples, h, w) with ``model`` in eval mode.

    ``init_ids`` (B, h, w) may fix some positions (anything other than [MASK] is known and kept); by
    default every position starts as [MASK]. If ``history`` is a list, the ids after every step are
    appended to it (for inspection and tests). ``generator`` (a CPU generator) makes the run reproducible.
    """
    cfg = cfg or MaskGITConfig()
    h, w = model.arch.grid
    n, mask_id = h * w, model.special.mask
    if device is None:
        device = model.decoder_pos.device
    if init_ids is None:
        ids = torch.full((num_samples, n), mask_id, dtype=torch.long, device=device)  # (B, N)
    else:
        ids = init_ids.reshape(init_ids.shape[0], -1).long().to(device)
    was_training = model.training
    model.eval()

    for t in range(cfg.steps):
        unknown = ids == mask_id  # (B, N)
        if not unknown.any():
            break
        logits = model.predict(ids).float() / cfg.sample_temperature  # (B, N, K)
        log_probs = logits.log_softmax(dim=-1)
        gumbel = gumbel_noise(log_probs.shape, device, generator)
        sampled = (log_probs + gumbel).argmax(dim=-1)  # (B, N) a draw from softmax(logits)
        sampled = torch.where(unknown, sampled, ids)
        chosen_logp = log_probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # (B, N)
        # Still-masked count: the cosine schedule, at least 0 and less than the currently unknown count.
        remaining = unknown.sum(dim=1, keepdim=True)  # (B, 1)
        target = num_masked_after(t, cfg.steps, n) if t < cfg.steps - 1 else 0
        keep_masked = torch.clamp(torch.full_like(remaining, target), max=remaining - 1).clamp(min=0)  # (B, 1)
        tau = cfg.choice_temperature * (1.0 - (t + 1) / cfg.steps)
        noise = gumbel_noise(chosen_logp.shape, device, generator)
        confidence = chosen_logp + tau * noise
        confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))  # known: never masked
        order = confidence.argsort(dim=1)  # least confident first
        rank = order.argsort(dim=1)  # (B, N)
        remask = rank < keep_masked  # (B, N), only unknown positions can have a finite low rank
        ids = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
        if history is not None:
            history.append(ids.view(-1, h, w).clone())
    model.train(was_training)
    return ids.view(-1, h, w)
