"""Frozen Sorcen / MAGE features for evaluation (the linear-probe protocol's pooling).

``load_extractor(checkpoint, device)`` (registered as ``sorcen`` in :data:`unissl.eval.features.EXTRACTORS`)
returns a :class:`SorcenFeatures`: images are tokenized by the run's VQ tokenizer, encoded *without*
masking, and the image-position outputs (class slot excluded) after the final norm are averaged.
``sorcen-released:RUN`` (:func:`load_released_extractor`) pools as the released linear probe does: the
encoder's final norm is dropped, and a LayerNorm (no affine: the probe's BatchNorm + Linear absorb it)
follows the mean of the image positions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unissl.methods.sorcen.model import SorcenModel


class SorcenFeatures:
    """``features(images) -> (B, D)`` and ``features_from_ids(ids) -> (B, D)`` of a frozen encoder."""

    def __init__(self, model: SorcenModel, tokenizer: Any, name: str = "sorcen",
                 pool: str = "final-norm") -> None:
        if pool not in ("final-norm", "released"):
            raise ValueError(f"pool must be 'final-norm' or 'released', got {pool!r}")
        self.pool = pool
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.input_channels: int | None = int(tokenizer.channels) if tokenizer is not None else None
        self.input_size: int | None = int(tokenizer.image_size) if tokenizer is not None else None
        self._name = name

    @torch.no_grad()
    def features_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> mean of the encoder's image-position outputs (B, D)."""
        device = self.model.decoder_pos.device
        if self.pool == "released":
            x = self.model.embed(self.model.with_class_slot(ids.to(device).long()))  # (B, 1+N, D)
            for blk in self.model.blocks:
                x = blk(x)  # no final norm
            pooled = x[:, 1:].mean(dim=1).float()  # (B, D)
            return F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)
        x = self.model.encode(ids.to(device).long())  # (B, 1+N, D) after the final norm
        return x[:, 1:].mean(dim=1).float()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] -> (B, D): tokenize with the run's VQ tokenizer, then encode."""
        if self.tokenizer is None:
            raise RuntimeError("this extractor was built without a tokenizer; use features_from_ids")
        device = self.model.decoder_pos.device
        ids = self.tokenizer.encode(images.to(device).float())  # (B, h, w)
        return self.features_from_ids(ids)

    def identity(self) -> str:
        return self._name


def _weights_digest(path: Path) -> str:
    """A short sha256 of a checkpoint's model weights file."""
    h = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def load_extractor(checkpoint: str, device: torch.device | str = "cpu", pool: str = "final-norm") -> SorcenFeatures:
    """The ``sorcen`` feature extractor of a run directory (or one of its ``checkpoints/step_*`` dirs)."""
    from unissl.methods.sorcen.run import load_method, load_run_tokenizer

    method, info = load_method(checkpoint, device)
    tokenizer = load_run_tokenizer(info, device)
    ck = Path(info["checkpoint"])
    tag = "mean-image" if pool == "final-norm" else "released-prenorm-ln"
    name = f"sorcen({info['variant']},{ck.name},w={_weights_digest(ck)},pool={tag})"
    return SorcenFeatures(method.model, tokenizer, name, pool=pool)


def load_released_extractor(checkpoint: str, device: torch.device | str = "cpu") -> SorcenFeatures:
    """``sorcen-released``: the released linear probe's pooling (pre-norm mean + LayerNorm)."""
    return load_extractor(checkpoint, device, pool="released")
