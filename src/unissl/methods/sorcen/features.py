"""Frozen Sorcen / MAGE features for evaluation (the linear-probe protocol's pooling).

``load_extractor(checkpoint, device)`` (registered as ``sorcen`` in :data:`unissl.eval.features.EXTRACTORS`)
returns a :class:`SorcenFeatures`: images are tokenized by the run's VQ tokenizer, encoded *without*
masking, and the image-position outputs (class slot excluded) after the final norm are averaged.
``sorcen-released:RUN`` (:func:`load_released_extractor`) pools as the released linear probe does: the
encoder's final norm is dropped, and a LayerNorm (no affine: the probe's BatchNorm + Linear absorb it)
follows the mean of the image positions. ``sorcen-blocks:RUN`` (:func:`load_blocks_extractor`) concatenates
that mean over every encoder block (each block's output through the final norm), as DINO's linear evaluation
concatenates its last blocks (docs/fidelity.md: the fast CPU setting). ``sorcen-grid:RUN``
(:func:`load_grid_extractor`) is this project's probe protocol, not the released one: every block's image
tokens (through the final norm) are average-pooled to a ``GRID_SIDE`` x ``GRID_SIDE`` grid of the token map
and concatenated, so the probe keeps a coarse layout that the mean throws away.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unissl.data.token_store import TokenStore
from unissl.errors import UnisslError
from unissl.methods.sorcen.model import SorcenModel
from unissl.methods.sorcen.run import load_model, load_run_tokenizer
from unissl.utils.io import sha256_file

POOLS = ("final-norm", "released", "blocks", "grid")

GRID_SIDE = 2  # grid cells per side: quadrants keep a centred object's coarse layout, at 4x the mean's width


def _every_block(model: SorcenModel, ids: torch.Tensor,
                 pool_block: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Unmasked encoder pass over ids; ``pool_block`` maps each block's image-position outputs after the final
    norm, (B, N, D), to (B, F); their float32 values are concatenated, first block first: (B, depth * F)."""
    x = model.embed(model.with_class_slot(ids.to(model.decoder_pos.device).long()))  # (B, 1+N, D)
    pooled = []
    for blk in model.blocks:
        x = blk(x)
        pooled.append(pool_block(model.norm(x)[:, 1:]).float())  # class slot dropped
    return torch.cat(pooled, dim=1)


def _grid_pool(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Image tokens (B, h*w, D) in raster order -> (B, GRID_SIDE**2 * D): the token map average-pooled to
    GRID_SIDE x GRID_SIDE cells, cell by cell in raster order, each cell's D values together. On an odd side
    (7 x 7 ids) adaptive pooling's cells share the middle row / column."""
    b, _, d = tokens.shape
    fmap = tokens.reshape(b, grid[0], grid[1], d).permute(0, 3, 1, 2)  # (B, D, h, w)
    cells = F.adaptive_avg_pool2d(fmap, (GRID_SIDE, GRID_SIDE))  # (B, D, S, S)
    return cells.permute(0, 2, 3, 1).flatten(1)  # (B, S*S*D)


def pooled_features(model: SorcenModel, ids: torch.Tensor, pool: str = "final-norm") -> torch.Tensor:
    """ids (B, h, w) -> (B, D) float32: the mean of the unmasked encoder's image-position outputs.

    ``final-norm`` pools after the encoder's final norm; ``released`` drops that norm and applies a LayerNorm
    (no affine) after the mean, as the released linear probe does; ``blocks`` returns (B, depth * D): the
    ``final-norm`` mean of every block's output, first block first (the last D columns equal ``final-norm``);
    ``grid`` returns (B, depth * GRID_SIDE**2 * D): every block's normed image tokens on their (h, w) map
    (``ids``' shape, or the model's grid for flat ids) average-pooled to GRID_SIDE x GRID_SIDE cells.
    The model is used as it is (no mode or ``requires_grad`` change), so online evaluation can call this on
    the model being trained.
    """
    device = model.decoder_pos.device
    if pool == "blocks":
        return _every_block(model, ids, lambda tokens: tokens.mean(dim=1))  # (B, depth * D)
    if pool == "grid":
        grid = (int(ids.shape[1]), int(ids.shape[2])) if ids.dim() == 3 else model.arch.grid
        return _every_block(model, ids, lambda tokens: _grid_pool(tokens, grid))  # (B, depth * S*S * D)
    if pool == "released":
        x = model.embed(model.with_class_slot(ids.to(device).long()))  # (B, 1+N, D)
        for blk in model.blocks:
            x = blk(x)  # no final norm
        pooled = x[:, 1:].mean(dim=1).float()  # (B, D)
        return F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)
    x = model.encode(ids.to(device).long())  # (B, 1+N, D) after the final norm
    return x[:, 1:].mean(dim=1).float()


class SorcenFeatures:
    """``features(images) -> (B, D)`` and ``features_from_ids(ids) -> (B, D)`` of a frozen encoder."""

    def __init__(self, model: SorcenModel, tokenizer: Any, name: str = "sorcen",
                 pool: str = "final-norm") -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.store_path: str | None = None  # the run's token store (set by load_extractor)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.input_channels: int | None = int(tokenizer.channels) if tokenizer is not None else None
        self.input_size: int | None = int(tokenizer.image_size) if tokenizer is not None else None
        self._name = name

    @torch.no_grad()
    def features_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> mean of the encoder's image-position outputs (B, D)."""
        return pooled_features(self.model, ids, self.pool)

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

    @torch.no_grad()
    def dataset_features(self, dataset: Any, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Features and labels of a whole split from the run's token store (the ids it trained on), or None.

        Used when the store holds this split of this very dataset (same fingerprint, same count) and was
        written by this extractor's tokenizer: no image is decoded or re-tokenized through a second
        resize path. Anything else (another dataset, no store) returns None and images are encoded.
        """
        if self.store_path is None:
            return None

        split = getattr(dataset, "split", None)
        meta_path = Path(self.store_path) / "meta.json"
        if split is None or not meta_path.is_file() or not hasattr(dataset, "fingerprint"):
            return None
        try:
            store = TokenStore(self.store_path, split)
        except UnisslError:
            return None
        fingerprints = (store.meta.get("dataset") or {}).get("fingerprints") or {}
        if fingerprints.get(split) != dataset.fingerprint() or len(store) != len(dataset):
            return None
        if self.tokenizer is not None:
            store.check_tokenizer(self.tokenizer)
        feats, labels = [], []
        for start in range(0, len(store), batch_size):
            batch = store.__getitems__(list(range(start, min(start + batch_size, len(store)))))
            feats.append(self.features_from_ids(batch["ids"]).cpu())
            labels.append(batch["label"])
        return torch.cat(feats), torch.cat(labels)


def load_extractor(checkpoint: str, device: torch.device | str = "cpu", pool: str = "final-norm") -> SorcenFeatures:
    """The ``sorcen`` feature extractor of a run directory (or one of its ``checkpoints/step_*`` dirs, or a
    saved Sorcen encoder)."""
    model, info = load_model(checkpoint, device)
    tokenizer = load_run_tokenizer(info, device)
    ck = Path(info["checkpoint"])
    tag = {"final-norm": "mean-image", "released": "released-prenorm-ln", "blocks": "mean-image-every-block",
           "grid": f"grid{GRID_SIDE}x{GRID_SIDE}-every-block"}[pool]
    name = f"sorcen({info['variant']},{ck.name},w={sha256_file(ck / 'model.safetensors')[:16]},pool={tag})"
    ext = SorcenFeatures(model, tokenizer, name, pool=pool)
    ext.store_path = info.get("tokens")
    return ext


def load_released_extractor(checkpoint: str, device: torch.device | str = "cpu") -> SorcenFeatures:
    """``sorcen-released``: the released linear probe's pooling (pre-norm mean + LayerNorm)."""
    return load_extractor(checkpoint, device, pool="released")


def load_blocks_extractor(checkpoint: str, device: torch.device | str = "cpu") -> SorcenFeatures:
    """``sorcen-blocks``: the image-position mean of every encoder block, concatenated (B, depth * D)."""
    return load_extractor(checkpoint, device, pool="blocks")


def load_grid_extractor(checkpoint: str, device: torch.device | str = "cpu") -> SorcenFeatures:
    """``sorcen-grid``: every encoder block's image tokens pooled to a GRID_SIDE x GRID_SIDE grid, concatenated
    (B, depth * GRID_SIDE**2 * D). This project's probe protocol; the released code mean-pools."""
    return load_extractor(checkpoint, device, pool="grid")
