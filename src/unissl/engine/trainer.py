"""The one training loop: a :class:`~unissl.engine.method.Method` + a dataset + a :class:`TrainConfig`.

Per optimizer step, each rank loads ``global_batch / world_size`` samples (one batch of the resumable
:class:`~unissl.data.sampler.ShardedBatchSampler`), splits them into ``grad_accum`` micro-batches and
accumulates ``loss / grad_accum`` (DDP synchronises gradients on the last micro-batch only). Then: NaN
check, gradient clipping, AdamW step at the scheduled lr, the method's ``on_train_step_end`` hook, the
EMA update, logging, images and checkpoints. Everything that a resumed run needs (weights, optimizer,
EMA, step, sampler position, every rank's RNG state) is in the checkpoint, so a resumed CPU run
continues bit-exactly (given a dataset whose samples depend only on their index).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unissl.config import to_dict
from unissl.data.sampler import ShardedBatchSampler, collate_batched
from unissl.engine import dist
from unissl.engine.checkpoint import (
    DIVERGED_DIR,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    set_aside_later_checkpoints,
)
from unissl.engine.config import TrainConfig
from unissl.engine.ema import EMA
from unissl.engine.health import SAFE_LR_DIVISOR, LossTrend, continue_command
from unissl.engine.logger import RunLogger, ScalarWindow, read_log
from unissl.engine.method import Method, load_saved_state, saved_state, unwrap
from unissl.engine.optim import build_optimizer
from unissl.engine.runtime import StopRequest, ignore_stop_signals, resolve_device, split_batch, to_device
from unissl.engine.schedule import lr_schedule
from unissl.errors import ConfigError, Interrupted, UnisslError
from unissl.utils.io import git_revision, read_json, write_json
from unissl.utils.progress import progress
from unissl.utils.seed import seed_everything


def choose_threads(requested: int | None) -> tuple[int, str]:
    """Intra-op threads for a CPU run, applied: ``requested``, else ``OMP_NUM_THREADS`` if set, else 1; and
    where the number came from."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if requested:
        n, source = requested, "--train.threads"
    elif env.isdigit() and int(env) > 0:
        n, source = int(env), "OMP_NUM_THREADS"
    else:
        n, source = 1, "default for CPU"
    torch.set_num_threads(n)
    return n, source


MAX_EMA_INIT_SHARE = 0.01  # an exported EMA may keep at most this share of the initial weights


class Callback:
    """Override any of these to observe training; they run on every rank (check ``trainer.is_main``)."""

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        """After optimizer step ``step`` (1-based); ``logs`` is empty except on logging steps."""

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None:
        """After a checkpoint of ``step`` was written to ``path``."""

    def on_fit_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        """After the last step and the final checkpoint."""


class Trainer:
    """Train ``method`` on ``dataset`` according to ``cfg``; see the module docstring for one step.

    Args:
        method: a :class:`~unissl.engine.method.Method` (``TypeError`` otherwise). Build it
            after ``seed_everything(cfg.seed)`` (DDP also broadcasts rank 0's initial weights).
        dataset: a map-style dataset with ``__len__`` and ``__getitems__(indices) -> dict of stacked tensors``.
        cfg: the training settings.
        run_dir: where checkpoints, logs and images go (default ``cfg.run_dir``).
        callbacks: :class:`Callback` objects.
    """

    def __init__(self, method: Method, dataset: Any, cfg: TrainConfig, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] | None = None) -> None:
        if not isinstance(method, Method):
            raise TypeError(f"Trainer needs a unissl.engine.Method, got {type(method).__name__}")
        self.cfg = cfg
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        self.callbacks = list(callbacks or [])
        self.dataset = dataset
        self.rank, self.world_size, local_rank = dist.init_distributed(cfg.dist_timeout * 60)
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device, local_rank)
        if self.device.type == "cpu":
            self.threads, source = choose_threads(cfg.threads)
            if self.is_main:
                print(f"[train] {self.threads} intra-op thread(s) per process ({source}; --train.threads N to change)")
        # bf16 autocast: "auto" on CUDA only; "bf16" also on CPU (opt-in: it pays for wide models only,
        # see benchmarks/mfu.py); weights, optimizer state and checkpoints stay fp32 either way.
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.per_rank_batch = cfg.per_rank_batch(self.world_size)
        self.num_items = len(dataset)
        self.total_steps = cfg.total_steps(self.num_items)
        self.steps_per_epoch = cfg.steps_per_epoch(self.num_items)
        warmup = cfg.warmup(self.num_items)
        if warmup > self.total_steps:
            raise UnisslError(f"warm-up ({warmup} steps) is longer than the run ({self.total_steps} steps); "
                              f"lower train.warmup_steps/warmup_epochs")
        self.lr_values = lr_schedule(cfg.peak_lr(), cfg.min_lr, self.total_steps, warmup)  # (total_steps,)

        self.method = method.to(self.device)
        self.model: nn.Module = self.method  # what forward is called on (DDP and/or compiled wrapper)
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.method, device_ids=[local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
            self.model = self.ddp
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast use TF32
            torch.backends.cudnn.allow_tf32 = True
        if cfg.compile:
            # A method that knows its networks compiles them (``compile_networks``), so that Python state
            # read in its forward (mask ratios, progress) never guards a graph; others compile whole.
            if self.method.compile_networks() is None:
                self.model = torch.compile(self.model)  # type: ignore[assignment]
        self.optimizer = build_optimizer(self.method, cfg.peak_lr(), cfg.weight_decay, cfg.betas)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ema = EMA(self.method, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None else None
        left = self.ema.init_share(self.total_steps) if self.ema is not None else 0.0
        if left > MAX_EMA_INIT_SHARE:
            raise ConfigError("train.ema_warmup", f"is off: train.ema_decay={cfg.ema_decay} without warm-up leaves "
                              f"{100 * left:.1f}% of the initial weights in the EMA after {self.total_steps} steps; "
                              f"turn the warm-up on, lower the decay or train longer")
        self.sampler = ShardedBatchSampler(self.num_items, cfg.global_batch, self.rank, self.world_size,
                                           seed=cfg.seed, drop_last=True)
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumed sessions
        self.cpu_elapsed = 0.0  # this process's CPU seconds in training (immune to other processes' load)
        self.last_checkpoint: Path | None = None
        self.skips_in_row = 0  # non-finite steps skipped in a row (on_nonfinite=skip)
        self.skipped_steps = 0  # ... in the whole run (saved with checkpoints)
        # Health (engine/health.py): the loss against its trend; the last checkpoint written while every step
        # since the previous one was healthy is kept from pruning and named after a divergence.
        self.trend = LossTrend()
        self.healthy_checkpoint: Path | None = None
        self.healthy_lr: float | None = None  # the rate at the healthy checkpoint's last healthy step
        self._last_healthy_lr: float | None = None
        self._left_trend: tuple[int, float, float, float] | None = None  # first (step, loss, median, lr) since it
        self._unhealthy_since_save = False
        wandb = {"project": cfg.wandb_project, "mode": cfg.wandb_mode,
                 "config": {"train": to_dict(cfg), "method": type(unwrap(method)).__name__}} if cfg.wandb else None
        self.logger = RunLogger(self.run_dir, enabled=self.is_main, tensorboard=cfg.tensorboard, wandb=wandb)
        self._prepared = False
        self._resume_path: Path | None = None
        self._resume_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ checkpoints
    def _state_is_finite(self) -> bool:
        """Whether every weight, optimizer moment and EMA tensor is finite (checked before a checkpoint counts)."""
        tensors = [p.detach() for p in self.method.parameters()]
        tensors += [v for st in self.optimizer.state.values() for v in st.values()
                    if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if self.ema is not None:
            tensors += [v for v in self.ema.shadow.values() if v.is_floating_point()]
        flags = torch.stack([torch.isfinite(t).all() for t in tensors]) if tensors else torch.ones(1, dtype=torch.bool)
        ok = flags.all().to(self.device, torch.float32)
        if self.world_size > 1:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def save(self) -> Path:
        """Checkpoint the current step (every rank must call this; rank 0 writes).

        A state with a non-finite weight, optimizer moment or EMA value is never written: the error names
        the last good checkpoint instead, so the one it points to can be resumed at a lower learning rate.
        """
        if not self._state_is_finite():
            raise UnisslError(f"weights or optimizer state became non-finite by step {self.step} (the loss was "
                              f"still finite); nothing was saved; {self._recovery_advice(diverged=True)}")
        healthy = not self._unhealthy_since_save  # every step since the previous checkpoint was healthy
        self._unhealthy_since_save = False
        sampler_state = self.sampler.state_dict()
        # The live sampler runs ahead of training (DataLoader prefetch): record the consumed position.
        sampler_state["epoch"], sampler_state["step_in_epoch"] = divmod(self.step, self.sampler.steps_per_epoch)
        state = {"step": self.step, "total_steps": self.total_steps, "elapsed": self.elapsed,
                 "cpu_elapsed": self.cpu_elapsed, "skipped_steps": self.skipped_steps,
                 "optimizer": self.optimizer.state_dict(), "sampler": sampler_state,
                 "rng": dist.all_gather_object(capture_rng_state()),  # collective: one state per rank
                 "world_size": self.world_size, "global_batch": self.cfg.global_batch,
                 "trend": self.trend.state_dict(), "healthy": healthy,
                 "healthy_lr": self._last_healthy_lr if healthy else self.healthy_lr,
                 "healthy_checkpoint": None if healthy or self.healthy_checkpoint is None
                 else self.healthy_checkpoint.name}
        if self.ema is not None:
            state["ema_updates"] = self.ema.updates
        if self.is_main:
            save_checkpoint(self.run_dir, self.step, saved_state(self.method), state,
                            self.ema.state_dict() if self.ema is not None else None, keep=self.cfg.keep_ckpts,
                            protect=None if healthy else self.healthy_checkpoint)
        dist.barrier()
        path = latest_checkpoint(self.run_dir)
        assert path is not None
        self.last_checkpoint = path
        if healthy:
            self.healthy_checkpoint, self.healthy_lr, self._left_trend = path, self._last_healthy_lr, None
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.step, path)
        return path

    def _find_resume(self) -> Path | None:
        if self.cfg.resume_from:
            return resolve_checkpoint(self.cfg.resume_from)
        if self.cfg.resume:
            return latest_checkpoint(self.run_dir)
        if list_checkpoints(self.run_dir):
            raise ConfigError("train.run_dir", f"{self.run_dir} already holds checkpoints; set train.resume to "
                              f"continue that run or choose another run directory")
        return None

    def _load(self, path: Path) -> dict[str, Any]:
        """Restore weights, EMA, optimizer, sampler and step from ``path``; returns the trainer state."""
        ck = load_checkpoint(path)
        state = ck.trainer_state or {}
        if "optimizer" not in state or "sampler" not in state:
            raise UnisslError(f"{ck.path} holds weights but no training state (e.g. converted weights); it cannot be "
                              f"resumed: load it with unissl.engine.load_weights before training instead")
        if state.get("global_batch") != self.cfg.global_batch:
            raise ConfigError("train.global_batch", f"{path} was trained with global_batch="
                              f"{state.get('global_batch')}, this run has {self.cfg.global_batch}; resume with the "
                              f"same value")
        try:
            load_saved_state(self.method, ck.model)
        except RuntimeError as e:
            raise UnisslError(f"weights in {path} do not fit the method ({str(e).splitlines()[0]}); "
                              f"resume with the same model settings") from e
        if self.ema is not None:
            if ck.ema is None:
                raise UnisslError(f"{path} has no EMA weights but train.ema_decay is set; resume without it")
            self.ema.load_state_dict(ck.ema)
            self.ema.updates = int(state.get("ema_updates", state["step"]))  # older checkpoints: one per step
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.cpu_elapsed = float(state.get("cpu_elapsed", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_checkpoint = ck.path
        self.trend.load_state_dict(state.get("trend", {}))
        named = state.get("healthy_checkpoint")
        self.healthy_checkpoint = ck.path if state.get("healthy", True) or not named else ck.path.parent / named
        self.healthy_lr = self._last_healthy_lr = state.get("healthy_lr")
        self._left_trend = None
        return state

    # ------------------------------------------------------------------ one step
    def _forward_backward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Accumulate gradients over the micro-batches; returns the step's logs (micro-batch means)."""
        micro = split_batch(batch, self.cfg.grad_accum)
        logs: dict[str, torch.Tensor] = {}
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp
                    else contextlib.nullcontext())
        for i, mb in enumerate(micro):
            # DDP all-reduces gradients during the backward of the last micro-batch only.
            last = i == len(micro) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast:
                    out = self.model(mb)
                if "loss" not in out:
                    raise ValueError(f"{type(self.method).__name__}.forward must return a dict with 'loss'")
                (out["loss"] / self.cfg.grad_accum).backward()
            for k, v in out.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                if v.numel() != 1:
                    raise ValueError(f"{type(self.method).__name__}.forward returned a non-scalar log {k!r} "
                                     f"of shape {tuple(v.shape)}")
                v = v.reshape(()).to(self.device) / len(micro)
                logs[k] = logs[k] + v if k in logs else v
        return logs

    def _optimizer_step(self, logs: dict[str, torch.Tensor], stop: StopRequest) -> bool:
        """Check, clip and apply the accumulated gradients, then run the hooks; returns whether to stop.

        The loss, the gradient norm and the stop flag cost one host sync; under DDP they are all-reduced
        so every rank takes the same decision (gradients, hence their norm, already agree across ranks).
        """
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        flags = torch.stack([logs["loss"], torch.tensor(float(stop.signal is not None), device=self.device),
                             grad_norm.detach().float().to(self.device)])
        if self.world_size > 1:
            torch.distributed.all_reduce(flags)
            flags[0] /= self.world_size
        loss, stop_flag, norm = flags.tolist()
        lr = float(self.lr_values[self.step])
        if math.isfinite(loss) and self.trend.update(loss):
            self._last_healthy_lr = lr
        elif math.isfinite(loss):
            self._unhealthy_since_save = True
            if self._left_trend is None:
                self._left_trend = (self.step + 1, loss, self.trend.reference, lr)
        bad = next(((what, v) for what, v in (("loss", loss), ("gradient norm", norm)) if not math.isfinite(v)), None)
        if bad is not None:  # nothing is applied: the weights and the last checkpoint stay good
            self._nonfinite_step(*bad, logs)
        else:
            self.skips_in_row = 0
            if self.cfg.clip_grad is not None:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.clip_grad, grad_norm)
            self.optimizer.step()
            logs["grad_norm"] = grad_norm.detach().float().to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.method.on_train_step_end(self.step, self.total_steps)
        if self.ema is not None and bad is None:
            self.ema.update(self.method)
        return stop_flag > 0

    def _where(self) -> str:
        return (f"the last healthy checkpoint is {self.healthy_checkpoint}" if self.healthy_checkpoint
                else "no healthy checkpoint was written yet")

    def _recovery_advice(self, diverged: bool) -> str:
        """Where the run went wrong and the flags (and, when this process is a typed command, the whole
        command) that continue it: from the last healthy checkpoint at a sane rate after a divergence."""
        left = self._left_trend
        told = ""
        if left is not None:
            step, loss, median, lr = left
            told = (f"the loss left its trend at step {step} ({loss:.3g}, over {self.trend.factor:g}x its running "
                    f"median {median:.3g}; lr {lr:.3g}); ")
        if left is None and not diverged:  # a sudden non-finite step (e.g. a corrupt record): skip past it
            flags = (["--train.resume"] if self.healthy_checkpoint == self.last_checkpoint
                     else ["--train.resume-from", str(self.healthy_checkpoint)]) if self.healthy_checkpoint else []
            flags += ["--train.on-nonfinite", "skip"]
            why = "(skips the steps whose loss or gradient is not finite)"
        else:
            rate = self.healthy_lr if self.healthy_lr is not None else self.cfg.peak_lr() / SAFE_LR_DIVISOR
            flags = ["--train.lr", f"{rate / SAFE_LR_DIVISOR:.3g}"]
            if self.healthy_checkpoint is not None:
                flags = ["--train.resume-from", str(self.healthy_checkpoint), *flags]
                why = (f"(the last healthy checkpoint at a tenth of the rate it was healthy at; later checkpoints "
                       f"are set aside under checkpoints/{DIVERGED_DIR}/)")
            else:
                why = "(from scratch at a tenth of the peak rate; choose a new --train.run-dir)"
        command = continue_command(flags)
        return (f"{told}{self._where()}; to continue: {' '.join(flags)} {why}"
                + (f"; the command: {command}" if command else ""))

    def _nonfinite_step(self, what: str, value: float, logs: dict[str, torch.Tensor]) -> None:
        """A step whose loss or gradient norm is NaN/Inf: with ``on_nonfinite=skip`` it becomes a step without
        an update (its logs are dropped, the batch stays consumed); otherwise, or after ``max_skips`` in a
        row, the run stops with the flags that continue it from the last good checkpoint."""
        step = self.step + 1
        lr = float(self.lr_values[self.step])
        if self.cfg.on_nonfinite == "skip" and self.skips_in_row < self.cfg.max_skips:
            self.skips_in_row += 1
            self.skipped_steps += 1
            logs.clear()  # a NaN would poison the window's means; the count is logged as skipped_steps
            if self.is_main:
                print(f"[train] step {step}: {what} became {value} (lr {lr:.3g}); skipped, no update "
                      f"({self.skips_in_row} in a row, {self.skipped_steps} in all)", flush=True)
            return
        persistent = self.cfg.on_nonfinite == "skip"
        advice = (f"{self.cfg.max_skips} steps in a row were not finite, so skipping batches does not help; "
                  if persistent else "")
        raise UnisslError(f"{what} became {value} at step {step} (lr {lr:.3g}); {advice}"
                          f"{self._recovery_advice(diverged=persistent)}")

    @torch.no_grad()
    def _log_images(self, batch: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.method.eval()
        try:
            self.logger.images(self.step, self.method.log_images(batch))
        finally:
            self.method.train()

    # ------------------------------------------------------------------ the loop
    def _record_session(self, resumed_from: Path | None) -> None:
        """Append this session (git revision, world, device, steps) to ``run_dir/train_info.json``."""
        if not self.is_main:
            return
        path = self.run_dir / "train_info.json"
        sessions = read_json(path) if path.is_file() else []
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": git_revision(),
                         "world_size": self.world_size, "device": str(self.device),
                         "amp": "bf16" if self.amp else "fp32", "total_steps": self.total_steps,
                         "per_rank_batch": self.per_rank_batch, "grad_accum": self.cfg.grad_accum,
                         "peak_lr": self.cfg.peak_lr(), "start_step": self.step,
                         "resumed_from": str(resumed_from) if resumed_from else None,
                         "trainable_params": sum(p.numel() for p in self.params)})
        write_json(path, sessions)

    def prepare(self) -> Trainer:
        """Find and load the checkpoint to resume from (if any) and check it fits this run, writing nothing.

        Commands call it before they write their run files, so that a refused resume (another preset,
        another batch, no checkpoint to continue) leaves the run directory byte-identical. ``fit`` calls it
        when the command did not.
        """
        if not self._prepared:
            self._resume_path = self._find_resume()
            self._resume_state = self._load(self._resume_path) if self._resume_path is not None else None
            self._prepared = True
        return self

    def _start(self) -> Iterator[dict[str, Any]]:
        """Resume or seed, record the session and return the batch iterator (RNG restored after it exists)."""
        self.prepare()
        resume, state = self._resume_path, self._resume_state
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if state is not None:
                self.logger.truncate_after(self.step)  # records written after that checkpoint are redone
                set_aside = set_aside_later_checkpoints(self.run_dir, self.step)
                if set_aside:
                    print(f"[train] resumed at step {self.step}: {len(set_aside)} later checkpoint(s) set aside "
                          f"under {set_aside[0].parent}", flush=True)
        self._record_session(resume)
        if state is not None and self.is_main:
            print(f"[train] resumed from {resume} at step {self.step}", flush=True)
        if state is None:
            seed_everything(self.cfg.seed + self.rank)  # per-rank randomness (masks, noise); weights are built
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate_batched,
                            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                            worker_init_fn=ignore_stop_signals if self.cfg.num_workers else None,
                            generator=torch.Generator().manual_seed(self.cfg.seed + self.rank))
        data = iter(loader)
        if state is not None:  # after the DataLoader exists, so nothing else draws from the restored streams
            restore_rng_state(state["rng"][self.rank % len(state["rng"])])
        return data

    def fit(self) -> dict[str, float]:
        """Train to ``total_steps`` (resuming if asked); returns the last logged values."""
        data = self._start()
        bar = progress(total=self.total_steps, initial=self.step, disable=not (self.is_main and self.cfg.progress),
                   dynamic_ncols=True, desc=self.run_dir.name)
        window = ScalarWindow()
        session_start, elapsed0 = time.perf_counter(), self.elapsed
        cpu_start, cpu0 = time.process_time(), self.cpu_elapsed
        final: dict[str, float] = {}
        saved_step = self.step if self.last_checkpoint is not None else -1
        self.method.train()
        try:
            with StopRequest() as stop:
                while self.step < self.total_steps:
                    batch = to_device(next(data), self.device)
                    lr = float(self.lr_values[self.step])
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    step_logs = self._forward_backward(batch)
                    stop_now = self._optimizer_step(step_logs, stop)  # raises on NaN/Inf
                    self.elapsed = elapsed0 + time.perf_counter() - session_start
                    self.cpu_elapsed = cpu0 + time.process_time() - cpu_start
                    window.add(step_logs)
                    logs: dict[str, float] = {}
                    if self.step % self.cfg.log_every == 0 or self.step == self.total_steps or stop_now:
                        logs = {"lr": lr, **window.pop(self.cfg.global_batch),
                                **({"skipped_steps": float(self.skipped_steps)} if self.skipped_steps else {}),
                                "epoch": self.step / self.steps_per_epoch, "elapsed": self.elapsed,
                                "cpu_elapsed": self.cpu_elapsed}
                        self.logger.log(self.step, logs)
                        bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4g}", lr=f"{lr:.3g}")
                        final = {"step": float(self.step), **logs}
                    bar.update(1)
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step, logs)
                    at_ckpt = self.step % self.cfg.ckpt_every == 0
                    every = self.cfg.image_every  # None: with checkpoints; 0: never
                    last = self.step == self.total_steps  # the final step's images, whatever the period
                    if (every is None and at_ckpt) or (every and self.step % every == 0) or (every != 0 and last):
                        self._log_images(batch)
                    if at_ckpt or stop_now:
                        self.save()
                        saved_step = self.step
                    if stop_now and self.step < self.total_steps:
                        try:
                            stop.exit()
                        except KeyboardInterrupt:  # Ctrl-C: the CLI names the checkpoint and how to continue
                            ckpt = str(self.last_checkpoint) if self.last_checkpoint else None
                            raise Interrupted(self.step, ckpt) from None
                if saved_step != self.step:
                    self.save()
        except RuntimeError as e:  # incl. torch.distributed.DistBackendError: a rank died or went silent
            if self.world_size <= 1:
                raise
            where = f"the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"
            raise UnisslError(f"rank {self.rank}: a collective failed at step {self.step + 1} "
                              f"({str(e).strip().splitlines()[0][:160]}); another rank died or stopped responding "
                              f"(--train.dist-timeout {self.cfg.dist_timeout:g} min); {where}, resume with "
                              f"--train.resume") from None
        finally:
            bar.close()
            self.logger.close()
        if not final and self.is_main:  # nothing left to train: report the last logged values
            records = read_log(self.run_dir / "log.jsonl")
            final = {k: float(v) for k, v in records[-1].items() if isinstance(v, (int, float))} if records else {}
        for cb in self.callbacks:
            cb.on_fit_end(self, final)
        return final
