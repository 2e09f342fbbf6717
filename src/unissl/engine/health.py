"""Whether training is healthy: the loss against its own recent trend, and the command that continues a run.

A run that diverges at a too-high learning rate usually stays finite for a while: its loss climbs by orders
of magnitude before it becomes NaN/Inf, and every checkpoint written in between is finite but ruined.
:class:`LossTrend` judges each step's loss against the running median of the recent healthy ones; the trainer
calls a checkpoint *healthy* when every step since the previous checkpoint was, keeps the last healthy one
from pruning, and after a divergence names it with a learning rate that is sane (the last rate at which the
loss was healthy / 10), as flags and, when it can, as the whole command line.
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
from collections import deque
from pathlib import Path
from typing import Any

TREND_FACTOR = 4.0  # a loss above this multiple of its running median has left its trend
TREND_WINDOW = 32  # steps in the running median (healthy ones only)
TREND_MIN_STEPS = 5  # losses seen before any is judged
SAFE_LR_DIVISOR = 10.0  # the advised rate: the last healthy one / this


class LossTrend:
    """Per-step loss judge: ``update(loss)`` says whether ``loss`` stays within :data:`TREND_FACTOR` of the
    median of the last :data:`TREND_WINDOW` healthy losses (measured from the lowest value seen, so a
    negative loss is judged by its distance above that floor); a single step above it is a noisy batch, the
    second in a row has left the trend. Losses above the line never enter the window, so
    a divergence cannot drag the reference up with it; a level that persists for ``4 * window`` steps is
    accepted as the new normal (a schedule change, not a divergence)."""

    def __init__(self, factor: float = TREND_FACTOR, window: int = TREND_WINDOW,
                 min_steps: int = TREND_MIN_STEPS) -> None:
        self.factor, self.window, self.min_steps = factor, window, min_steps
        self.recent: deque[float] = deque(maxlen=window)
        self.floor = math.inf  # the lowest healthy loss seen (the zero the ratio is taken from)
        self.off_trend = 0  # consecutive unhealthy steps
        self.reference = math.nan  # the running median of the last judgement

    def update(self, loss: float) -> bool:
        """Record one step's (finite) loss; returns whether it is healthy."""
        if not math.isfinite(loss):
            return False
        if len(self.recent) < self.min_steps:
            healthy = True
        else:
            base = min(self.floor, 0.0)
            self.reference = statistics.median(self.recent)
            healthy = loss - base <= self.factor * max(self.reference - base, 1e-12)
        if healthy or self.off_trend >= 4 * self.window:
            self.recent.append(loss)
            self.floor = min(self.floor, loss)
            self.off_trend = 0
            return True
        self.off_trend += 1
        return self.off_trend == 1  # one batch's spike is noise (kept out of the window); two in a row a trend

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "floor": self.floor, "off_trend": self.off_trend}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque((float(v) for v in state.get("recent", [])), maxlen=self.window)
        self.floor = float(state.get("floor", math.inf))
        self.off_trend = int(state.get("off_trend", 0))


def continue_command(flags: list[str], argv: list[str] | None = None) -> str | None:
    """This process's command line with ``flags`` (``--name value`` pairs or bare switches) in place of the
    same flags it had; None when the process is not a command a person typed (e.g. a pipeline stage run
    in-process, or an interactive session)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0] or (len(argv) > 1 and argv[1] == "pipeline"):
        return None
    prog = Path(argv[0])
    if prog.name == "__main__.py" and prog.parent.name == "unissl":
        head = ["python", "-m", "unissl"]
    elif prog.suffix == ".py" and prog.name != "__main__.py":  # a script (not `python -m pytest` and the like)
        head = [sys.executable, argv[0]]
    elif prog.name == "unissl":
        head = ["unissl"]
    else:
        return None
    names = {f for f in flags if f.startswith("--")} | {"--train.resume", "--train.resume-from"}
    valued = {"--train.resume-from", "--train.lr", "--train.on-nonfinite"}
    rest, args = argv[1:], []
    i = 0
    while i < len(rest):
        tok = rest[i]
        name = tok.split("=", 1)[0]
        if name in names:
            i += 2 if (name in valued and "=" not in tok) else 1
            continue
        args.append(tok)
        i += 1
    return shlex.join(head + args + flags)
