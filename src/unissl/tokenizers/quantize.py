"""Vector quantizer with two codebook-learning rules, dead-code restarts and usage statistics.

* ``kind="st"``: the codebook is an ``nn.Parameter`` learned by gradient descent with the VQ-VAE
  objective ``||sg(z) - e||^2 + beta * ||z - sg(e)||^2`` (codebook + commitment loss, beta 0.25);
  gradients reach the encoder through the straight-through estimator ``z + sg(e - z)``.
* ``kind="ema"``: the codebook is a buffer that tracks the running mean of the encoder outputs assigned
  to each code (exponential moving averages of counts and sums, Laplace-smoothed counts). Only the
  commitment term ``beta * ||z - sg(e)||^2`` is a loss.

With ``l2_norm=True`` (the default of every preset) both the encoder outputs and the codes are
L2-normalised before the nearest-neighbour search, so the lookup is by cosine similarity and the
quantized vectors live on the unit sphere (as in ViT-VQGAN / "improved VQGAN"). This keeps codes and
latents on the same scale, which is what keeps most of the codebook in use; the decoder then only ever
sees unit vectors.

Dead codes: every training forward ages all codes by one step and resets the age of the codes it used.
:meth:`VectorQuantizer.restart_dead_codes` (called after the optimizer step, see
:class:`unissl.tokenizers.method.VQTokenizerMethod`) re-initialises each code unused for ``dead_after``
steps from a random encoder output of the last training batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """What one quantizer forward returns."""

    z_q: torch.Tensor  # (B, D, h, w) quantized latents with straight-through gradients
    ids: torch.Tensor  # (B, h, w) int64 code indices
    loss: torch.Tensor  # scalar: codebook + commitment loss ("st") or commitment loss ("ema")
    perplexity: torch.Tensor  # scalar: exp(entropy) of this batch's code histogram
    usage: torch.Tensor  # scalar: fraction of codes used within the last `dead_after` steps (train) or in this batch (eval)


def _dist_ready() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def code_histogram(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts (K,) float of each code among ``ids`` (any shape, int64)."""
    return torch.bincount(ids.reshape(-1), minlength=codebook_size).float()


def perplexity_of(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a histogram (K,): 1 if one code is used, K if all are used uniformly."""
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over ``codebook_size`` codes of dimension ``dim``.

    Args:
        codebook_size: number of codes K.
        dim: code dimension D (channels of the latent map it quantizes).
        kind: ``"ema"`` (EMA codebook updates) or ``"st"`` (codebook learned by gradient, straight-through).
        l2_norm: compare and emit L2-normalised vectors (cosine lookup) instead of raw ones.
        beta: commitment weight.
        decay: EMA decay of the counts and sums (``kind="ema"`` only).
        dead_after: a code unused for this many training steps is restarted; 0 disables restarts.
    """
    code_age: torch.Tensor  # buffer
    codebook: torch.Tensor  # buffer
    ema_count: torch.Tensor  # buffer
    ema_sum: torch.Tensor  # buffer

    def __init__(self, codebook_size: int, dim: int, kind: str = "ema", l2_norm: bool = True,
                 beta: float = 0.25, decay: float = 0.99, dead_after: int = 50, eps: float = 1e-5) -> None:
        super().__init__()
        if kind not in ("ema", "st"):
            raise ValueError(f"quantizer kind must be 'ema' or 'st', got {kind!r}")
        self.codebook_size, self.dim, self.kind = codebook_size, dim, kind
        self.l2_norm, self.beta, self.decay, self.eps = l2_norm, beta, decay, eps
        self.dead_after = dead_after
        init = torch.randn(codebook_size, dim)  # (K, D)
        if l2_norm:
            init = F.normalize(init, dim=1)
        if kind == "st":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(codebook_size))  # (K,)
            self.register_buffer("ema_sum", init.clone())  # (K, D)
        # steps since each code was last used in training (starts "just used" to give a grace period)
        self.register_buffer("code_age", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        self._candidates: torch.Tensor | None = None  # (M, D) latents of the last training batch

    # ---------------------------------------------------------------- lookup
    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_norm else x

    def codes(self) -> torch.Tensor:
        """The effective code vectors (K, D) (normalised when ``l2_norm``)."""
        return self._prep(self.codebook)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index (N,) of the nearest code (squared Euclidean distance) for each row of ``z_flat`` (N, D)."""
        codes = self.codes().to(z_flat.dtype)  # (K, D)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code and is dropped
        dist = codes.pow(2).sum(1)[None, :] - 2.0 * z_flat @ codes.t()  # (N, K)
        return dist.argmin(dim=1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, h, w) for ``ids`` (B, h, w)."""
        return F.embedding(ids, self.codes()).permute(0, 3, 1, 2).contiguous()

    # ---------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` (B, D, h, w); in training mode also update the EMA codebook and code ages."""
        b, d, h, w = z.shape
        z_flat = self._prep(z.permute(0, 2, 3, 1).reshape(-1, d).float())  # (N, D), N = B*h*w
        with torch.no_grad():
            ids_flat = self.nearest(z_flat)  # (N,)
        codes = self.codes()  # (K, D), differentiable for "st"
        e = F.embedding(ids_flat, codes if self.kind == "st" else codes.detach())  # (N, D)
        commit = F.mse_loss(z_flat, e.detach())
        if self.kind == "st":
            loss = F.mse_loss(e, z_flat.detach()) + self.beta * commit
        else:
            loss = self.beta * commit
        z_q_flat = z_flat + (e - z_flat).detach()  # straight-through: value of e, gradient of z
        counts = code_histogram(ids_flat, self.codebook_size)  # (K,)
        if self.training:
            self._train_update(z_flat.detach(), ids_flat, counts)
            usage = (self.code_age < max(self.dead_after, 1)).float().mean()
        else:
            usage = (counts > 0).float().mean()
        z_q = z_q_flat.view(b, h, w, d).permute(0, 3, 1, 2).contiguous().to(z.dtype)
        return QuantizerOutput(z_q=z_q, ids=ids_flat.view(b, h, w), loss=loss,
                               perplexity=perplexity_of(counts), usage=usage)

    @torch.no_grad()
    def _train_update(self, z_flat: torch.Tensor, ids_flat: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA codebook step (``kind="ema"``), code ages, and restart candidates from this batch."""
        sums = None
        if self.kind == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, ids_flat, z_flat)  # (K, D)
        if _dist_ready():  # every rank sees the same statistics, so codebooks stay identical
            tdist.all_reduce(counts)
            if sums is not None:
                tdist.all_reduce(sums)
        if sums is not None:  # kind == "ema"
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            # Laplace smoothing keeps rarely used codes from dividing by ~0
            smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n  # (K,)
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.code_age.add_(1)
        self.code_age[counts > 0] = 0
        # keep a random subset of this batch's latents as restart candidates
        keep = torch.randperm(z_flat.shape[0], device=z_flat.device)[: self.codebook_size]
        self._candidates = z_flat[keep].clone()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-initialise codes unused for ``dead_after`` steps from random latents of the last batch.

        Returns the number of restarted codes. Call after the optimizer step (the "st" codebook is a
        parameter that the backward pass must not see modified).
        """
        if self.dead_after <= 0 or self._candidates is None:
            return 0
        dead = (self.code_age >= self.dead_after).nonzero().squeeze(1)  # (n_dead,)
        n_dead = int(dead.numel())
        if n_dead == 0:
            return 0
        cand = self._candidates  # (M, D)
        pick = torch.randint(0, cand.shape[0], (n_dead,), device=cand.device)
        new = cand[pick]
        if n_dead > cand.shape[0]:  # more dead codes than candidates: jitter the duplicates apart
            new = new + 1e-3 * torch.randn_like(new)
        new = self._prep(new).to(self.codebook.dtype)
        if _dist_ready():  # rank 0 decides; everyone copies
            tdist.broadcast(new, src=0)
        self.codebook.data[dead] = new
        if self.kind == "ema":
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = new
        self.code_age[dead] = 0
        return n_dead
