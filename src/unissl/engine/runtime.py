"""Small runtime pieces of the training loop: devices, micro-batches and stop signals."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

import torch

from unissl.config import arg
from unissl.errors import UnisslError

DEVICE_HELP = "device: auto (CUDA when available), cpu, cuda, cuda:1, ..."


def device_arg(default: str = "auto", what: str = "device") -> Any:
    """The ``device`` option of every command (parsed by :func:`resolve_device`)."""
    return arg(default, help=DEVICE_HELP.replace("device", what, 1))


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The one device parser of unissl: ``auto``/None -> CUDA when available, else CPU.

    Any ``torch.device`` string is accepted (``cpu``, ``cuda``, ``cuda:1``); a bare ``cuda`` means this
    process's GPU (``local_rank`` under torchrun). Asking for CUDA without one is a one-line error.
    """
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UnisslError(f"invalid device {str(name)!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnisslError(f"device {str(name)!r} requested but no CUDA device is available; use cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cut every tensor/list entry of ``batch`` along dim 0 into ``parts`` equal micro-batches.

    Scalars (0-d tensors, numbers, strings) are shared by every micro-batch.
    """
    if parts == 1:
        return [batch]
    out: list[dict[str, Any]] = [{} for _ in range(parts)]
    for key, value in batch.items():
        batched = isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.ndim > 0)
        rows = len(value) if batched else None
        if rows is not None and rows % parts:
            raise UnisslError(f"batch entry {key!r} has {rows} rows, not divisible into {parts} micro-batches; "
                              f"make train.global_batch / (world size x grad_accum) a whole number")
        if rows is None:
            chunks: Sequence[Any] = [value] * parts
        else:
            n = rows // parts
            chunks = [value[i * n:(i + 1) * n] for i in range(parts)]
        for i, c in enumerate(chunks):
            out[i][key] = c
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of ``batch`` to ``device`` (asynchronously from pinned memory); keep the rest."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: DataLoader workers ignore Ctrl-C/SIGTERM; the main process checkpoints, then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """Context manager: SIGTERM/SIGINT only set :attr:`signal`, so the loop can checkpoint at a step boundary.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once. Handlers are installed only in the main thread
    and the previous ones come back on exit.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def exit(self) -> None:
        """Leave the process the way the signal asked: ``KeyboardInterrupt`` for Ctrl-C, exit 128+N otherwise."""
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.signal or signal.SIGTERM))
