"""How often a 2-process gloo job aborts at exit, with and without leaving its process group first.

Each job is ``torchrun --standalone --nproc_per_node=2`` over a worker that does what a training run's last
checkpoint does (``all_gather_object`` of the RNG state, an ``all_reduce``, a barrier) and then exits: arm
``kept`` leaves the group to interpreter teardown, arm ``left`` calls ``unissl.engine.shutdown_distributed()``
first (what ``unissl <command>`` does once a command succeeds). The arms alternate job by job, so both see
the same machine load. A failed job is one whose torchrun exits non-zero; the line printed most often by a
failed job's ranks (``terminate called without an active exception``, SIGABRT) is shown once.

    python benchmarks/gloo_teardown.py --jobs 100
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import tempfile
import time
from pathlib import Path

from unissl.pipeline import _launcher  # the torchrun command line a `nproc: 2` pipeline stage runs under

WORKER = """\
import sys
import torch, torch.distributed as dist
from unissl.engine import shutdown_distributed
dist.init_process_group("gloo")
states = [None] * dist.get_world_size()
dist.all_gather_object(states, torch.get_rng_state())
x = torch.randn(1000)
dist.all_reduce(x)
dist.barrier()
if sys.argv[1] == "left":
    shutdown_distributed()
"""


def one_job(worker: Path, arm: str) -> tuple[bool, str]:
    """Run one job of ``arm``; returns (failed, the first line a rank printed before torchrun's report)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_launcher(2), str(worker), arm], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    first = next((ln for ln in lines if "torch/distributed/elastic" not in ln), "")
    return proc.returncode != 0, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100, help="jobs per arm")
    args = ap.parse_args()
    # per arm, the first line of each failed job: its count of failures is the counter's total
    causes: dict[str, collections.Counter] = {"kept": collections.Counter(), "left": collections.Counter()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        for i in range(args.jobs):
            for arm in ("kept", "left"):
                bad, first = one_job(worker, arm)
                if bad:
                    causes[arm][first] += 1
            if (i + 1) % 10 == 0 or i + 1 == args.jobs:
                print(f"[gloo_teardown] {i + 1}/{args.jobs} jobs per arm: failed kept {causes['kept'].total()}, "
                      f"left {causes['left'].total()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    failed = {arm: c.total() for arm, c in causes.items()}
    for arm, label in (("kept", "group left to interpreter teardown"), ("left", "shutdown_distributed() first")):
        cause = f"; most often: {causes[arm].most_common(1)[0][0]!r}" if causes[arm] else ""
        print(f"{arm}: {failed[arm]}/{args.jobs} jobs failed at exit ({label}){cause}")
    print(f"failed-job ratio kept / left: {failed['kept']} / {failed['left']}")


if __name__ == "__main__":
    main()
