"""Run logs: one JSON object per line in ``run_dir/log.jsonl``, mirrored to TensorBoard and PNG grids."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from unissl.engine.dist import all_reduce_mean
from unissl.utils.images import save_grid
from unissl.utils.io import atomic_file
from unissl.utils.optional import require


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (a torn last line from a killed process is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the rest of the log is still useful
    return out


class RunLogger:
    """Writes scalars (JSONL, TensorBoard, optionally W&B) and image grids for rank 0; a no-op on other ranks.

    ``wandb`` (``{"project", "mode", "config"}``) mirrors every record to a Weights & Biases run in
    ``run_dir/wandb`` (offline by default: no network; ``wandb sync`` uploads it later). The run id is derived
    from the run directory, so a resumed training continues the same W&B run.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 wandb: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "log.jsonl"
        self._tb: Any = None
        self._want_tb = enabled and tensorboard  # the writer is created on first use: nothing is written before
        self._wandb_cfg = wandb if enabled else None
        self._wandb: Any = None
        if self._wandb_cfg is not None:
            wandb_module()  # a missing package is refused before anything is written

    @property
    def wandb(self) -> Any:
        """The W&B run (started on first use; None when W&B logging is off)."""
        if self._wandb is None and self._wandb_cfg is not None:
            cfg, self._wandb_cfg = self._wandb_cfg, None
            (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
            run_id = "unissl-" + hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb_module().init(project=cfg.get("project", "unissl"), mode=cfg.get("mode", "offline"),
                                              dir=str(self.run_dir), name=self.run_dir.name, id=run_id,
                                              resume="allow", config=cfg.get("config") or {})
        return self._wandb

    @property
    def tb(self) -> Any:
        """The TensorBoard writer (created on first use; None when disabled or not installed)."""
        if self._tb is None and self._want_tb:
            self._want_tb = False
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                return None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        return self._tb

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
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(dict(scalars), step=step)

    def images(self, step: int, images: dict[str, torch.Tensor]) -> list[Path]:
        """Save each ``(N, C, H, W)`` tensor in ``[0, 1]`` as ``images/<name>_step<step>.png`` (+ TensorBoard)."""
        if not self.enabled:
            return []
        paths = []
        for name, x in images.items():
            x = x.detach().float().clamp(0, 1).cpu()
            paths.append(save_grid(x, self.run_dir / "images" / f"{name}_step{step}.png"))
            if self.tb is not None:
                self.tb.add_images(name, x, step)
            if self.wandb is not None:
                self.wandb.log({name: wandb_module().Image(str(paths[-1]))}, step=step)
        return paths

    def flush(self) -> None:
        """Flush TensorBoard events."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close the TensorBoard writer and finish the W&B run."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def wandb_module() -> Any:
    """The ``wandb`` package, or a one-line error saying how to install it (it is an optional extra)."""
    return require("wandb", "wandb", "--train.wandb", "drop --train.wandb")


class ScalarWindow:
    """Per-step scalars averaged over a logging window (and over ranks), plus the window's throughput.

    Values stay on the device between logging steps, so accumulating costs no host synchronisation.
    Every rank must log the same keys (their means are all-reduced together).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        """Accumulate one step's scalar tensors (a skipped step adds none: each key is averaged over the
        steps that logged it)."""
        for k, v in scalars.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def pop(self, samples_per_step: int) -> dict[str, float]:
        """The window's means (all-reduced) and ``samples_per_s``; starts a new window."""
        keys = sorted(self.sums)
        means = all_reduce_mean(torch.stack([self.sums[k] / self.counts[k] for k in keys])).tolist() if keys else []
        now = time.perf_counter()
        out = dict(zip(keys, means))
        out["samples_per_s"] = samples_per_step * self.steps / max(now - self.start, 1e-9)
        self.sums, self.counts, self.steps, self.start = {}, {}, 0, now
        return out
