"""What every frozen image tokenizer shares: input validation, identity and checksum.

A tokenizer maps images (B, C, H, W) in [0, 1] to int64 ids (B, h, w) in [0, K) and back. Subclasses
set ``codebook_size``, ``grid``, ``image_size`` and ``channels`` and implement ``_encode`` / ``_decode``;
:meth:`TokenizerBase.encode` / :meth:`TokenizerBase.decode` validate the inputs (raising
:class:`~unissl.errors.UnisslError` with a one-line fix) and run without gradients.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from unissl.errors import UnisslError


def sha256_state_dict(state: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@runtime_checkable
class Tokenizer(Protocol):
    """What unissl needs from a VQ tokenizer, the one description of it (``VQTokenizer``, the taming VQGAN and
    any user tokenizer satisfy it): the token store writer, MAGE-C's online crops, samples and evaluation."""

    codebook_size: int
    grid: tuple[int, int]  # (h, w) ids per image
    image_size: int  # side of the square images it encodes
    channels: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> ids (B, h, w) int64."""
        ...

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, h, w) -> images (B, C, H, W) in [0, 1]."""
        ...


class TokenizerBase(nn.Module):
    """Common interface of :class:`~unissl.tokenizers.vq.VQTokenizer` and the taming VQGAN."""

    kind: str = "base"
    codebook_size: int
    grid: tuple[int, int]
    image_size: int
    channels: int

    def __init__(self) -> None:
        super().__init__()
        self._weights_file: Path | None = None  # set by loaders: the file the weights came from
        self._weights_sha: str | None = None

    # ----------------------------------------------------------- subclass hooks
    def _encode(self, images: torch.Tensor) -> torch.Tensor:  # (B,C,H,W) -> (B,h,w) int64
        raise NotImplementedError

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:  # (B,h,w) -> (B,C,H,W) unclamped
        raise NotImplementedError

    def config_dict(self) -> dict[str, Any]:
        """The architecture hyper-parameters (JSON-serialisable)."""
        raise NotImplementedError

    # ----------------------------------------------------------- validation
    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise :class:`UnisslError` unless ``images`` is a float (B, C, H, W) batch this tokenizer accepts."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise UnisslError(f"{what}: expected a float tensor (B, C, H, W) in [0, 1], got {kind}; "
                              "convert with images.float() / 255")
        c, s = self.channels, self.image_size
        if images.ndim != 4:
            raise UnisslError(f"{what}: expected a batch (B, {c}, {s}, {s}), got a {images.ndim}-D tensor of shape "
                              f"{tuple(images.shape)}" + ("; add the batch dimension with images[None]"
                                                         if images.ndim == 3 else ""))
        if images.shape[1] != c or images.shape[2] != s or images.shape[3] != s:
            raise UnisslError(f"{what}: expected shape (B, {c}, {s}, {s}) for this tokenizer, got "
                              f"{tuple(images.shape)}; resize the dataset (image_size={s}) or use a "
                              f"{images.shape[1]}-channel tokenizer")

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise :class:`UnisslError` unless ``ids`` is an int64 (B, h, w) grid with values in [0, K)."""
        h, w = self.grid
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            kind = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise UnisslError(f"token ids: expected an int64 tensor (B, {h}, {w}), got {kind}; "
                              "convert with ids.long()")
        if ids.ndim != 3 or tuple(ids.shape[1:]) != (h, w):
            raise UnisslError(f"token ids: expected shape (B, {h}, {w}) for this tokenizer, got "
                              f"{tuple(ids.shape)}; were they made by a different tokenizer?")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise UnisslError(f"token ids: values must lie in [0, {self.codebook_size}), got range "
                              f"[{int(ids.min())}, {int(ids.max())}]; strip [MASK]/class ids before decoding")

    # ----------------------------------------------------------- public API
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """int64 ids (B, h, w) of ``images`` (B, C, H, W) in [0, 1]."""
        self.check_images(images)
        dev = next(self.parameters()).device
        return self._encode(images.to(dev))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from int64 ``ids`` (B, h, w)."""
        self.check_ids(ids)
        dev = next(self.parameters()).device
        return self._decode(ids.to(dev)).clamp(0.0, 1.0)

    def checksum(self) -> str:
        """sha256 of the weights file this tokenizer was loaded from, else of its current state dict."""
        if self._weights_sha is not None:
            return self._weights_sha
        return sha256_state_dict(self.state_dict())

    def identity(self) -> dict[str, Any]:
        """What a token store records about the tokenizer that made it."""
        return {
            "kind": self.kind,
            "config": self.config_dict(),
            "codebook_size": self.codebook_size,
            "grid": list(self.grid),
            "image_size": self.image_size,
            "channels": self.channels,
            "checksum": self.checksum(),
            "path": str(self._weights_file) if self._weights_file is not None else None,
        }
