"""Two-process (gloo) runs: the differentiable all-gather and DDP training match single-process math."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.toy import ToyConfig, build  # noqa: E402

from unissl.config import parse_config  # noqa: E402
from unissl.engine import Trainer, latest_checkpoint, read_log  # noqa: E402

pytestmark = pytest.mark.slow  # torchrun subprocesses: `pytest -m 'not slow'` skips them

HELPER = Path(__file__).resolve().parent / "helpers" / "ddp_check.py"
# 2 ranks x 2 micro-batches of 2 = global batch 8; the reference is 1 process, 1 micro-batch of 8.
DDP_FLAGS = ["--train.steps", "12", "--train.grad-accum", "2", "--train.ckpt-every", "6", "--train.ema-decay", "0.9"]
REF_FLAGS = ["--train.steps", "12", "--train.grad-accum", "1", "--train.ckpt-every", "6", "--train.ema-decay", "0.9"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(HELPER), str(tmp_path), *DDP_FLAGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # (c) the all-gather keeps gradients: equal to single-process references (float64).
    res = json.loads((tmp_path / "gather.json").read_text())
    assert res["world"] == 2
    for key in ("forward", "local_mean", "shared_loss", "uneven_forward", "uneven_sum"):
        assert res[key] < 1e-12, (key, res[key])

    # (b) DDP training with the same global batch gives the weights of a one-process run.
    ref_dir = tmp_path / "ref"
    cfg = parse_config(ToyConfig, ["--train.run-dir", str(ref_dir), *REF_FLAGS])
    method, data = build(cfg)
    Trainer(method, data, cfg.train).fit()
    ddp_ckpt, ref_ckpt = latest_checkpoint(tmp_path / "run"), latest_checkpoint(ref_dir)
    assert ddp_ckpt.name == ref_ckpt.name == "step_0000012"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(ddp_ckpt / name)), load_file(str(ref_ckpt / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"{name}:{k}")
    # The weights moved (so the comparison is not trivially true) and rank 0 alone wrote the logs.
    init = build(cfg)[0].state_dict()
    assert not torch.allclose(init["net.0.weight"], load_file(str(ddp_ckpt / "model.safetensors"))["net.0.weight"])
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    ref_log = read_log(ref_dir / "log.jsonl")
    for r, q in zip(log, ref_log):
        assert abs(r["loss"] - q["loss"]) < 1e-5 and r["lr"] == q["lr"]
    # (d) under DDP: a NaN on rank 1 alone stops both ranks at step 5 with the step-3 checkpoint intact.
    for rank in (0, 1):
        msg = (tmp_path / f"nan_rank{rank}.txt").read_text()
        assert "loss became nan at step 5" in msg and "step_0000003" in msg, msg
    assert latest_checkpoint(tmp_path / "nan").name == "step_0000003"
    state = torch.load(ddp_ckpt / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_a_rank_that_stops_responding_ends_the_job_within_the_timeout(tmp_path: Path) -> None:
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    helper = Path(__file__).resolve().parent / "helpers" / "ddp_hang.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(helper), str(tmp_path), "--train.steps", "10", "--train.dist-timeout", "0.1"]  # 6 s
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=110)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0 and elapsed < 100  # not the sleeping rank's 120 s, nor torch's 30 min
    msg = (tmp_path / "rank0.txt").read_text()
    assert msg.startswith("rank 0: a collective failed at step 4") and "--train.dist-timeout 0.1 min" in msg
    assert "\n" not in msg
