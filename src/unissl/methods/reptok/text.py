"""Text conditioning for the RepTok token generator (the frozen text encoder is in :mod:`.text_encoder`).

* :class:`TextConditioner`: the noisy-token slot plus ``n_queries`` learnable query tokens attend with
  cross-attention to the (projected) text states; the updated slots join the time slot in the same
  MLP-Mixer as class conditioning. A learned null context stands for "no text" (CFG, 10% dropout).
* :class:`CaptionBank`: the frozen text states of all training captions, computed once and stored with
  the generator, so training never runs the text encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unissl.errors import UnisslError
from unissl.layers.cross_attention import CrossAttention
from unissl.methods.reptok.text_encoder import FrozenTextEncoder

Cond = dict[str, torch.Tensor]

# --------------------------------------------------------------------------------------------- conditioner
class CrossAttentionBlock(nn.Module):
    """Pre-LN residual cross-attention followed by a pre-LN residual MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), ctx, mask)
        return x + self.mlp(self.norm2(x))


class TextConditioner(nn.Module):
    """Slots ``[z_t slot, q_1..q_K]`` after cross-attending to the text; a learned null context for CFG.

    The condition is ``{"text": (B, L, H), "text_mask": (B, L) bool, "null": (B,) bool}``; rows with
    ``null`` set ignore their text and see only the learned null context.
    """

    def __init__(self, dim: int, text_dim: int, n_queries: int = 4, depth: int = 2, heads: int = 4):
        super().__init__()
        self.n_cond_slots = n_queries
        self.queries = nn.Parameter(torch.randn(1, n_queries, dim) * 0.02)
        self.ctx_norm = nn.LayerNorm(text_dim)
        self.ctx_proj = nn.Linear(text_dim, dim)
        self.null_context = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # "no text", in projected space
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads) for _ in range(depth))

    def context(self, cond: Cond) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected context (B, L, D) and key mask (B, L), with null rows replaced by the null context."""
        ctx = self.ctx_proj(self.ctx_norm(cond["text"]))  # (B, L, D)
        null = cond["null"].bool()  # (B,)
        ctx = torch.where(null[:, None, None], self.null_context.to(ctx.dtype), ctx)
        only_first = torch.zeros_like(cond["text_mask"], dtype=torch.bool)
        only_first[:, 0] = True
        mask = torch.where(null[:, None], only_first, cond["text_mask"].bool())  # (B, L)
        return ctx, mask

    def slots(self, x_slot: torch.Tensor, cond: Cond) -> torch.Tensor:
        ctx, mask = self.context(cond)
        h = torch.cat([x_slot, self.queries.expand(x_slot.shape[0], -1, -1).to(x_slot.dtype)], dim=1)  # (B, 1+K, D)
        for block in self.blocks:
            h = block(h, ctx.to(h.dtype), mask)
        return h

    def null(self, cond: Cond) -> Cond:
        return {**cond, "null": torch.ones_like(cond["null"], dtype=torch.bool)}

    def drop(self, cond: Cond, p: float) -> Cond:
        dropped = torch.rand(cond["null"].shape, device=cond["null"].device) < p
        return {**cond, "null": cond["null"].bool() | dropped}


def text_condition(states: torch.Tensor, mask: torch.Tensor) -> Cond:
    """A (non-null) text condition from encoder outputs (B, L, H) and (B, L)."""
    return {"text": states.float(), "text_mask": mask.bool(),
            "null": torch.zeros(states.shape[0], dtype=torch.bool, device=states.device)}


# --------------------------------------------------------------------------------------------- caption bank
class CaptionBank(nn.Module):
    """Frozen text states of the training captions, and per class the indices of its captions.

    Buffers (saved with the generator): ``states`` (N, L, H), ``mask`` (N, L) bool, ``table`` (C, T) int64
    (caption ``table[c, j]`` is the j-th training caption of class c).
    """
    states: torch.Tensor  # buffer
    mask: torch.Tensor  # buffer
    table: torch.Tensor  # buffer

    def __init__(self, states: torch.Tensor, mask: torch.Tensor, table: torch.Tensor):
        super().__init__()
        self.register_buffer("states", states.float())
        self.register_buffer("mask", mask.bool())
        self.register_buffer("table", table.long())

    @classmethod
    def empty(cls, text_dim: int) -> CaptionBank:
        return cls(torch.zeros(0, 1, text_dim), torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, 1, dtype=torch.long))

    @classmethod
    def build(cls, encoder: FrozenTextEncoder, captions: Sequence[Sequence[str]], batch_size: int = 64) -> CaptionBank:
        """``captions[c]`` are the training captions of class c (the same number for every class)."""
        per_class = {len(c) for c in captions}
        if len(per_class) != 1 or 0 in per_class:
            raise UnisslError("every class needs the same, non-zero number of training captions")
        flat = [s for c in captions for s in c]
        parts = [encoder.encode(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
        length = max(s.shape[1] for s, _ in parts)
        states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s, _ in parts]).cpu()  # (N, L, H)
        mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in parts]).cpu()  # (N, L)
        table = torch.arange(len(flat)).view(len(captions), -1)  # (C, T)
        return cls(states, mask, table)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str = "captions.") -> CaptionBank:
        """An empty-shaped bank matching the buffers in a saved state dict (filled by load_state_dict)."""
        try:
            return cls(state[prefix + "states"], state[prefix + "mask"], state[prefix + "table"])
        except KeyError as e:
            raise UnisslError(f"the generator weights lack the caption bank entry {e}; re-export it") from e

    def sample_for_labels(self, labels: torch.Tensor) -> Cond:
        """One random training caption per label (B,) -> a text condition."""
        if self.table.numel() == 0:
            raise UnisslError("the generator has an empty caption bank; build it with CaptionBank.build")
        j = torch.randint(self.table.shape[1], labels.shape, device=labels.device)
        idx = self.table[labels, j]  # (B,)
        return text_condition(self.states[idx], self.mask[idx])
