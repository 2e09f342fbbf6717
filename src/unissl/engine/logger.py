"""Run logs: one JSON object per line in ``run_dir/log.jsonl``, mirrored to TensorBoard and PNG grids."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from unissl.utils.images import save_grid
from unissl.utils.io import atomic_file


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (a torn last line from a killed process is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class RunLogger:
    """Writes scalars (JSONL + TensorBoard) and image grids for rank 0; a no-op object on other ranks."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "log.jsonl"
        self._tb: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_log(self.path) if int(r.get("step", 0)) <= step]
        with atomic_file(self.path, "w") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Append ``{"step": step, **scalars}`` to the JSONL file and TensorBoard."""
        if not self.enabled:
            return
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def images(self, step: int, images: dict[str, torch.Tensor]) -> list[Path]:
        """Save each ``(N, C, H, W)`` tensor in ``[0, 1]`` as ``images/<name>_step<step>.png`` (+ TensorBoard)."""
        if not self.enabled:
            return []
        paths = []
        for name, x in images.items():
            x = x.detach().float().clamp(0, 1).cpu()
            paths.append(save_grid(x, self.run_dir / "images" / f"{name}_step{step}.png"))
            if self._tb is not None:
                self._tb.add_images(name, x, step)
        return paths

    def flush(self) -> None:
        """Flush TensorBoard events."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
