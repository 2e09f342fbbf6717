"""The training engine: the ``Method`` base class, ``TrainConfig``, ``Trainer`` and their building blocks.

A training command nests ``train: TrainConfig`` in its config and does::

    init_distributed()                    # torchrun env vars; no-op for one process
    seed_everything(cfg.train.seed)       # identical initial weights on every rank
    method = MyMethod(...)                # a Method subclass: forward(batch) -> {"loss": ..., **scalar logs}
    logs = Trainer(method, dataset, cfg.train).fit()
    shutdown_distributed()                # once no collective is left (the ``unissl`` CLI does it for you)

and reads weights back with ``load_weights(module, run_dir_or_checkpoint, ema=False)``.
Run directory: ``checkpoints/step_XXXXXXX/{model,ema}.safetensors + trainer_state.pt``, ``checkpoints/latest``,
``log.jsonl``, ``tb/``, ``images/<name>_step<N>.png``, ``train_info.json`` (git revision per session).
"""

from unissl.engine import dist
from unissl.engine.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from unissl.engine.config import TrainConfig
from unissl.engine.dist import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_mean,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_main,
    shutdown_distributed,
)
from unissl.engine.ema import EMA
from unissl.engine.logger import RunLogger, ScalarWindow, read_log
from unissl.engine.method import Method, load_saved_state, saved_state, unwrap
from unissl.engine.optim import build_optimizer, no_decay_names, param_groups
from unissl.engine.runtime import resolve_device, split_batch, to_device
from unissl.engine.schedule import cosine_schedule, cosine_value, lr_schedule
from unissl.engine.trainer import Callback, Trainer

__all__ = [
    "EMA", "Callback", "Checkpoint", "Method", "RunLogger", "ScalarWindow", "TrainConfig", "Trainer",
    "all_gather_no_grad", "all_gather_with_grad", "all_reduce_mean", "barrier", "build_optimizer",
    "cosine_schedule", "cosine_value", "dist", "get_rank", "get_world_size", "init_distributed",
    "is_main", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_saved_state", "load_weights",
    "lr_schedule",
    "no_decay_names", "param_groups", "read_log", "resolve_checkpoint", "resolve_device", "save_checkpoint", "saved_state",
    "shutdown_distributed", "split_batch", "to_device", "unwrap",
]
