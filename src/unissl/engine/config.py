"""``TrainConfig``: every knob of the training loop, in one dataclass.

Methods nest it as ``train: TrainConfig`` in their command's config, so its flags read ``--train.steps``,
``--train.base-lr`` and so on. Quantities that depend on the dataset or the number of processes (steps
from epochs, warm-up from epochs, the per-rank batch) are resolved by the helpers below at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from unissl.config import arg
from unissl.engine.runtime import device_arg
from unissl.errors import ConfigError, UnisslError


@dataclass
class TrainConfig:
    """Optimisation, checkpointing and logging settings shared by every training command."""

    run_dir: str = arg("runs/default", output="dir", help="run directory (checkpoints, logs, images)")
    steps: int = arg(1000, help="optimizer steps (ignored when --train.epochs is set)")
    epochs: float | None = arg(None, help="train for this many passes over the dataset instead of --train.steps")
    global_batch: int = arg(256, help="samples per optimizer step over all processes and accumulation steps")
    grad_accum: int = arg(1, help="micro-batches per optimizer step (per-rank batch = global/world/grad_accum)")
    base_lr: float = arg(1.5e-4, help="learning rate per 256 samples: lr = base_lr * global_batch / 256")
    lr: float | None = arg(None, help="absolute peak learning rate (overrides --train.base-lr)")
    min_lr: float = arg(0.0, help="learning rate at the end of the cosine decay")
    weight_decay: float = arg(0.05, help="AdamW weight decay (not applied to biases, norms, embeddings)")
    betas: tuple[float, float] = arg((0.9, 0.95), help="AdamW betas")
    warmup_steps: int = arg(0, help="linear warm-up steps (ignored when --train.warmup-epochs is set)")
    warmup_epochs: float | None = arg(None, help="linear warm-up length in epochs")
    clip_grad: float | None = arg(1.0, help="clip the global gradient norm to this value (none: no clipping)")
    on_nonfinite: Literal["stop", "skip"] = arg("stop", help="a step whose loss or gradient norm is NaN/Inf: stop "
                                                "(the last checkpoint stays the good state) or skip it (no update; "
                                                "the batch is consumed, the schedule moves on)")
    max_skips: int = arg(10, help="with --train.on-nonfinite skip: stop after this many non-finite steps in a row")
    ema_decay: float | None = arg(None, help="keep an exponential moving average of the weights with this decay")
    ema_warmup: bool = arg(True, help="warm the EMA decay up as min(decay, (1+n)/(10+n)) so that the shadow "
                                      "forgets the initial weights; without it a run whose decay^steps leaves "
                                      "more than 1% of them is refused")
    ckpt_every: int = arg(1000, help="save a checkpoint every this many steps (and always at the end)")
    keep_ckpts: int = arg(3, help="number of most recent checkpoints to keep")
    log_every: int = arg(10, help="write a log line every this many steps")
    image_every: int | None = arg(None, help="call the method's log_images every this many steps "
                                               "(none: at checkpoints; either way also at the last step; 0: never)")
    seed: int = arg(0, help="random seed (offset by the rank for per-process randomness)")
    resume: bool = arg(False, help="continue from the latest checkpoint in the run directory if there is one")
    resume_from: str | None = arg(None, help="continue from this checkpoint directory (or run directory)")
    device: str = device_arg(what="training device")
    amp: Literal["auto", "bf16", "fp32"] = arg("auto", help="autocast precision: auto = bf16 on CUDA, fp32 on CPU; "
                                                             "bf16 = bf16 autocast on CPU too (opt-in)")
    compile: bool = arg(False, help="torch.compile the method's networks (its compile_networks hook) or the "
                                    "whole method; CPU needs a C++ compiler")
    threads: int | None = arg(None, help="intra-op CPU threads per process (default: OMP_NUM_THREADS if set, else 1: "
                                         "the shipped CPU presets are too small to gain from more, and a "
                                         "shared machine loses 4-16x when threads oversubscribe)")
    num_workers: int = arg(4, help="DataLoader worker processes per rank")
    find_unused_parameters: bool = arg(False, help="DDP: allow parameters that get no gradient in a step")
    dist_timeout: float = arg(5.0, help="minutes a collective waits for a rank that stopped responding before "
                                        "the job ends with an error (torch's default is 30)")
    tensorboard: bool = arg(True, help="also write TensorBoard scalars/images to run_dir/tb")
    wandb: bool = arg(False, help="also log scalars and image grids to Weights & Biases (pip install 'unissl[wandb]')")
    wandb_project: str = arg("unissl", help="W&B project")
    wandb_mode: Literal["offline", "online"] = arg("offline", help="W&B mode: offline (files under run_dir/wandb, "
                                                                   "`wandb sync` later) or online")
    progress: bool = arg(True, help="report progress (rank 0): a bar on a terminal, else a short line every tenth or 30 s; UNISSL_PROGRESS=0 silences every bar")

    def __post_init__(self) -> None:
        def positive(name: str, value: float | None, allow_none: bool = False, allow_zero: bool = False) -> None:
            if value is None and allow_none:
                return
            ok = value is not None and (value >= 0 if allow_zero else value > 0)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                kind = "non-negative" if allow_zero else "positive"
                raise ConfigError(name, f"must be {kind}, got {value!r}")

        positive("steps", self.steps)
        positive("epochs", self.epochs, allow_none=True)
        positive("global_batch", self.global_batch)
        positive("grad_accum", self.grad_accum)
        positive("base_lr", self.base_lr)
        positive("lr", self.lr, allow_none=True)
        positive("min_lr", self.min_lr, allow_zero=True)
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("warmup_steps", self.warmup_steps, allow_zero=True)
        positive("warmup_epochs", self.warmup_epochs, allow_none=True, allow_zero=True)
        positive("clip_grad", self.clip_grad, allow_none=True)
        positive("ckpt_every", self.ckpt_every)
        positive("keep_ckpts", self.keep_ckpts)
        positive("log_every", self.log_every)
        positive("image_every", self.image_every, allow_none=True, allow_zero=True)
        positive("num_workers", self.num_workers, allow_zero=True)
        positive("threads", self.threads, allow_none=True)
        positive("dist_timeout", self.dist_timeout)
        positive("max_skips", self.max_skips)
        if self.global_batch % self.grad_accum:
            raise ConfigError("global_batch", f"{self.global_batch} is not divisible by grad_accum={self.grad_accum}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {list(self.betas)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError("ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        if self.min_lr > self.peak_lr():
            raise ConfigError("min_lr", f"{self.min_lr} is above the peak lr {self.peak_lr():g}; lower it")

    def lower_lr_flag(self, factor: float = 0.5) -> str:
        """The flag that lowers this run's peak learning rate by ``factor``: ``--train.lr`` when the run sets it
        (it overrides ``--train.base-lr``), else ``--train.base-lr``."""
        if self.lr is not None:
            return f"--train.lr {self.lr * factor:.3g}"
        return f"--train.base-lr {self.base_lr * factor:.3g}"

    def peak_lr(self) -> float:
        """The peak learning rate: ``lr`` if given, else ``base_lr * global_batch / 256`` (linear scaling)."""
        return self.lr if self.lr is not None else self.base_lr * self.global_batch / 256

    def steps_per_epoch(self, dataset_len: int) -> int:
        """Optimizer steps in one pass over ``dataset_len`` samples (incomplete batches are dropped)."""
        if dataset_len < self.global_batch:
            raise UnisslError(f"the dataset has {dataset_len} samples, fewer than train.global_batch="
                              f"{self.global_batch}; lower the batch size")
        return dataset_len // self.global_batch

    def total_steps(self, dataset_len: int) -> int:
        """The number of optimizer steps: ``steps``, or ``epochs`` converted with the dataset length."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch(dataset_len)))

    def warmup(self, dataset_len: int) -> int:
        """Warm-up steps: ``warmup_steps``, or ``warmup_epochs`` converted with the dataset length."""
        if self.warmup_epochs is None:
            return self.warmup_steps
        return math.ceil(self.warmup_epochs * self.steps_per_epoch(dataset_len))

    def per_rank_batch(self, world_size: int) -> int:
        """Samples each process loads per optimizer step; checks the global batch splits evenly."""
        if self.global_batch % (world_size * self.grad_accum):
            raise UnisslError(f"train.global_batch={self.global_batch} must be divisible by world size x "
                              f"grad_accum = {world_size} x {self.grad_accum}; change one of them")
        return self.global_batch // world_size
