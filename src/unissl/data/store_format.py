"""The on-disk format of token stores: name, version, id dtype, grid and checksum helpers."""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "unissl-token-store"
VERSION = 1


def id_dtype(codebook_size: int) -> np.dtype:
    """The smallest stored dtype for ids in ``[0, codebook_size)``: uint16 up to 65536 entries, else int32."""
    return np.dtype(np.uint16) if codebook_size <= 1 << 16 else np.dtype(np.int32)


def as_grid(grid: Any) -> tuple[int, int]:
    """An int or a pair -> ``(h, w)``."""
    if isinstance(grid, int):
        return (grid, grid)
    h, w = (int(g) for g in grid)
    return (h, w)


