"""The training engine on CPU: schedules, optimizer groups, EMA, checkpoints, grad accumulation, NaN stop."""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.toy import ToyConfig, ToyDataset, ToyMethod, build  # noqa: E402

from unissl.engine import (  # noqa: E402
    EMA,
    Callback,
    Method,
    TrainConfig,
    Trainer,
    all_gather_with_grad,
    build_optimizer,
    cosine_schedule,
    cosine_value,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    lr_schedule,
    no_decay_names,
    read_log,
    save_checkpoint,
    split_batch,
)
from unissl.engine.checkpoint import capture_rng_state, restore_rng_state  # noqa: E402
from unissl.errors import ConfigError, UnisslError  # noqa: E402


def toy_cfg(run_dir: Path, **kw) -> TrainConfig:
    """The toy TrainConfig of tests/helpers with overrides."""
    return replace(ToyConfig().train, run_dir=str(run_dir), **kw)


def fit_toy(run_dir: Path, noise: float = 0.0, nan_at: int = 0, n: int = 40, **kw) -> tuple[ToyMethod, dict]:
    cfg = toy_cfg(run_dir, **kw)
    torch.manual_seed(cfg.seed)
    method = ToyMethod(noise=noise, nan_at=nan_at)
    logs = Trainer(method, ToyDataset(n), cfg).fit()
    return method, logs


# ---------------------------------------------------------------------------------------------- schedules
def test_cosine_schedule_closed_form() -> None:
    base, final, total, warm = 1.0, 0.1, 110, 10
    s = cosine_schedule(base, final, total, warm)
    assert s.shape == (total,)
    # Warm-up is linear and reaches base on its last step: 0.1, 0.2, ..., 1.0.
    np.testing.assert_allclose(s[:warm], np.arange(1, 11) / 10, rtol=0, atol=1e-15)
    assert s[warm] == pytest.approx(base)  # the cosine starts at base...
    assert s[warm + 50] == pytest.approx((base + final) / 2)  # ...is halfway at half of its 100 steps...
    assert s[warm + 25] == pytest.approx(final + (base - final) * (1 + math.sqrt(0.5)) / 2)  # cos(pi/4)
    assert s[-1] == pytest.approx(final + (base - final) * (1 + math.cos(math.pi * 99 / 100)) / 2)
    assert np.all(np.diff(s[warm:]) < 0)
    # The scalar form agrees with the array everywhere and clamps past the end.
    assert [cosine_value(i, base, final, total, warm) for i in range(total)] == pytest.approx(s.tolist())
    assert cosine_value(total + 5, base, final, total, warm) == final
    # Momentum-style rising schedule without warm-up: 0.996 -> 1.0.
    m = cosine_schedule(0.996, 1.0, 100)
    assert m[0] == pytest.approx(0.996) and m[50] == pytest.approx(0.998) and np.all(np.diff(m) > 0)
    lr = lr_schedule(3e-4, 0.0, 20, 4)
    assert lr[:4] == pytest.approx([7.5e-5, 1.5e-4, 2.25e-4, 3e-4])
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, 10, 11)


def test_train_config_lr_scaling_epochs_and_validation() -> None:
    cfg = TrainConfig(global_batch=512, base_lr=1e-4, epochs=2.5, warmup_epochs=0.5)
    assert cfg.peak_lr() == pytest.approx(2e-4)  # base_lr * 512 / 256
    assert replace(cfg, lr=3e-3).peak_lr() == 3e-3
    assert cfg.steps_per_epoch(10_000) == 19  # 10000 // 512 (incomplete batch dropped)
    assert cfg.total_steps(10_000) == math.ceil(2.5 * 19) == 48
    assert cfg.warmup(10_000) == 10
    assert TrainConfig(steps=77).total_steps(10) == 77
    assert TrainConfig(global_batch=64, grad_accum=2).per_rank_batch(4) == 16
    with pytest.raises(UnisslError, match="divisible"):
        TrainConfig(global_batch=64, grad_accum=4).per_rank_batch(3)
    with pytest.raises(UnisslError, match="fewer than train.global_batch"):
        TrainConfig(global_batch=64).steps_per_epoch(10)
    for bad in ({"steps": 0}, {"global_batch": -1}, {"base_lr": 0.0}, {"global_batch": 10, "grad_accum": 3},
                {"betas": (0.9, 1.5)}, {"ema_decay": 1.0}, {"weight_decay": -0.1}, {"min_lr": 1.0}):
        with pytest.raises(ConfigError) as info:  # names the field; the command's config adds "train."
            TrainConfig(**bad)
        assert info.value.path == next(iter(bad)), bad


# ---------------------------------------------------------------------------------------------- optimizer
class GroupNet(Method):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied to the embedding: no decay either
        self.pos = nn.Parameter(torch.zeros(3, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def test_optimizer_groups() -> None:
    net = GroupNet()
    assert no_decay_names(net) == {"emb.weight", "proj.bias", "norm.weight", "norm.bias", "pos"}
    opt = build_optimizer(net, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    by_id = {id(p): n for n, p in net.named_parameters()}
    groups = {g["group"]: ({by_id[id(p)] for p in g["params"]}, g["weight_decay"]) for g in opt.param_groups}
    assert groups["decay"] == ({"proj.weight"}, 0.1)
    assert groups["no_decay"] == ({"emb.weight", "proj.bias", "norm.weight", "norm.bias", "pos"}, 0.0)
    assert all(not n.startswith("frozen") for names, _ in groups.values() for n in names)
    assert opt.defaults["betas"] == (0.9, 0.99)

    class Bad(GroupNet):
        def no_weight_decay(self) -> set[str]:
            return {"does_not_exist"}
    with pytest.raises(ValueError, match="does_not_exist"):
        build_optimizer(Bad(), 1e-3, 0.1)


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_matches_naive_loop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    net.register_buffer("scratch", torch.zeros(2), persistent=False)  # never saved, so not averaged
    ema = EMA(net, decay=0.9, warmup=False)
    assert "scratch" not in ema.shadow and set(ema.shadow) == set(net.state_dict())
    naive = {k: v.clone().double() for k, v in net.state_dict().items() if v.is_floating_point()}
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(4, 3))  # moves the BatchNorm running statistics
        ema.update(net)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                naive[k] = 0.9 * naive[k] + 0.1 * v.double()
    for k, v in naive.items():
        torch.testing.assert_close(ema.shadow[k].double(), v, rtol=0, atol=1e-6)
    assert torch.equal(ema.shadow["1.num_batches_tracked"], net.state_dict()["1.num_batches_tracked"])

    live = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.swapped(net):
        assert torch.equal(net[0].weight, ema.shadow["0.weight"])
    assert all(torch.equal(live[k], v) for k, v in net.state_dict().items())
    other = EMA(net, decay=0.5)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    ema.copy_to(net)
    assert torch.equal(net[0].bias, ema.shadow["0.bias"])


def test_ema_warmup_matches_naive_loop_and_forgets_the_init() -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    init = {k: v.clone().double() for k, v in net.state_dict().items()}
    ema = EMA(net, decay=0.999)  # warm-up on by default
    naive = {k: v.clone() for k, v in init.items()}
    share = 1.0
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.999, (1 + n) / (10 + n))
        share *= d
        ema.update(net)
        for k, v in net.state_dict().items():
            naive[k] = d * naive[k] + (1 - d) * v.double()
    for k, v in naive.items():
        torch.testing.assert_close(ema.shadow[k].double(), v, rtol=0, atol=1e-5)
    assert ema.updates == 30 and ema.init_share() == pytest.approx(share, rel=1e-9)
    assert ema.init_share() < 1e-6  # 9! 30! / 39!
    # without warm-up the share is decay^n, the trap the trainer refuses (0.999^1000 = 37%)
    assert EMA(net, 0.999, warmup=False).init_share(1000) == pytest.approx(0.999 ** 1000)
    from unissl.engine.ema import init_share
    assert init_share(0.999, 10**5) < 1e-40
    assert init_share(0.9, 5) == pytest.approx(math.prod((1 + n) / (10 + n) for n in range(5)))


def test_trainer_refuses_an_ema_that_keeps_the_init(tmp_path: Path) -> None:
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), steps=100, global_batch=8, ema_decay=0.999, ema_warmup=False,
                      num_workers=0, tensorboard=False, progress=False)
    with pytest.raises(UnisslError, match=r"90\.5% of the initial weights"):
        Trainer(ToyMethod(), list(range(16)), cfg)
    assert not (tmp_path / "r").exists()


def test_hooks_are_typed_methods_with_no_op_defaults(tmp_path: Path) -> None:
    """A Method that overrides no hook trains (every hook is a no-op default, nothing is looked up by name);
    a module that is not a Method is refused before anything is written."""
    class Bare(Method):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(8))

        def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"loss": (batch["x"] @ self.w - batch["y"]).pow(2).mean()}

    bare = Bare()
    assert (bare.no_weight_decay(), bare.decays_embeddings(), bare.lr_scales(), bare.log_images({}),
            bare.frozen_state_prefixes(), bare.compile_networks()) == (set(), False, {}, {}, (), None)
    cfg = TrainConfig(run_dir=str(tmp_path / "bare"), steps=20, global_batch=8, num_workers=0, tensorboard=False,
                      progress=False, warmup_steps=0, lr=0.05, ckpt_every=10)
    data = ToyDataset(64)
    full = data.__getitems__(list(range(64)))
    first = bare(full)["loss"].item()
    Trainer(bare, data, cfg).fit()
    with torch.no_grad():
        assert bare(full)["loss"].item() < 0.5 * first  # trained through the default hooks
    with pytest.raises(TypeError, match="needs a unissl.engine.Method, got Linear"):
        Trainer(nn.Linear(2, 1), list(range(16)), replace(cfg, run_dir=str(tmp_path / "linear")))
    assert not (tmp_path / "linear").exists()


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_tied_weights_rng_and_corruption(tmp_path: Path) -> None:
    net = GroupNet()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    state = {"step": 5, "rng": [rng], "optimizer": build_optimizer(net, 1e-3, 0.1).state_dict()}
    stale = tmp_path / "checkpoints" / ".step_0000003.abc.tmp"  # left by a writer killed mid-save
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    for step in (5, 10, 15):
        path = save_checkpoint(tmp_path, step, net.state_dict(), state, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010", "step_0000015"]
    assert not stale.exists()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000015" == path.name

    ck = load_checkpoint(tmp_path)  # a run directory resolves to its latest checkpoint
    assert ck.path == path and ck.ema is None
    restore_rng_state(ck.trainer_state["rng"][0])  # loaded with weights_only=True
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    fresh = GroupNet()
    load_weights(fresh, path)
    assert torch.equal(fresh.emb.weight, net.emb.weight) and fresh.head.weight is fresh.emb.weight
    with pytest.raises(UnisslError, match="ema"):
        load_weights(fresh, path, ema=True)
    with pytest.raises(UnisslError, match="do not fit"):
        load_weights(nn.Linear(2, 2), path)

    # A dangling `latest` falls back to the newest complete directory; a corrupt file is named.
    (tmp_path / "checkpoints" / "latest").write_text("step_0000099\n")
    assert latest_checkpoint(tmp_path) == path
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UnisslError, match=r"model\.safetensors is corrupt"):
        load_checkpoint(path)
    (path / "trainer_state.pt").write_bytes(b"garbage")
    older = list_checkpoints(tmp_path)[0]
    (older / "trainer_state.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UnisslError, match=r"trainer_state\.pt is corrupt"):
        load_checkpoint(older)
    (older / "model.safetensors").unlink()
    with pytest.raises(UnisslError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- trainer
def test_split_batch() -> None:
    b = {"x": torch.arange(8).reshape(4, 2), "caption": ["a", "b", "c", "d"], "flag": 3}
    parts = split_batch(b, 2)
    assert torch.equal(parts[1]["x"], torch.tensor([[4, 5], [6, 7]])) and parts[1]["caption"] == ["c", "d"]
    assert parts[0]["flag"] == 3
    with pytest.raises(UnisslError, match="micro-batches"):
        split_batch({"x": torch.zeros(3)}, 2)


def test_grad_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    # 2 micro-batches of 4 (loss / 2 each) == 1 batch of 8, for several AdamW steps with clipping.
    a, _ = fit_toy(tmp_path / "a", grad_accum=2, steps=6, clip_grad=0.5)
    b, _ = fit_toy(tmp_path / "b", grad_accum=1, steps=6, clip_grad=0.5)
    c, _ = fit_toy(tmp_path / "c", grad_accum=4, steps=6, clip_grad=0.5)
    for (k, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=k)
        torch.testing.assert_close(pc, pb, rtol=0, atol=1e-6, msg=k)
    init = build(ToyConfig())[0]
    assert not torch.allclose(init.net[0].weight, b.net[0].weight, atol=1e-3)


def test_training_lowers_the_loss_and_logs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    method, logs = fit_toy(run, steps=60, n=64, base_lr=0.5 * 256 / 8, warmup_steps=5, min_lr=1e-3,
                           ckpt_every=30, log_every=5, tensorboard=True)
    log = read_log(run / "log.jsonl")
    assert [r["step"] for r in log] == list(range(5, 61, 5))
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < 0.25 * first, (first, last)
    assert logs["loss"] == last and logs["step"] == 60
    for key in ("lr", "loss", "abs_err", "grad_norm", "samples_per_s", "epoch", "elapsed"):
        assert key in log[-1]
    assert log[0]["lr"] == pytest.approx(0.5)  # peak: base_lr * 8 / 256 = 0.5 reached at the warm-up end
    assert log[-1]["epoch"] == pytest.approx(60 / 8)
    assert (run / "images" / "inputs_step30.png").is_file() and (run / "images" / "inputs_step60.png").is_file()
    assert any((run / "tb").iterdir())
    assert int(method.steps_done) == 60  # the on_train_step_end hook ran after every step
    assert (run / "train_info.json").is_file()
    # The saved weights are the trained ones; re-running into the same directory without --resume is refused.
    saved = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert torch.equal(saved["net.0.weight"], method.net[0].weight)
    with pytest.raises(UnisslError, match="already holds checkpoints"):
        fit_toy(run, steps=60)
    # Resuming a finished run does nothing more; raising --steps continues from the last checkpoint.
    _, again = fit_toy(run, steps=60, n=64, resume=True)
    assert again == logs  # nothing left to do: the last logged values
    _, more = fit_toy(run, steps=64, n=64, resume=True, log_every=1)
    assert more["step"] == 64 and [r["step"] for r in read_log(run / "log.jsonl")][-5:] == [60, 61, 62, 63, 64]
    with pytest.raises(UnisslError, match="no checkpoint found"):
        fit_toy(tmp_path / "other", resume_from=str(tmp_path / "missing"))
    save_checkpoint(tmp_path / "converted", 0, method.state_dict(), {"step": 0})
    with pytest.raises(UnisslError, match="no training state"):
        fit_toy(tmp_path / "other", resume_from=str(tmp_path / "converted"))


def test_ema_weights_are_saved_and_loadable(tmp_path: Path) -> None:
    run = tmp_path / "ema"
    method, _ = fit_toy(run, steps=5, ema_decay=0.5, ckpt_every=5)
    # Naive EMA of the weights after each step, recomputed from a run that records them.
    weights: list[torch.Tensor] = []

    class Record(Callback):
        def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
            weights.append(trainer.method.net[0].weight.detach().clone())

    cfg = toy_cfg(tmp_path / "ema2", steps=5, ema_decay=0.5, ckpt_every=5)
    torch.manual_seed(cfg.seed)
    m2 = ToyMethod()
    shadow = m2.net[0].weight.detach().clone()
    Trainer(m2, ToyDataset(40), cfg, callbacks=[Record()]).fit()
    for n, w in enumerate(weights):  # the warmed-up decay min(0.5, (1 + n) / (10 + n))
        d = min(0.5, (1 + n) / (10 + n))
        shadow = d * shadow + (1 - d) * w
    loaded = ToyMethod()
    load_weights(loaded, run, ema=True)
    torch.testing.assert_close(loaded.net[0].weight, shadow, rtol=0, atol=1e-6)
    assert not torch.allclose(loaded.net[0].weight, method.net[0].weight)
    load_weights(loaded, run)
    assert torch.equal(loaded.net[0].weight, method.net[0].weight)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "nan"
    with pytest.raises(UnisslError) as info:
        fit_toy(run, nan_at=8, steps=20, ckpt_every=3)
    msg = str(info.value)
    assert "loss became nan at step 8" in msg and "step_0000006" in msg
    # a sudden NaN (the loss was on its trend up to it): the healthy checkpoint is the last one, skip past it
    assert "the last healthy checkpoint is" in msg and "--train.resume --train.on-nonfinite skip" in msg
    assert [p.name for p in list_checkpoints(run)] == ["step_0000003", "step_0000006"]
    ck = load_checkpoint(run)
    assert ck.trainer_state["step"] == 6
    assert all(torch.isfinite(v).all() for v in ck.model.values() if v.is_floating_point())
    assert max(r["step"] for r in read_log(run / "log.jsonl")) == 7
    # Before any checkpoint the message says so.
    with pytest.raises(UnisslError, match="no healthy checkpoint was written yet"):
        fit_toy(tmp_path / "early", nan_at=2, steps=20, ckpt_every=10)


def test_nonfinite_weights_are_never_checkpointed_and_the_named_checkpoint_resumes(tmp_path: Path) -> None:
    """An overflow that reaches the weights (or Adam's moments) before the loss shows it: the checkpoint
    due at that step is refused, the message names the last finite one, and that one resumes at a lower lr."""

    class Overflow(ToyMethod):
        def on_train_step_end(self, step: int, total_steps: int) -> None:
            super().on_train_step_end(step, total_steps)
            if step == 4:
                with torch.no_grad():
                    self.net[0].weight[0, 0] = float("inf")

    run = tmp_path / "overflow"
    cfg = toy_cfg(run, steps=8, ckpt_every=2)
    torch.manual_seed(cfg.seed)
    with pytest.raises(UnisslError) as info:
        Trainer(Overflow(), ToyDataset(40), cfg).fit()
    msg = str(info.value)
    assert "non-finite by step 4" in msg and "step_0000002" in msg
    # the last healthy checkpoint at a tenth of the rate it was healthy at (step 2 of a 3-step warm-up to 0.05)
    assert f"--train.resume-from {run / 'checkpoints' / 'step_0000002'} --train.lr 0.00333" in msg, msg
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]
    ck = load_checkpoint(run)
    assert all(torch.isfinite(v).all() for v in ck.model.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for st in ck.trainer_state["optimizer"]["state"].values()
               for v in st.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    # the named checkpoint resumes under the advised lower learning rate and trains to the end
    resumed = toy_cfg(run, steps=8, ckpt_every=2, resume=True, lr=1e-4)
    method = ToyMethod()
    logs = Trainer(method, ToyDataset(40), resumed).fit()
    assert math.isfinite(logs["loss"]) and all(torch.isfinite(p).all() for p in method.parameters())


def test_single_process_dist_helpers_are_identities() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def test_bf16_autocast_on_cpu_is_opt_in(tmp_path: Path) -> None:
    """--train.amp bf16 runs the forward under CPU bf16 autocast; weights and checkpoints stay fp32."""
    seen: list[torch.dtype] = []

    class Probe(ToyMethod):
        def forward(self, batch):
            seen.append(self.net[0](batch["x"]).dtype)
            return super().forward(batch)

    for amp, expected in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        seen.clear()
        cfg = toy_cfg(tmp_path / amp, steps=3, amp=amp)
        torch.manual_seed(cfg.seed)
        method = Probe()
        logs = Trainer(method, ToyDataset(40), cfg).fit()
        assert seen and set(seen) == {expected} and math.isfinite(logs["loss"])
        assert all(p.dtype == torch.float32 for p in method.parameters())
        state = load_file(str(latest_checkpoint(tmp_path / amp) / "model.safetensors"))
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        info = json.loads((tmp_path / amp / "train_info.json").read_text())
        assert info[-1]["amp"] == ("bf16" if amp == "bf16" else "fp32")


def test_thread_policy_defaults_to_one_thread_on_cpu(monkeypatch) -> None:
    from unissl.engine.trainer import choose_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert choose_threads(None) == (1, "default for CPU") and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert choose_threads(None) == (2, "OMP_NUM_THREADS") and torch.get_num_threads() == 2
        assert choose_threads(1) == (1, "--train.threads") and torch.get_num_threads() == 1  # the flag wins
    finally:
        torch.set_num_threads(before)


def test_crash_leftovers_never_pass_for_checkpoints_and_files_keep_the_umask(tmp_path: Path) -> None:
    import os
    import subprocess

    from unissl.utils.io import atomic_dir, atomic_file, remove_stale_temporaries

    run = tmp_path / "run"
    fit_toy(run, steps=4, ckpt_every=2)
    root = run / "checkpoints"
    # a kill while an old checkpoint was being pruned: a step folder without its weights
    (root / "step_0000003").mkdir()
    (root / "step_0000003" / "trainer_state.pt").write_bytes(b"partial")
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002", "step_0000004"]
    assert latest_checkpoint(run).name == "step_0000004"
    (root / "latest").write_text("step_0000003\n")  # even when `latest` names it
    assert latest_checkpoint(run).name == "step_0000004"
    # a token store directory left half-written by a killed `unissl tokenize`: removed by the next writer
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".store.{dead.pid}.abc.tmp"
    stale.mkdir()
    live = tmp_path / f".store.{os.getpid()}.xyz.tmp"
    live.mkdir()
    with atomic_dir(tmp_path / "store") as d:
        (d / "meta.json").write_text("{}")
    assert not stale.exists() and live.exists()  # a live writer's directory is kept
    assert remove_stale_temporaries(tmp_path / "store") == []
    # atomic files and directories get 0666 / 0777 minus the umask, as a plain open / mkdir would
    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "f.txt", "w") as f:
            f.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    # an impossible output path is one line naming it
    (tmp_path / "file").write_text("")
    with pytest.raises(UnisslError, match="a parent of it is a file"):
        with atomic_file(tmp_path / "file" / "x.json", "w") as f:
            f.write("{}")


def test_logs_record_cpu_seconds_next_to_wall_clock(tmp_path: Path) -> None:
    _, logs = fit_toy(tmp_path / "cpu", steps=6, ckpt_every=3)
    assert 0.0 < logs["cpu_elapsed"] and logs["elapsed"] > 0.0
    ck = load_checkpoint(tmp_path / "cpu")
    assert ck.trainer_state["cpu_elapsed"] == pytest.approx(read_log(tmp_path / "cpu" / "log.jsonl")[-1]["cpu_elapsed"])


# ---------------------------------------------------------------------------------------------- W&B
def test_wandb_mirrors_every_record_offline(tmp_path, monkeypatch) -> None:
    """`--train.wandb`: one offline W&B run in run_dir/wandb, the same scalars and steps as log.jsonl, a
    stable id across a resume; without the package, a one-line error before anything is written."""
    import types

    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class FakeRun:
        def log(self, data, step=None):
            calls["log"].append((step, dict(data)))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or FakeRun()  # type: ignore[attr-defined]
    fake.Image = lambda path: ("image", path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "run"
    fit_toy(run, wandb=True, log_every=5, steps=10)
    (init,) = calls["init"]
    assert init["mode"] == "offline" and init["dir"] == str(run) and init["project"] == "unissl"
    assert init["config"]["train"]["steps"] == 10 and init["config"]["method"] == "ToyMethod"
    jsonl = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scalar_logs = [(step, data) for step, data in calls["log"] if not any(isinstance(v, tuple) for v in data.values())]
    assert [s for s, _ in scalar_logs] == [r["step"] for r in jsonl]
    for (_, data), rec in zip(scalar_logs, jsonl):
        assert data["loss"] == pytest.approx(rec["loss"])
    assert calls["finish"] == [True]
    fit_toy(run, wandb=True, log_every=5, steps=20, resume=True)  # a resumed run continues the same W&B run
    assert calls["init"][1]["id"] == init["id"] and calls["init"][1]["resume"] == "allow"
    # no package: refused in one line, nothing written
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UnisslError, match=r"pip install 'unissl\[wandb\]'"):
        fit_toy(tmp_path / "run2", wandb=True)
    assert not (tmp_path / "run2").exists()


def _toy_cli(argv: list[str]) -> dict:
    """What `python tests/helpers/train_toy.py ARGV` does, in-process: parse, build, fit."""
    from helpers.toy import ToyConfig, build

    from unissl.config import parse_config

    cfg = parse_config(ToyConfig, argv)
    method, data = build(cfg)
    logs = Trainer(method, data, cfg.train).fit()
    return {"logs": logs, "method": method, "cfg": cfg}


def _advice(message: str) -> list[str]:
    """The command-line flags the error's advice names (after its last `:`), as argv tokens."""
    import re
    import shlex

    tail = message.rsplit("to continue", 1)[-1]
    flags = re.findall(r"--train\.[a-z-]+(?: (?!--)[\w.+-]+)?", tail.split("(")[0].split(";")[0])
    return [tok for f in flags for tok in shlex.split(f)]


def test_nan_advice_resumes_past_the_diverged_step(tmp_path: Path) -> None:
    """A corrupt record (an infinite target) makes every batch that holds it non-finite. Before the fix the
    message advised `--train.base-lr` (ignored: the run sets --train.lr) and a resume replays the same data
    order, so following it diverged again at the same step. Now the printed flags continue the run from the
    named checkpoint past that step; exactly the batches holding the record are skipped (closed form from the
    sampler), and the weights stay finite."""
    from unissl.data.sampler import ShardedBatchSampler

    run = tmp_path / "nan"
    argv = ["--train.run-dir", str(run), "--poison", "13", "--train.steps", "20", "--train.ckpt-every", "2",
            "--train.lr", "0.05", "--train.log-every", "1"]
    with pytest.raises(UnisslError) as info:
        _toy_cli(argv)
    msg = str(info.value)
    batches = list(itertools.islice(iter(ShardedBatchSampler(40, 8, seed=0)), 20))  # the run's data order
    holding = [i + 1 for i, b in enumerate(batches) if 13 in b]  # 1-based steps whose batch holds the record
    first = holding[0]
    assert f"loss became inf at step {first}" in msg or f"loss became nan at step {first}" in msg, msg
    assert "--train.base-lr" not in msg  # the run sets --train.lr: that is the flag that lowers its rate
    flags = _advice(msg)
    assert "--train.resume" in flags, msg
    out = _toy_cli(argv + flags)  # resumes from the last good checkpoint named in the message
    assert out["logs"]["step"] == 20 and math.isfinite(out["logs"]["loss"])
    assert all(torch.isfinite(p).all() for p in out["method"].parameters())
    ck = load_checkpoint(run)
    assert ck.trainer_state["step"] == 20 and ck.trainer_state["skipped_steps"] == len(holding)
    records = read_log(run / "log.jsonl")
    assert max(r["step"] for r in records) == 20
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r["step"] for r in records if r.get("skipped_steps", 0) > 0][0] == first


def test_lower_lr_advice_names_the_flag_that_sets_the_rate() -> None:
    """`--train.lr` overrides `--train.base-lr`: the advice to lower the rate names the one this run uses."""
    assert TrainConfig(lr=0.004).lower_lr_flag() == "--train.lr 0.002"
    assert TrainConfig(base_lr=1.5e-4).lower_lr_flag() == "--train.base-lr 7.5e-05"


def test_skipping_stops_after_max_skips_with_the_lower_rate_advice(tmp_path: Path) -> None:
    """A divergence that persists (every step non-finite) is not hidden by skipping: after max_skips in a row
    the run stops, names the last good checkpoint and the flag that lowers this run's rate."""
    with pytest.raises(UnisslError) as info:
        fit_toy(tmp_path / "persist", nan_at=5, steps=20, ckpt_every=2, lr=0.05, on_nonfinite="skip", max_skips=3)
    msg = str(info.value)
    assert "loss became nan at step 8" in msg and "step_0000006" in msg and "--train.lr 0.005" in msg, msg
    assert [p.name for p in list_checkpoints(tmp_path / "persist")][-1] == "step_0000006"  # skipped steps change nothing


def test_images_are_logged_at_the_last_step_too(tmp_path):
    """A report shows the final step's images: a period that does not divide the run still logs the last step."""
    fit_toy(tmp_path / "a", steps=7, ckpt_every=5)  # images with checkpoints: step 5, then the last step
    assert sorted(p.name for p in (tmp_path / "a" / "images").glob("*.png")) == ["inputs_step5.png",
                                                                             "inputs_step7.png"]
    fit_toy(tmp_path / "b", steps=7, ckpt_every=5, image_every=3)
    assert sorted(p.name for p in (tmp_path / "b" / "images").glob("*.png")) == [
        "inputs_step3.png", "inputs_step6.png", "inputs_step7.png"]
    fit_toy(tmp_path / "c", steps=7, ckpt_every=5, image_every=0)  # 0: never
    assert not list((tmp_path / "c").glob("images/*.png"))
