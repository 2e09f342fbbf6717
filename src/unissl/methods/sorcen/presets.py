"""Architecture presets of the Sorcen encoder-decoder, in one explicit registry.

``codebook_size`` and ``grid`` of a preset are the defaults for building a model without data; when
training on a token store they are replaced by the store's values (see :func:`arch_for_store`).
``vit_b`` / ``vit_l`` are MAGE's ViT-B / ViT-L (VQGAN with 1024 codes, 16 x 16 ids per 256 px image).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from unissl.errors import UnisslError


@dataclass(frozen=True)
class SorcenArch:
    """Shapes of the token encoder-decoder and of the Echo-Contrast heads."""

    codebook_size: int  # K: ids 0..K-1 are VQ codes
    grid: tuple[int, int]  # (h, w) of the id map; N = h * w image positions
    dim: int  # encoder width
    depth: int  # encoder blocks
    heads: int  # encoder attention heads
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # embedding, attention-weight and projection dropout
    proj_hidden: int = 4096  # projector: dim -> proj_hidden -> BN -> ReLU -> proj_dim
    proj_dim: int = 512
    pred_hidden: int = 2048  # predictor: proj_dim -> pred_hidden -> BN -> ReLU -> proj_dim

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be two positive ints, got {self.grid}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"widths {self.dim}/{self.decoder_dim} must divide by heads "
                             f"{self.heads}/{self.decoder_heads}")

    @property
    def num_positions(self) -> int:
        """N = h * w image positions (the class slot comes on top)."""
        return self.grid[0] * self.grid[1]


# The `small` preset, named so that `fmnist` can derive from it (its comment is in PRESETS).
_SMALL = SorcenArch(codebook_size=512, grid=(7, 7), dim=96, depth=4, heads=4, decoder_dim=96, decoder_depth=2,
                    decoder_heads=4, dropout=0.0, proj_hidden=256, proj_dim=96, pred_hidden=256)

PRESETS: dict[str, SorcenArch] = {
    # Unit tests: a few thousand parameters.
    "tiny": SorcenArch(codebook_size=16, grid=(4, 4), dim=32, depth=2, heads=2, decoder_dim=32,
                       decoder_depth=1, decoder_heads=2, proj_hidden=64, proj_dim=32, pred_hidden=64),
    # CPU runs on Fashion-MNIST / digits token stores (minutes on two cores). No dropout: the runs are
    # short (about one epoch), and on CPU the dropout masks cost a third of the step time.
    "small": _SMALL,
    # 28 x 28 images (7 x 7 ids) within a CPU budget: `small` with a one-block decoder. Chosen by measurement
    # (benchmarks/sweeps/, docs/results.md): the step is 10% cheaper and the probe is no worse per epoch, so
    # more epochs fit 15 CPU minutes; deeper (6) or wider (128) encoders lose at that budget.
    "fmnist": dataclasses.replace(_SMALL, decoder_depth=1),
    # MAGE / Sorcen ViT-B: encoder 12 x 768 (12 heads), decoder 8 x 768 (16 heads).
    "vit_b": SorcenArch(codebook_size=1024, grid=(16, 16), dim=768, depth=12, heads=12, decoder_dim=768,
                        decoder_depth=8, decoder_heads=16),
    # MAGE ViT-L: encoder 24 x 1024 (16 heads), decoder 8 x 1024 (16 heads).
    "vit_l": SorcenArch(codebook_size=1024, grid=(16, 16), dim=1024, depth=24, heads=16, decoder_dim=1024,
                        decoder_depth=8, decoder_heads=16),
}


def get_preset(name: str) -> SorcenArch:
    """The preset called ``name``, or a one-line error listing the valid names."""
    if name not in PRESETS:
        raise UnisslError(f"unknown Sorcen preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def arch_for_store(name: str, codebook_size: int, grid: tuple[int, int]) -> SorcenArch:
    """Preset ``name`` with the vocabulary and grid of the token store it will train on."""
    return dataclasses.replace(get_preset(name), codebook_size=int(codebook_size),
                               grid=(int(grid[0]), int(grid[1])))
