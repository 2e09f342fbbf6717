"""Crash-safety of the engine: SIGKILL twice mid-run, resume, and get bit-identical weights; SIGTERM saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.toy import ToyConfig, build  # noqa: E402

from unissl.config import parse_config  # noqa: E402
from unissl.engine import Trainer, latest_checkpoint, list_checkpoints, read_log  # noqa: E402

pytestmark = pytest.mark.slow  # subprocess runs: `pytest -m 'not slow'` skips them

SCRIPT = Path(__file__).resolve().parent / "helpers" / "train_toy.py"
# Randomness everywhere a resume can get wrong: input noise (torch RNG), shuffled sampler over several
# epochs (40 samples / 8 per step), AdamW state, warm-up + cosine lr, EMA, grad accumulation.
FLAGS = ["--noise", "0.1", "--train.steps", "26", "--train.ckpt-every", "4", "--train.ema-decay", "0.9",
         "--train.grad-accum", "2", "--train.keep-ckpts", "2", "--train.seed", "7"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run_until(run_dir: Path, kill_at: int | None, sig: int = signal.SIGKILL, resume: bool = False,
               sleep: float = 0.03, extra: tuple[str, ...] = ()) -> tuple[list[int], int]:
    """Start the toy run; send ``sig`` once it printed ``STEP kill_at``. Returns (steps seen, exit code)."""
    cmd = [sys.executable, str(SCRIPT), "--train.run-dir", str(run_dir), "--sleep", str(sleep), *FLAGS, *extra]
    if resume:
        cmd.append("--train.resume")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    steps: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # read to EOF: a process that handles the signal may still print
        if line.startswith("STEP "):
            steps.append(int(line.split()[1]))
            if kill_at is not None and steps[-1] == kill_at:
                os.kill(proc.pid, sig)
    proc.stdout.close()
    rc = proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    if kill_at is None:
        assert rc == 0, stderr
    return steps, rc


def _weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    return load_file(str(ckpt / name))


def test_sigkill_twice_then_resume_is_bit_exact(tmp_path: Path) -> None:
    # Reference: one uninterrupted run (in-process; same code path as the script).
    ref_dir = tmp_path / "ref"
    cfg = parse_config(ToyConfig, ["--train.run-dir", str(ref_dir), *FLAGS])
    method, data = build(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1; reductions depend on it
    try:
        Trainer(method, data, cfg.train).fit()
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "killed"
    steps1, rc1 = _run_until(run, kill_at=10)
    assert rc1 == -signal.SIGKILL and steps1[:10] == list(range(1, 11))
    ck1 = int(latest_checkpoint(run).name.split("_")[1])
    assert ck1 == 4 * (steps1[-1] // 4) >= 8  # killed between checkpoints: the last one survives

    steps2, rc2 = _run_until(run, kill_at=19, resume=True)
    assert rc2 == -signal.SIGKILL
    assert steps2[: 19 - ck1] == list(range(ck1 + 1, 20)), "the second session restarts after the checkpoint"
    ck2 = int(latest_checkpoint(run).name.split("_")[1])
    assert ck2 == 4 * (steps2[-1] // 4) >= 16

    steps3, rc3 = _run_until(run, kill_at=None, resume=True, sleep=0.0)
    assert steps3 == list(range(ck2 + 1, 27))

    ref, got = _weights(ref_dir), _weights(run)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    ref_ema, got_ema = _weights(ref_dir, "ema.safetensors"), _weights(run, "ema.safetensors")
    for k in ref_ema:
        assert torch.equal(ref_ema[k], got_ema[k]), k
    # Only the newest two checkpoints are kept.
    assert [p.name for p in list_checkpoints(run)] == ["step_0000024", "step_0000026"]
    # The log has every step exactly once (records past the resumed checkpoint were dropped), and the
    # logged losses agree with the uninterrupted run.
    log, ref_log = read_log(run / "log.jsonl"), read_log(ref_dir / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 27))
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path: Path) -> None:
    run = tmp_path / "term"
    # With a DataLoader worker: workers ignore the signal, the main process saves and shuts them down.
    steps, rc = _run_until(run, kill_at=6, sig=signal.SIGTERM, sleep=0.2, extra=("--train.num-workers", "1"))
    assert rc == 128 + signal.SIGTERM
    ckpt = latest_checkpoint(run)
    # The handler only sets a flag; the loop saves at the next step boundary (the step being trained).
    assert ckpt is not None and int(ckpt.name.split("_")[1]) in (6, 7)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["step"] == int(ckpt.name.split("_")[1])


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


KILLER = Path(__file__).resolve().parent / "helpers" / "kill_at_step.py"
COMMON = ["--no-train.progress", "--no-train.tensorboard", "--train.num-workers", "0", "--train.ckpt-every", "3",
          "--train.steps", "7", "--train.warmup-steps", "2", "--train.log-every", "1", "--train.image-every", "0"]


def _trainers(root: Path) -> dict[str, list[str]]:
    """Tiny runs of every trainer; inputs are built once in ``root``."""
    from test_reptok_encoders import make_tiny_sorcen_run

    from unissl.cli import main
    from unissl.methods.reptok.tokenizer import RepTokConfig, RepTokTokenizer
    from unissl.tokenizers.vq import VQTokenizer, preset

    torch.manual_seed(0)
    VQTokenizer(preset("digits")).save_pretrained(root / "tok")
    assert main(["tokenize", "--tokenizer", str(root / "tok"), "--out", str(root / "tokens"), "--dataset", "digits",
                 "--splits", "train", "--no-progress"]) == 0
    enc = {"kind": "random", "image_size": 8, "dim": 16, "depth": 1, "heads": 2, "patch": 4}
    RepTokTokenizer(RepTokConfig(encoder=enc, image_size=8, channels=1, decoder="tiny")).save_pretrained(root / "rt")
    sorcen_run = make_tiny_sorcen_run(root / "sorcen-enc")
    return {
        # dead codes restart after 2 idle steps: their ages must survive the kill
        "vq": ["tokenizer", "train", "--dataset", "digits", "--preset", "digits", "--dead-after", "2",
               "--train.global-batch", "16"],
        "sorcen": ["train", "sorcen", "--tokens", str(root / "tokens"), "--preset", "tiny",
                   "--sorcen.echo.warmup", "0.3", "--train.global-batch", "16"],
        "reptok-tokenizer": ["train", "reptok-tokenizer", "--encoder", "sorcen", "--encoder-path", sorcen_run,
                             "--dataset", "digits", "--image-size", "16", "--limit", "64", "--decoder", "tiny",
                             "--train.global-batch", "16"],
        "generator": ["train", "reptok-generator", "--tokenizer", str(root / "rt"), "--dataset", "digits",
                      "--preset", "tiny", "--samples-per-class", "0", "--train.global-batch", "32",
                      "--train.ema-decay", "0.9"],
    }


@pytest.mark.parametrize("kind", ["vq", "sorcen", "reptok-tokenizer", "generator"])
def test_every_trainer_resumes_bit_exactly_after_sigkill(tmp_path: Path, kind: str) -> None:
    """SIGKILL after step 5 (last checkpoint at 3), resume: the final weights (and EMA) equal those of an
    uninterrupted run, bit for bit, for each real trainer (tiny sizes, one thread)."""
    argv = _trainers(tmp_path)[kind] + COMMON

    def run(run_dir: Path, kill_at: int = 0, resume: bool = False) -> int:
        env = dict(_env(), KILL_AT_STEP=str(kill_at))
        cmd = [sys.executable, str(KILLER), *argv, "--train.run-dir", str(run_dir)] + (["--train.resume"] if resume else [])
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240).returncode

    assert run(tmp_path / "straight") == 0
    assert run(tmp_path / "killed", kill_at=5) == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["step_0000003"]
    assert run(tmp_path / "killed", resume=True) == 0
    files = ["model.safetensors"] + (["ema.safetensors"] if kind == "generator" else [])
    for name in files:
        a, b = _weights(tmp_path / "straight", name), _weights(tmp_path / "killed", name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (kind, name, k)
