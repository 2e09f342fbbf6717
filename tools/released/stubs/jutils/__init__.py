"""Stand-in for ``jutils`` (a personal utility package CompVis/RepTok imports; not on PyPI): only the names the
release uses, written from their use there. Used only when running the released code (tools/released/env.py)."""

from __future__ import annotations

import functools
import importlib
from typing import Any


def exists(x: Any) -> bool:
    """True unless ``x`` is None."""
    return x is not None


def default(val: Any, fallback: Any) -> Any:
    """``val`` unless it is None, else ``fallback`` (called when callable)."""
    if val is not None:
        return val
    return fallback() if callable(fallback) else fallback


def freeze(module: Any) -> Any:
    """Stop gradients for every parameter of ``module``; returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _locate(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate_from_config(config: Any) -> Any:
    """``{"target": "pkg.mod.Name", "params": {...}}`` -> ``Name(**params)``."""
    if "target" not in config:
        raise KeyError("config has no 'target'")
    return _locate(config["target"])(**dict(config.get("params", {}) or {}))


def load_partial_from_config(config: Any) -> Any:
    """``{"target": ..., "params": {...}}`` -> ``functools.partial(Name, **params)``."""
    return functools.partial(_locate(config["target"]), **dict(config.get("params", {}) or {}))
