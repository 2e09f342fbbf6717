"""Run under ``torchrun --nproc_per_node=2``: rank 1 stops responding at step 3 (it sleeps); rank 0 must end
with one readable error within ``--train.dist-timeout``. Writes ``<out>/rank0.txt`` with rank 0's error."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.toy import ToyConfig, build  # noqa: E402
from unissl.config import parse_config  # noqa: E402
from unissl.engine import Callback, Trainer  # noqa: E402
from unissl.errors import UnisslError  # noqa: E402


class Hang(Callback):
    def on_step_end(self, trainer, step, logs) -> None:
        if trainer.rank == 1 and step == 3:
            time.sleep(120)  # alive but silent: no collective from this rank


def main() -> None:
    out = Path(sys.argv[1])
    cfg = parse_config(ToyConfig, ["--train.run-dir", str(out / "run"), *sys.argv[2:]])
    method, data = build(cfg)
    trainer = Trainer(method, data, cfg.train, callbacks=[Hang()])
    try:
        trainer.fit()
    except UnisslError as e:
        (out / f"rank{trainer.rank}.txt").write_text(str(e))
        print(f"unissl: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
