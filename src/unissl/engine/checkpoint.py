"""Atomic, code-free checkpoints.

Layout of a run directory::

    run_dir/checkpoints/step_0001000/model.safetensors   method state dict
                                     ema.safetensors     EMA shadow weights (when the run keeps an EMA)
                                     trainer_state.pt    optimizer, step, sampler, RNG states (weights_only)
    run_dir/checkpoints/latest                           name of the newest complete checkpoint

A checkpoint directory is written under a temporary name and renamed into place, and ``latest`` is
replaced atomically afterwards, so a crash at any moment leaves the previous checkpoint intact.
Nothing here unpickles code: weights are safetensors and ``trainer_state.pt`` holds only tensors and
plain Python containers (loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from unissl.errors import ConfigError, UnisslError
from unissl.utils.io import atomic_dir, atomic_file
from unissl.utils.weights import read_safetensors, read_torch_weights

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints``."""
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    """``step_0001000`` for step 1000 (zero-padded so names sort by step)."""
    return f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (temporary leftovers are ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    # A directory counts only with its weights file: a kill while an old checkpoint was being pruned (or
    # any other half-deleted step folder) never passes for a checkpoint.
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name)) and (p / MODEL_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run: the one ``latest`` names, else the highest step; ``None`` if none."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if target.is_dir() and (target / MODEL_FILE).is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint directory, a ``checkpoints/`` folder or a run directory."""
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        return path
    if path.name == "checkpoints" and path.is_dir():
        path = path.parent
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise UnisslError(f"no checkpoint found at {path}; pass a run directory or a "
                          f"checkpoints/step_XXXXXXX directory containing {MODEL_FILE}")
    return ckpt


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share storage, e.g. tied weights)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (CPU and CUDA) as tensors and plain lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model_state: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], ema_state: dict[str, torch.Tensor] | None = None,
                    keep: int = 3, protect: Path | None = None) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` atomically, point ``latest`` at it, prune to the newest ``keep``
    (never ``protect``: the trainer's last healthy checkpoint)."""
    root = checkpoints_dir(run_dir)
    final = root / step_dir_name(step)
    meta = {"step": str(step), "format": "unissl-checkpoint-v1"}
    _remove_stale_temporaries(root)
    with atomic_dir(final) as tmp:
        save_file(_plain_state(model_state), str(tmp / MODEL_FILE), metadata=meta)
        if ema_state is not None:
            save_file(_plain_state(ema_state), str(tmp / EMA_FILE), metadata=meta)
        torch.save(trainer_state, tmp / STATE_FILE)
        for f in tmp.iterdir():  # on disk before the rename makes the directory visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    with atomic_file(root / LATEST_FILE, "w") as f:
        f.write(final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != final and (protect is None or old.name != Path(protect).name):
            # renamed first (atomic), then deleted: a kill in between leaves a `.step_*.old.*` leftover that
            # the next save removes, never a step folder without its files
            doomed = root / f".{old.name}.old.{os.getpid()}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


DIVERGED_DIR = "diverged"  # where a resume from an earlier checkpoint puts the later ones (not listed, kept)


def set_aside_later_checkpoints(run_dir: str | Path, step: int) -> list[Path]:
    """Move the checkpoints after ``step`` (a diverged branch the run resumed before) to
    ``checkpoints/diverged/``, so pruning and ``--train.resume`` only see the branch that continues."""
    later = [p for p in list_checkpoints(run_dir) if int(p.name.split("_")[1]) > step]
    if not later:
        return []
    dest = checkpoints_dir(run_dir) / DIVERGED_DIR
    dest.mkdir(exist_ok=True)
    moved = []
    for p in later:
        target = dest / p.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(p, target)
        moved.append(target)
    return moved


def _remove_stale_temporaries(root: Path) -> None:
    """Delete half-written leftovers of a killed writer (``.step_*.tmp`` dirs, ``.latest.*.tmp`` files).

    A run has a single writer (rank 0), so anything temporary found before a save is garbage.
    """
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith((".step_", f".{LATEST_FILE}.")) and (p.name.endswith(".tmp") or ".old." in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, "the checkpoint is incomplete or corrupt: delete that checkpoint directory and "
                                  "use an older one")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` and ``ema`` state dicts (CPU) and the trainer state."""

    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    trainer_state: dict[str, Any] | None


def load_checkpoint(path: str | Path, with_trainer_state: bool = True) -> Checkpoint:
    """Load a checkpoint (see :func:`resolve_checkpoint` for accepted paths) without executing code."""
    ckpt = resolve_checkpoint(path)
    model = _load_safetensors(ckpt / MODEL_FILE)
    ema = _load_safetensors(ckpt / EMA_FILE) if (ckpt / EMA_FILE).exists() else None
    state = None
    if with_trainer_state:
        state = read_torch_weights(ckpt / STATE_FILE, "delete that checkpoint directory and resume from an older one")
    return Checkpoint(path=ckpt, model=model, ema=ema, trainer_state=state)


def load_weights(module: nn.Module, path: str | Path, ema: bool = False, strict: bool = True) -> Path:
    """Load a checkpoint's model weights into ``module`` (with ``ema=True``, the EMA weights on top).

    Returns the checkpoint directory used. Raises :class:`UnisslError` if ``ema`` is asked for but the run
    kept no EMA, or if the weights do not fit the module.
    """
    ck = load_checkpoint(path, with_trainer_state=False)
    state = dict(ck.model)
    if ema:
        if ck.ema is None:
            raise ConfigError("ema", f"{ck.path} has no {EMA_FILE} (the run was trained without train.ema_decay); "
                              f"load it with ema=False")
        state.update(ck.ema)
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise UnisslError(f"weights in {ck.path / MODEL_FILE} do not fit {type(module).__name__}: "
                          f"{str(e).splitlines()[0]}; check the model config matches the checkpoint") from e
    return ck.path
