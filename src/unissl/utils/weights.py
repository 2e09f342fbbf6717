"""The one way unissl reads weights from disk: without executing code, with one-line errors.

Every loader (tokenizers, Sorcen runs, RepTok tokenizers and generators, the domain classifier, Inception,
converters, resumed checkpoints, transformers / diffusers directories) goes through these helpers, so a
missing, truncated or foreign file is always ``unissl: error: <file> ...; <what to do>`` instead of a
traceback, and a pickle that would run code is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from unissl.errors import UnisslError

T = TypeVar("T")


def read_safetensors(path: str | Path, fix: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; ``fix`` says what to do when it is missing or unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found; {fix}")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # SafetensorError (bad header, truncated), OSError, ValueError
        raise UnisslError(f"{path} is corrupt or not a safetensors file ({_first_line(e)}); {fix}") from None


def read_torch_weights(path: str | Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a real pickle that would construct Python objects
            raise UnisslError(f"{path} is not a weights-only file: it pickles Python objects, which unissl never "
                              f"unpickles; re-save only its tensors with torch.save, or {fix}") from None
        raise UnisslError(f"{path} is corrupt or not a torch weights file ({_first_line(e)[:100]}); {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        raise UnisslError(f"{path} is corrupt or not a torch weights file ({type(e).__name__}: "
                          f"{_first_line(e)[:100]}); {fix}") from None


def load_pretrained_dir(load: Callable[[], T], path: str | Path, what: str, fix: str) -> T:
    """Run a ``from_pretrained(path, local_files_only=True)`` call of transformers / diffusers with the
    one-line error: a directory without its config or weights, or with truncated weights."""
    path = Path(path)
    if not path.is_dir():
        raise UnisslError(f"{what} directory {path} not found; {fix}")
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UnisslError(f"cannot load the {what} in {path} ({_first_line(e)[:160]}); {fix}") from None
    except Exception as e:  # e.g. safetensors' SafetensorError for a truncated weights file
        if type(e).__name__ in ("SafetensorError", "HeaderTooLarge", "HFValidationError"):
            raise UnisslError(f"cannot load the {what} in {path} ({_first_line(e)[:160]}); {fix}") from None
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
