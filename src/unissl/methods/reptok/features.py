"""The ``reptok`` feature extractor for the evaluation suite: an image's RepTok token z.

``load_extractor("path/to/tokenizer", device)`` (registry name ``reptok`` in
:data:`unissl.eval.features.EXTRACTORS`) returns an object with ``features(images) -> z (B, D)`` and
``identity()``; ``input_size`` / ``input_channels`` tell the evaluation code what images the tokenizer takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unissl.errors import UnisslError
from unissl.methods.reptok.tokenizer import WEIGHTS_FILE, RepTokTokenizer
from unissl.utils.io import sha256_file


class RepTokExtractor:
    """Frozen RepTok tokenizer as a feature extractor: features = the adapted SSL token z."""

    def __init__(self, tokenizer: RepTokTokenizer, path: str | Path, device: torch.device) -> None:
        self.tokenizer = tokenizer.to(device).eval()
        self.device = device
        self.path = Path(path)
        self.input_size: int | None = tokenizer.cfg.image_size
        self.input_channels: int | None = tokenizer.cfg.channels
        self._identity = f"reptok({self.path.resolve()},{sha256_file(self.path / WEIGHTS_FILE)[:16]})"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> tokens z (B, D)."""
        return self.tokenizer.encode(images.to(self.device).float())

    def identity(self) -> str:
        """Tokenizer directory and weights hash (the feature cache key)."""
        return self._identity


def load_extractor(checkpoint: str | None, device: torch.device) -> RepTokExtractor:
    """Loader for ``reptok:<tokenizer dir>`` (the ``--out`` of ``unissl train reptok-tokenizer``)."""
    if not checkpoint:
        raise UnisslError("extractor 'reptok' needs a tokenizer directory: use 'reptok:DIR' with the DIR written by "
                          "`unissl train reptok-tokenizer --out DIR`")
    tok = RepTokTokenizer.from_pretrained(checkpoint, device=device)
    return RepTokExtractor(tok, checkpoint, device)
