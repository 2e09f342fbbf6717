"""The MAGE / Sorcen token encoder-decoder: ids in, code logits out.

Vocabulary: ids ``0..K-1`` are VQ codes, ``K`` is [MASK] and ``K+1`` the image-level class slot that is
prepended to every sequence (:class:`SpecialIds`). The encoder embeds ids (word + learned position ->
LayerNorm -> dropout), sees only the kept tokens, and ends in a LayerNorm. The decoder maps to its width,
rebuilds the full sequence by filling every masked or dropped slot with the projected class-slot output
("pad with class token"), adds a learned position embedding and predicts the codes with a head tied to
the (detached) word embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unissl.layers.vit import Block, init_vit_weights
from unissl.methods.sorcen.masking import TokenMasking
from unissl.methods.sorcen.presets import SorcenArch


@dataclass(frozen=True)
class SpecialIds:
    """Ids beyond the K codes, derived from K."""

    codebook_size: int

    @property
    def mask(self) -> int:
        """[MASK]: a masked-but-kept position."""
        return self.codebook_size

    @property
    def cls(self) -> int:
        """The class slot prepended to every sequence."""
        return self.codebook_size + 1

    @property
    def vocab_size(self) -> int:
        """Rows of the word embedding: K codes + [MASK] + class."""
        return self.codebook_size + 2


class TokenEmbedding(nn.Module):
    """word embedding + learned position embedding -> LayerNorm -> dropout (MAGE's BERT-style embedding)."""

    def __init__(self, vocab_size: int, dim: int, length: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.word.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor, word_override: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, L) with L <= length -> (B, L, D).

        ``word_override`` (B, D) or (D,) replaces the word embedding of position 0 (the class slot).
        """
        x = self.word(ids)  # (B, L, D)
        if word_override is not None:
            slot = word_override.to(x.dtype).expand(x.shape[0], x.shape[-1]).unsqueeze(1)  # (B, 1, D)
            x = torch.cat([slot, x[:, 1:]], dim=1)
        x = x + self.position.weight[: ids.shape[1]]  # (B, L, D)
        return self.dropout(self.norm(x))


class TiedCodeHead(nn.Module):
    """Linear -> GELU -> LayerNorm, then logits = h @ E[:K]^T + b with E the detached word embeddings.

    The LayerNorm's eps is 1e-5 (``nn.LayerNorm``'s default), as in MAGE's and LEASE's ``MlmLayer``; every other
    norm of the model uses 1e-6. eps is not saved, so models saved with the former 1e-6 load unchanged.
    """

    def __init__(self, in_dim: int, emb_dim: int, codebook_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, emb_dim)
        self.norm = nn.LayerNorm(emb_dim, eps=1e-5)
        self.bias = nn.Parameter(torch.zeros(codebook_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """x (B, L, D_dec), word_embeddings (V, D) -> logits (B, L, K)."""
        h = self.norm(F.gelu(self.fc(x)))  # (B, L, D)
        codes = word_embeddings[: self.bias.shape[0]].detach()  # (K, D): the head trains, the table does not
        return h @ codes.T + self.bias


class SorcenModel(nn.Module):
    """Token encoder + decoder + tied head. ``arch`` gives the shapes (see :mod:`.presets`)."""

    def __init__(self, arch: SorcenArch) -> None:
        super().__init__()
        self.arch = arch
        self.special = SpecialIds(arch.codebook_size)
        n, p = arch.num_positions, arch.dropout
        self.embed = TokenEmbedding(self.special.vocab_size, arch.dim, 1 + n, dropout=p)
        self.blocks = nn.ModuleList(
            [Block(arch.dim, arch.heads, arch.mlp_ratio, drop=p, attn_drop=p) for _ in range(arch.depth)])
        self.norm = nn.LayerNorm(arch.dim, eps=1e-6)
        self.decoder_embed = nn.Linear(arch.dim, arch.decoder_dim)
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + n, arch.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            [Block(arch.decoder_dim, arch.decoder_heads, arch.mlp_ratio, drop=p, attn_drop=p)
             for _ in range(arch.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(arch.decoder_dim, eps=1e-6)
        self.head = TiedCodeHead(arch.decoder_dim, arch.dim, arch.codebook_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # Linear layers: Xavier-uniform, zero bias; LayerNorms: identity (JAX ViT / MAE convention).
        self.apply(init_vit_weights)
        # Embeddings and the decoder's position table: N(0, 0.02) as BERT / MAGE do.
        nn.init.normal_(self.embed.word.weight, std=0.02)
        nn.init.normal_(self.embed.position.weight, std=0.02)
        nn.init.normal_(self.decoder_pos, std=0.02)

    # ---------------------------------------------------------------- helpers
    def with_class_slot(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) or (B, N) -> (B, 1 + N) with the class id prepended."""
        flat = ids.reshape(ids.shape[0], -1)  # (B, N)
        cls = torch.full((flat.shape[0], 1), self.special.cls, dtype=flat.dtype, device=flat.device)
        return torch.cat([cls, flat], dim=1)

    def run_encoder(self, x: torch.Tensor, blocks: nn.ModuleList | None = None) -> torch.Tensor:
        """Embedded tokens (B, L, D) through ``blocks`` (default: the encoder's) and the final norm."""
        for blk in self.blocks if blocks is None else blocks:
            x = blk(x)
        return self.norm(x)

    # ---------------------------------------------------------------- encoder
    def encode(self, ids: torch.Tensor, class_embedding_override: torch.Tensor | None = None) -> torch.Tensor:
        """Encode full id maps without dropping: ids (B, h, w) or (B, N) -> (B, 1 + N, D) after the final norm.

        Position 0 is the class slot; ``class_embedding_override`` (B, D) or (D,) replaces its input word
        embedding (position embedding, LayerNorm and dropout still apply). Ids may contain [MASK].
        """
        x = self.embed(self.with_class_slot(ids), word_override=class_embedding_override)  # (B, 1+N, D)
        return self.run_encoder(x)

    def encode_masked(self, ids: torch.Tensor, masking: TokenMasking) -> torch.Tensor:
        """Replace masked ids by [MASK], drop the dropped ones, encode: -> (B, 1 + N_keep, D)."""
        flat = ids.reshape(ids.shape[0], -1)  # (B, N)
        masked = torch.where(masking.token_mask, torch.full_like(flat, self.special.mask), flat)
        x = self.embed(self.with_class_slot(masked))  # (B, 1+N, D)
        keep = torch.cat([torch.zeros_like(masking.keep_index[:, :1]), masking.keep_index + 1], dim=1)
        x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, 1+N_keep, D)
        return self.run_encoder(x)

    # ---------------------------------------------------------------- decoder
    def decode(self, latent: torch.Tensor, token_mask: torch.Tensor,
               keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output -> code logits (B, N, K) at the image positions.

        latent (B, 1 + N_keep, D); keep_index (B, N_keep) positions of the kept tokens (None: nothing was
        dropped); token_mask (B, N) positions whose input was masked or dropped. Every such slot is filled
        with the projected class-slot output before the decoder blocks.
        """
        x = self.decoder_embed(latent)  # (B, 1+N_keep, Dd)
        b, n = token_mask.shape
        pad = x[:, :1].expand(b, 1 + n, x.shape[-1])  # (B, 1+N, Dd)
        if keep_index is None:
            full = x
        else:
            index = (keep_index + 1).unsqueeze(-1).expand(-1, -1, x.shape[-1])  # (B, N_keep, Dd)
            full = pad.scatter(1, index, x[:, 1:])  # (B, 1+N, Dd)
        visible = torch.cat([torch.ones_like(token_mask[:, :1]), ~token_mask], dim=1)  # (B, 1+N)
        x = torch.where(visible.unsqueeze(-1), full, pad) + self.decoder_pos
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.head(x[:, 1:], self.embed.word.weight)  # (B, N, K)

    def forward(self, ids: torch.Tensor, masking: TokenMasking) -> tuple[torch.Tensor, torch.Tensor]:
        """One masked pass: -> (latent (B, 1+N_keep, D), logits (B, N, K))."""
        latent = self.encode_masked(ids, masking)
        return latent, self.decode(latent, masking.token_mask, masking.keep_index)

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Code logits (B, N, K) for ids (B, h, w) or (B, N) in which unknown positions hold [MASK].

        Nothing is dropped: the encoder sees every position, as in MAGE's iterative decoding.
        """
        flat = ids.reshape(ids.shape[0], -1)  # (B, N)
        return self.decode(self.encode(flat), flat == self.special.mask)
