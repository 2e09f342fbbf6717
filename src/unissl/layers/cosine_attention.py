"""Cosine-similarity self-attention: q and k are L2-normalised per head, logits scaled by a learned
per-head temperature (initialised to 10), with optional 2-D RoPE on the non-prefix tokens.

Normalising q and k bounds the attention logits, which keeps large flow-matching transformers stable
without a softmax temperature schedule (HDiT, RepTok's decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unissl.layers.rope import AxialRoPE2D, apply_rotary


class CosineAttention(nn.Module):
    """Multi-head self-attention with qk-normalisation; the output projection can start at zero."""

    def __init__(self, dim: int, head_dim: int, rope: bool = True, zero_init_out: bool = True,
                 init_scale: float = 10.0) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.n_heads = dim // head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.scale = nn.Parameter(torch.full((self.n_heads,), init_scale))
        self.rope = AxialRoPE2D(head_dim, self.n_heads) if rope else None
        self.out = nn.Linear(dim, dim, bias=False)
        if zero_init_out:
            nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, n_prefix: int = 0) -> torch.Tensor:
        """``x`` (B, N, D); ``pos`` (N - n_prefix, 2) positions of the non-prefix tokens -> (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, E)
        s = self.scale.clamp(min=1e-4).sqrt()[None, :, None, None]  # split the temperature over q and k
        q = F.normalize(q, dim=-1, eps=1e-6) * s
        k = F.normalize(k, dim=-1, eps=1e-6) * s
        if self.rope is not None and pos is not None:
            theta = self.rope(pos)  # (H, N - n_prefix, E // 4)
            q = torch.cat([q[:, :, :n_prefix], apply_rotary(q[:, :, n_prefix:], theta)], dim=2)
            k = torch.cat([k[:, :, :n_prefix], apply_rotary(k[:, :, n_prefix:], theta)], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, H, N, E)
        return self.out(y.transpose(1, 2).reshape(b, n, d))
