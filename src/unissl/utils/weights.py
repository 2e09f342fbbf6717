"""The one way unissl reads weights from disk: without executing code, with one-line errors.

Every loader (tokenizers, Sorcen runs, RepTok tokenizers and generators, the domain classifier, Inception,
converters, resumed checkpoints, transformers / diffusers directories) goes through these helpers, so a
missing, truncated or foreign file is always ``unissl: error: <file> ...; <what to do>`` instead of a
traceback, and a pickle that would run code is refused.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from unissl.errors import UnisslError
from unissl.utils.progress import library_bars

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


def looks_like_safetensors(path: str | Path) -> bool:
    """Whether ``path`` is (meant as) a safetensors file: its suffix, or its first bytes (a little-endian
    header length, then the JSON header's ``{``), read without parsing anything."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK" and head[:1] != b"\x80"


def read_torch_weights(path: str | Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code. A safetensors
    file given where torch weights go (a ``.pth`` / ``.ckpt`` argument) is read as safetensors, so a damaged
    one is the same one line as everywhere else."""
    path = Path(path)
    if not path.is_file():
        raise UnisslError(f"{path} not found; {fix}")
    if looks_like_safetensors(path):
        return read_safetensors(path, fix)
    # torch warns about the bytes it is reading (e.g. "pickle protocol 150") before it fails on them: held back,
    # and shown only when the load succeeds, so a damaged file is still exactly one line on stderr
    try:
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            state = torch.load(path, map_location="cpu", weights_only=True)
        for w in held:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return state
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a real pickle that would construct Python objects
            raise UnisslError(f"{path} is not a plain weights file: it pickles Python objects, which unissl will "
                              f"not execute; re-save only its tensors with torch.save, or {fix}") from None
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
    refuse_code_pickles(path, what, fix)
    try:
        with library_bars():  # the library's "Loading weights" bar: a terminal only
            return load()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UnisslError(f"cannot load the {what} in {path} ({_first_line(e)[:160]}); {fix}") from None
    except Exception as e:  # e.g. safetensors' SafetensorError for a truncated weights file
        if type(e).__name__ in ("SafetensorError", "HeaderTooLarge", "HFValidationError"):
            raise UnisslError(f"cannot load the {what} in {path} ({_first_line(e)[:160]}); {fix}") from None
        raise


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # where transformers / diffusers look for pickled weights


def refuse_code_pickles(directory: Path, what: str, fix: str) -> None:
    """Refuse a transformers / diffusers directory whose pickled weights file (``pytorch_model.bin``,
    ``diffusion_pytorch_model.bin``, ...) would construct Python objects: checked with a weights-only read,
    so nothing in it runs. Skipped when the directory has safetensors weights (what the loaders read first)."""
    if any(directory.glob("*.safetensors")):
        return
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in PICKLE_SUFFIXES and weights_file_kind(f) == "code-pickle":
            raise UnisslError(f"{what} weights {f} is not a plain weights file: it pickles Python objects, which "
                              f"unissl will not execute; re-save the model with safetensors "
                              f"(save_pretrained(..., safe_serialization=True)) in a trusted environment, or {fix}")


def weights_file_kind(path: str | Path) -> str:
    """What a file holds, read without executing anything: ``code-pickle`` (a pickle that
    ``torch.load(weights_only=True)`` refuses because it would construct Python objects), ``torch-weights``
    (a pickle of tensors and plain containers), ``safetensors``, ``corrupt`` (a torch / safetensors file that
    does not load) or ``other``."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy / raw pickle stream
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return "torch-weights"
        except pickle.UnpicklingError as e:
            return "code-pickle" if "Unsupported global" in str(e) else "corrupt"
        except Exception:  # noqa: BLE001 - a damaged file of either kind
            return "corrupt"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                return "safetensors"
        except Exception:  # noqa: BLE001
            return "corrupt"
    return "other"


def refuse_file(path: str | Path, what: str, fix: str) -> UnisslError:
    """The one-line error for a file given where ``what`` (a directory: a run, a saved model) is expected;
    a pickle that would run code is named as such and is never unpickled."""
    kind = weights_file_kind(path)
    if kind == "code-pickle":
        return UnisslError(f"{what} {path} is not a plain weights file: it pickles Python objects, which unissl "
                           f"will not execute; {fix}")
    detail = {"torch-weights": "bare torch weights without the config of their model",
              "safetensors": "bare safetensors weights without the config of their model",
              "corrupt": "a damaged or truncated weights file"}.get(kind, "a file")
    return UnisslError(f"{what} {path} is {detail}, not a directory; {fix}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
