"""Frozen image tokenizers: the trainable VQ tokenizer and the taming/MAGE VQGAN loader.

``load_tokenizer(path)`` accepts

* a directory written by :meth:`VQTokenizer.save_pretrained` (``config.json`` with ``"format": "unissl-vq"``);
* a directory whose ``config.json`` has ``"format": "taming-vqgan"``, ``"checkpoint"`` (file name
  relative to the directory, or absolute) and optionally ``"config"`` (:class:`TamingConfig` fields);
* a taming ``.ckpt`` file directly (loaded with MAGE's ``mage-vqgan`` configuration).

Every tokenizer has ``encode(images (B,C,H,W) in [0,1]) -> int64 (B,h,w)``, ``decode(ids) -> images``,
``codebook_size``, ``grid``, ``image_size``, ``channels``, ``identity()`` and ``checksum()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unissl.errors import UnisslError
from unissl.tokenizers.base import Tokenizer, TokenizerBase
from unissl.tokenizers.method import VQTokenizerMethod
from unissl.tokenizers.quantize import QuantizerOutput, VectorQuantizer
from unissl.tokenizers.taming import (
    TAMING_FORMAT,
    TAMING_PRESETS,
    TamingConfig,
    TamingVQGAN,
    load_taming_checkpoint,
)
from unissl.tokenizers.vq import FORMAT, PRESETS, VQConfig, VQTokenizer, preset

__all__ = [
    "PRESETS", "TAMING_PRESETS", "QuantizerOutput", "TamingConfig", "TamingVQGAN", "Tokenizer", "TokenizerBase", "VQConfig",
    "VQTokenizer", "VQTokenizerMethod", "VectorQuantizer", "load_taming_checkpoint", "load_tokenizer", "preset",
]


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> TokenizerBase:
    """Load a frozen tokenizer (eval mode, no gradients) from a directory or a taming ``.ckpt`` file."""
    path = Path(path)
    if path.is_file():
        return load_taming_checkpoint(path, device=device)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UnisslError(f"tokenizer {path} not found (expected a directory with config.json or a taming .ckpt "
                          "file); train one with `unissl tokenizer train`")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnisslError(f"{cfg_path} is not valid JSON ({e}); re-save the tokenizer") from e
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == FORMAT:
        return VQTokenizer.from_pretrained(path, device=device)
    if fmt == TAMING_FORMAT:
        ckpt = meta.get("checkpoint")
        if not isinstance(ckpt, str):
            raise UnisslError(f"{cfg_path}: a taming-vqgan config needs \"checkpoint\": \"<file.ckpt>\"")
        try:
            cfg = TamingConfig(**meta["config"]) if "config" in meta else None
        except (TypeError, ValueError) as e:
            raise UnisslError(f"{cfg_path}: invalid taming config ({e})") from e
        return load_taming_checkpoint(path / ckpt, config=cfg, device=device)
    raise UnisslError(f"{cfg_path}: unknown tokenizer format {fmt!r}; expected {FORMAT!r} or {TAMING_FORMAT!r}")
