"""After a divergence, the printed advice, followed literally, gets the run going again.

A deep linear net trained at an absurd peak rate (10, warmed up over the run) is healthy for a few steps, then
its loss climbs by orders of magnitude while staying finite, and a few dozen steps later overflows. Every
checkpoint written during the climb is finite but ruined. Before the fix the message named the last finite
checkpoint and advised `--train.resume --train.on-nonfinite skip` (and halving the absurd rate if it diverged
again): followed, the run resumed from a ruined state and stopped again. Now it names the last *healthy*
checkpoint (kept from pruning), a tenth of the rate the loss was healthy at, and the whole command.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

TOY = Path(__file__).resolve().parent / "helpers" / "train_toy.py"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})


def _advice_flags(message: str) -> list[str]:
    """The flags after 'to continue' up to the first '(' or ';' (what an older message offered)."""
    tail = message.rsplit("to continue", 1)[-1]
    flags = re.findall(r"--train\.[a-z-]+(?: (?!--)[\w./+-]+)?", tail.split("(")[0].split(";")[0])
    return [tok for f in flags for tok in shlex.split(f)]


def test_the_printed_command_after_a_divergence_trains_on_with_a_finite_decreasing_loss(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [sys.executable, str(TOY), "--train.run-dir", str(run), "--depth", "10", "--train.lr", "10",
            "--train.warmup-steps", "400", "--train.steps", "400", "--train.ckpt-every", "5",
            "--train.keep-ckpts", "2", "--train.log-every", "1"]
    first = _run(argv)
    assert first.returncode == 2, first.stdout[-500:] + first.stderr[-2000:]
    message = first.stderr.strip().splitlines()[-1]
    assert message.startswith("unissl: error: ") and "became" in message, message
    found = re.search(r"the command: (.*)$", message)
    command = shlex.split(found.group(1)) if found else argv + _advice_flags(message)
    assert command[:2] == argv[:2]
    second = _run(command)  # the advice, literally
    assert second.returncode == 0, message + "\n" + second.stderr[-1500:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 400
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(math.isfinite(v) for v in losses)
    start, tail = losses[:10], losses[-50:]  # the first steps (loss ~ the targets' variance) and the end
    assert sum(tail) / len(tail) < 0.2 * sum(start) / len(start) and max(tail) < 2.0, (start, tail[-5:])


def test_the_trend_judge_and_the_continue_command() -> None:
    from unissl.engine.health import LossTrend, continue_command

    t = LossTrend(factor=4.0, window=8, min_steps=3)
    assert all(t.update(v) for v in [2.0, 1.9, 1.8, 1.7, 9.0])  # one noisy batch (9 > 4 x 1.85) is tolerated
    assert t.update(1.6) and t.update(8.0)  # ... and a lone spike again
    assert [t.update(v) for v in (9.0, 50.0, 1e4)] == [False, False, False]  # two in a row have left the trend
    assert t.reference == 1.8  # the spikes and the divergence never entered the window: median of 2 .. 1.6
    neg = LossTrend(factor=4.0, window=8, min_steps=3)  # a loss below zero is judged from the lowest value seen
    assert all(neg.update(v) for v in [-5.0, -5.5, -6.0, -6.2, -6.1, -6.3])
    assert neg.update(10.0) and not neg.update(12.0)  # above -6.3 + 4 x (median - floor) = -4.9, twice
    flags = ["--train.resume-from", "/r/checkpoints/step_0000015", "--train.lr", "0.015"]
    argv = ["/venv/bin/unissl", "train", "sorcen", "--train.lr", "10", "--train.resume", "--x", "1"]
    assert continue_command(flags, argv) == ("unissl train sorcen --x 1 --train.resume-from "
                                             "/r/checkpoints/step_0000015 --train.lr 0.015")
    assert continue_command(flags, ["/venv/bin/unissl", "pipeline", "--config", "c.yaml"]) is None  # a stage
    assert continue_command(flags, ["/venv/lib/python3/site-packages/pytest/__main__.py", "-q"]) is None
