"""Sorcen run directories: what a run records about its model, and how to rebuild it.

``run_dir/sorcen.json`` (written by ``unissl train sorcen`` before training) holds everything needed to
rebuild the model without the command's config: ``arch`` (:class:`SorcenArch` fields), ``variant``,
``loss`` (the :class:`~.config.SorcenConfig` settings; runs written before its split hold them flat, and
load as well), ``num_classes``, ``classes``, the token store and the tokenizer path. Weights come from
the engine's checkpoints (``run_dir/checkpoints/step_*/model.safetensors``, loaded without executing code).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from unissl.engine.checkpoint import load_checkpoint
from unissl.engine.method import load_saved_state
from unissl.errors import UnisslError
from unissl.methods.sorcen.config import FLAT_NAMES, SorcenConfig, build_config, is_flat
from unissl.methods.sorcen.method import MaskedTokenMethod, Variant, build_method
from unissl.methods.sorcen.model import SorcenModel
from unissl.methods.sorcen.presets import SorcenArch
from unissl.methods.sorcen.pretrained import PretrainedSorcen, is_saved_encoder, read_info
from unissl.tokenizers import load_tokenizer
from unissl.utils.hub import resolve_pretrained
from unissl.utils.io import read_json, write_json

RUN_FILE = "sorcen.json"
FORMAT = "unissl-sorcen-run-v1"


def write_run_info(run_dir: str | Path, arch: SorcenArch, variant: str, cfg: SorcenConfig,
                   num_classes: int, classes: list[str], tokens: str | None, tokenizer: str | None) -> Path:
    """Record the model's shapes and provenance in ``run_dir/sorcen.json`` (atomic)."""
    path = Path(run_dir) / RUN_FILE
    write_json(path, {"format": FORMAT, "arch": dataclasses.asdict(arch), "variant": variant,
                      "loss": dataclasses.asdict(cfg), "num_classes": num_classes, "classes": classes,
                      "tokens": tokens, "tokenizer": tokenizer})
    return path


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``sorcen.json`` of a run (a local run directory or a hub repo id), with ``arch`` as a :class:`SorcenArch`."""
    run_dir = resolve_pretrained(run_dir, "Sorcen run")

    if is_saved_encoder(run_dir):  # a saved encoder (methods/sorcen/pretrained.py) describes itself alike
        return read_info(run_dir)
    if (run_dir / "model.safetensors").is_file():  # a checkpoints/step_* directory was passed
        run_dir = run_dir.parent.parent
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise UnisslError(f"{path} not found; pass the run directory of `unissl train sorcen`")
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UnisslError(f"{path} is not a Sorcen run file (format {info.get('format') if isinstance(info, dict) else None!r})")
    arch = dict(info["arch"])
    arch["grid"] = tuple(arch["grid"])
    try:
        info["arch"] = SorcenArch(**arch)
    except (TypeError, ValueError) as e:
        raise UnisslError(f"{path}: invalid arch ({e}); the file does not come from this unissl version") from e
    info["run_dir"] = str(run_dir)
    return info


def load_method(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[MaskedTokenMethod, dict[str, Any]]:
    """The trained method (all heads) of a run, in eval mode, and its run info."""
    run_dir = resolve_pretrained(run_dir, "Sorcen run")
    info = read_run_info(run_dir)
    if info.get("saved"):
        raise UnisslError(f"{run_dir} is a saved Sorcen encoder (the model without its training heads); pass the "
                          f"run directory of `unissl train sorcen` to load the whole method")
    settings = dict(info.get("loss") or {})
    if is_flat(settings):  # a run written before the settings were split: its known names, as before
        settings = {k: v for k, v in settings.items() if k in FLAT_NAMES}
    try:
        cfg = build_config(settings)
    except (TypeError, UnisslError) as e:
        raise UnisslError(f"{info['run_dir']}/{RUN_FILE}: invalid loss settings ({e})") from None
    # The online variants' tokenizer is not part of the weights (frozen_state_prefixes): built without it.
    variant: Variant = info["variant"]
    method = build_method(info["arch"], variant, cfg, num_classes=int(info.get("num_classes", 0)),
                          steps_per_epoch=1)  # progress counters are not needed to evaluate or sample
    ck = load_checkpoint(run_dir, with_trainer_state=False)  # a run directory or a step directory
    try:
        load_saved_state(method, ck.model)
    except RuntimeError as e:
        raise UnisslError(f"weights in {ck.path} do not fit the model in {info['run_dir']}/{RUN_FILE}: "
                          f"{str(e).splitlines()[0]}") from e
    info["checkpoint"] = str(ck.path)
    return method.to(device).eval(), info


def load_sorcen(run_dir: str | Path, device: torch.device | str = "cpu",
                with_tokenizer: bool = True) -> tuple[SorcenModel, Any]:
    """The frozen encoder-decoder of a run or saved encoder (eval mode, ``requires_grad=False``) and its VQ tokenizer.

    The tokenizer is loaded from the path recorded in ``sorcen.json`` (the token store's tokenizer); it is
    ``None`` when ``with_tokenizer`` is false.
    """
    model, info = load_model(run_dir, device)
    tokenizer = load_run_tokenizer(info, device) if with_tokenizer else None
    return model, tokenizer


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SorcenModel, dict[str, Any]]:
    """The frozen encoder-decoder (eval mode, ``requires_grad=False``) and the info of a run directory (one
    of its checkpoints) or of a saved Sorcen encoder (:mod:`.pretrained`, a local directory or a hub id)."""
    directory = resolve_pretrained(path, "Sorcen run")

    if is_saved_encoder(directory):
        saved = PretrainedSorcen.from_pretrained(directory, device=device)
        return saved.model.requires_grad_(False).eval(), read_info(directory)
    method, info = load_method(directory, device)
    return method.model.requires_grad_(False).eval(), info


def load_run_tokenizer(info: dict[str, Any], device: torch.device | str = "cpu") -> Any:
    """The VQ tokenizer a run's ids came from (path recorded in ``sorcen.json``)."""
    path = info.get("tokenizer")
    if not path:
        raise UnisslError(f"{info['run_dir']}/{RUN_FILE} records no tokenizer path; the token store's meta.json "
                          f"had none. Re-run `unissl tokenize` with a saved tokenizer")
    tok = load_tokenizer(path, device=device)
    arch: SorcenArch = info["arch"]
    if int(tok.codebook_size) != arch.codebook_size or tuple(tok.grid) != tuple(arch.grid):
        raise UnisslError(f"tokenizer {path} (K={tok.codebook_size}, grid={tuple(tok.grid)}) does not match the run "
                          f"(K={arch.codebook_size}, grid={arch.grid})")
    return tok
