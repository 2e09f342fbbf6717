"""Run a ``unissl`` command, SIGKILL-ing itself right after optimizer step K (env ``KILL_AT_STEP``).

``python tests/helpers/kill_at_step.py <unissl argv...>``: the engine's optimizer step is wrapped in this
process only, so the command runs exactly as from the command line until the kill.
"""

from __future__ import annotations

import os
import signal
import sys

import unissl.engine.trainer as trainer_mod
from unissl.cli import main

kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
original = trainer_mod.Trainer._optimizer_step


def _step(self, logs, stop):
    out = original(self, logs, stop)
    if kill_at and self.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


trainer_mod.Trainer._optimizer_step = _step
raise SystemExit(main(sys.argv[1:]))
