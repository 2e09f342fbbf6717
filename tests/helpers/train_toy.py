"""Toy training run for the resume/DDP tests: ``python tests/helpers/train_toy.py [--train.* flags]``.

Prints ``STEP <n>`` (flushed) after every optimizer step so a test can kill it at a known point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.toy import ToyConfig, build  # noqa: E402
from unissl.config import parse_config  # noqa: E402
from unissl.engine import Callback, Trainer  # noqa: E402
from unissl.errors import UnisslError  # noqa: E402


class PrintSteps(Callback):
    def __init__(self, sleep: float) -> None:
        self.sleep = sleep

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if trainer.is_main:
            print(f"STEP {step}", flush=True)
        if self.sleep:
            time.sleep(self.sleep)


def main() -> int:
    try:
        cfg = parse_config(ToyConfig, sys.argv[1:])
        method, data = build(cfg)
        logs = Trainer(method, data, cfg.train, callbacks=[PrintSteps(cfg.sleep)]).fit()
    except UnisslError as e:
        print(f"unissl: error: {e}", file=sys.stderr)
        return 2
    print(f"DONE loss={logs.get('loss')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
