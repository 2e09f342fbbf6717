"""A saved Sorcen / MAGE encoder: the trained token encoder-decoder with the VQ tokenizer its ids come from.

A ``unissl train sorcen`` run directory is a training record (checkpoints with optimizer state, a
``sorcen.json`` that names the token store and tokenizer by the paths training was given). A saved encoder
is what travels: a directory in :class:`unissl.utils.hub.PretrainedMixin`'s convention (``config.json`` with
the architecture, variant and classes; ``model.safetensors`` with the :class:`SorcenModel` weights; a model
card) holding its VQ tokenizer inside (``tokenizer/``, the tokenizer's own saved format). Every reader of a
run accepts it too (``unissl.load_sorcen``, the ``sorcen`` feature extractor, ``sample sorcen``, RepTok's
Sorcen encoder), and a RepTok tokenizer over a Sorcen encoder saves one inside itself.

    PretrainedSorcen.from_run("runs/sorcen").save_pretrained("sorcen-encoder")   # or python -m unissl.utils.upgrade
    enc = PretrainedSorcen.from_pretrained("sorcen-encoder")                     # or a hub repo id
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unissl.errors import UnisslError
from unissl.methods.sorcen.model import SorcenModel
from unissl.methods.sorcen.presets import SorcenArch
from unissl.tokenizers import load_tokenizer
from unissl.utils.hub import CONFIG_FILE, WEIGHTS_FILE, PretrainedMixin, frozen_dir, read_saved_config

FORMAT = "unissl-sorcen-encoder"


def arch_from_dict(raw: dict[str, Any], where: Path) -> SorcenArch:
    """A :class:`SorcenArch` from its JSON form (``grid`` as a list); one line when it does not fit."""
    arch = dict(raw)
    arch["grid"] = tuple(arch.get("grid", ()))
    try:
        return SorcenArch(**arch)
    except (TypeError, ValueError) as e:
        raise UnisslError(f"{where}: invalid arch ({e}); the file does not come from this unissl version") from None


class PretrainedSorcen(nn.Module, PretrainedMixin):
    """``model`` (:class:`SorcenModel`, frozen) + ``tokenizer`` (its VQ tokenizer) + what the run recorded."""

    FORMAT = FORMAT
    WHAT = "saved Sorcen encoder"
    MADE_BY = ("PretrainedSorcen.save_pretrained (python -m unissl.utils.upgrade RUN_DIR OUT turns a "
               "`unissl train sorcen` run into one)")
    CARD_TITLE = "unissl Sorcen encoder (masked token modelling + Echo Contrast)"

    def __init__(self, model: SorcenModel, tokenizer: Any, variant: str = "sorcen", num_classes: int = 0,
                 classes: list[str] | None = None, loss: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer  # a frozen VQ / taming tokenizer: saved as its own directory, not in our weights
        self.variant, self.num_classes = variant, num_classes
        self.classes = list(classes or [])
        self.loss = dict(loss or {})

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> PretrainedSorcen:
        """The encoder of a ``unissl train sorcen`` run (its latest checkpoint, or the one given)."""
        from unissl.methods.sorcen.run import load_model, load_run_tokenizer

        model, info = load_model(run_dir, device)
        return cls(model, load_run_tokenizer(info, device), str(info["variant"]), int(info.get("num_classes", 0)),
                   list(info.get("classes") or []), dict(info.get("loss") or {}))

    @classmethod
    def from_encoder(cls, encoder: Any) -> PretrainedSorcen:
        """From RepTok's Sorcen adapter (its frozen ``backbone`` and ``vq``), with what its source recorded."""
        info: dict[str, Any] = {}
        try:
            from unissl.methods.sorcen.run import read_run_info

            info = read_run_info(encoder.path)
        except UnisslError:
            pass  # the adapter's source moved since it was loaded: the weights in memory are what counts
        return cls(encoder.backbone, encoder.vq, str(info.get("variant", "sorcen")), int(info.get("num_classes", 0)),
                   list(info.get("classes") or []), dict(info.get("loss") or {}))

    # ------------------------------------------------------------------ the saved format
    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def pretrained_config(self) -> dict[str, Any]:
        return {"arch": dataclasses.asdict(self.model.arch), "variant": self.variant,
                "num_classes": self.num_classes, "classes": self.classes, "loss": self.loss}

    def save_frozen_parts(self, directory: Path) -> dict[str, Any]:
        if not hasattr(self.tokenizer, "save_pretrained"):
            raise UnisslError(f"a {type(self.tokenizer).__name__} tokenizer cannot be saved inside a Sorcen encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        return {"tokenizer": {"dir": "tokenizer", "checksum": str(self.tokenizer.checksum())}}

    @classmethod
    def build_pretrained(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], directory: Path,
                         **kwargs: Any) -> PretrainedSorcen:
        info = read_info(directory, meta)
        model = SorcenModel(info["arch"])
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UnisslError(f"{directory / WEIGHTS_FILE} does not match {directory / CONFIG_FILE} "
                              f"({str(e).splitlines()[0]}); save the encoder again") from None
        tokenizer = load_tokenizer(info["tokenizer"]) if info["tokenizer"] else None
        if tokenizer is None:
            raise UnisslError(f"{directory} holds no tokenizer/ (a saved Sorcen encoder keeps its VQ tokenizer "
                              f"inside); save the encoder again")
        return cls(model.eval(), tokenizer, info["variant"], info["num_classes"], info["classes"], info["loss"])

    @property
    def arch(self) -> SorcenArch:
        return self.model.arch


def is_saved_encoder(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a saved Sorcen encoder (config.json in this format)."""
    import json

    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_info(directory: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A saved encoder's description in the shape of a run's ``sorcen.json`` info (what run readers use):
    ``arch``, ``variant``, ``num_classes``, ``classes``, ``loss``, ``tokenizer`` (its ``tokenizer/``),
    ``tokens`` (None: the store stayed with the run), ``run_dir`` and ``checkpoint`` (the directory)."""
    if meta is None:
        meta = read_saved_config(directory, (FORMAT,), PretrainedSorcen.WHAT, PretrainedSorcen.MADE_BY)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("arch"), dict):
        raise UnisslError(f"{directory / CONFIG_FILE} has no arch; save the encoder again")
    return {"arch": arch_from_dict(cfg["arch"], directory / CONFIG_FILE), "variant": str(cfg.get("variant", "sorcen")),
            "num_classes": int(cfg.get("num_classes", 0)), "classes": list(cfg.get("classes") or []),
            "loss": dict(cfg.get("loss") or {}), "tokenizer": frozen_dir(directory, meta, "tokenizer"),
            "tokens": None, "run_dir": str(directory), "checkpoint": str(directory), "saved": True}
