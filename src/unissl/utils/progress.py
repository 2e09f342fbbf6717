"""Progress reporting that suits where the output goes: a tqdm bar on a terminal, short lines elsewhere.

Every loop in unissl that reports progress goes through :func:`progress`:

- on a terminal (the stream ``isatty()``): a tqdm bar, as before;
- elsewhere (a log file, a pipe, a stage log of ``unissl pipeline``): one short line when the loop crosses
  another tenth of its length (at most one every 5 s) or every 30 s, and one when it ends, never a
  carriage return, never a line longer than :data:`MAX_LINE` characters;
- ``UNISSL_PROGRESS=0`` (or ``TQDM_DISABLE=1``): nothing at all.

``UNISSL_PROGRESS=1`` forces the short lines even on a terminal.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

MAX_LINE = 200  # characters of one progress line, postfix included
MAX_DESC = 60  # characters of its description
LINE_EVERY_S = 30.0  # a line at least this often while a loop advances
MARK_MIN_S = 5.0  # at most one line per this many seconds for the 10% marks


def progress_mode(stream: TextIO | None = None) -> str:
    """``"off"``, ``"bar"`` (a terminal) or ``"lines"`` for output to ``stream`` (default ``sys.stderr``)."""
    setting = os.environ.get("UNISSL_PROGRESS", "").strip().lower()
    if setting in ("0", "false", "no", "off") or os.environ.get("TQDM_DISABLE", "").strip().lower() in (
            "1", "true", "yes"):
        return "off"
    if setting in ("1", "lines"):
        return "lines"
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "lines"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """The part of tqdm's interface unissl uses (iteration, ``update``, ``set_postfix``, ``close``, ``write``,
    a context manager), reporting in occasional short lines instead of a redrawn bar."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: float | None = None, desc: str | None = None,
                 initial: int = 0, leave: bool = True, file: TextIO | None = None, disable: bool = False,
                 **_: Any) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.leave = iterable, total, desc or "progress", leave
        self.n: float = initial
        self._start_n = initial
        self.disable = disable
        self.file = file
        self._postfix = ""
        self._t0 = self._last = time.monotonic()
        self._next_mark = self._mark_after(initial)
        self._printed = False
        self._closed = False

    def _mark_after(self, n: float) -> float:
        if not self.total:
            return math.inf
        return (math.floor(n / self.total * 10) + 1) * self.total / 10

    def _line(self, final: bool = False) -> str:
        """``desc: n/total (p%) m:ss (~m:ss left) postfix``; a long description or postfix is cut, the count never."""
        elapsed = time.monotonic() - self._t0
        count = f"{self.n:g}/{self.total:g} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n:g}"
        done = self.n - self._start_n
        count += f" {_clock(elapsed)}"
        if not final and self.total and done > 0 and self.n < self.total:
            count += f" (~{_clock(elapsed / done * (self.total - self.n))} left)"
        desc = self.desc if len(self.desc) <= MAX_DESC else self.desc[:MAX_DESC - 3] + "..."
        text = f"{desc}: {count}"
        if self._postfix:
            text += f" {self._postfix}"
        return text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "..."

    def _emit(self, text: str) -> None:
        print(text, file=self.file if self.file is not None else sys.stderr, flush=True)
        self._printed = True
        self._last = time.monotonic()

    def update(self, n: float = 1) -> None:
        """Advance by ``n``; print a line at a 10% mark (at most every 5 s) or after 30 s without one."""
        if self.disable:
            return
        self.n += n
        now = time.monotonic()
        at_mark = self.n >= self._next_mark
        if at_mark:
            self._next_mark = self._mark_after(self.n)
        if self.total and self.n >= self.total:
            return  # the last line comes from close()
        if (at_mark and now - self._last >= MARK_MIN_S) or now - self._last >= LINE_EVERY_S:
            self._emit(self._line())

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the count (``loss=6.52 lr=0.0002``), as tqdm's."""
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        """Nothing to redraw."""

    def write(self, text: str) -> None:
        self._emit(text)

    def close(self) -> None:
        """Print the last line: always for a loop that printed before or ran 5 s or more, and for a
        ``leave=True`` loop that made progress."""
        if self._closed or self.disable:
            self._closed = True
            return
        self._closed = True
        long = time.monotonic() - self._t0 >= MARK_MIN_S
        if self._printed or long or (self.leave and self.n > self._start_n):
            self._emit(self._line(final=True))

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress: iterate over a bar built with an iterable"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(LineProgress):
    """A loop that reports nothing (``UNISSL_PROGRESS=0``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "disable": True})

    def write(self, text: str) -> None:
        print(text, file=self.file if self.file is not None else sys.stderr, flush=True)


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
             disable: bool = False, leave: bool = True, file: TextIO | None = None, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere, nothing with ``UNISSL_PROGRESS=0``.

    Takes tqdm's arguments (``iterable``, ``total``, ``desc``, ``initial``, ``leave``, ``disable``, ``unit``...).
    """
    mode = "off" if disable else progress_mode(file)
    if mode == "bar":
        return tqdm(iterable, total=total, desc=desc, leave=leave, file=file, **kwargs)
    cls = _Silent if mode == "off" else LineProgress
    return cls(iterable, total=total, desc=desc, leave=leave, file=file, **kwargs)


@contextlib.contextmanager
def library_bars() -> Iterator[None]:
    """The progress bars of transformers, diffusers and huggingface_hub (loading weights) follow unissl's rule
    while the block runs: shown on a terminal, never written into a log (nothing is imported here)."""
    undo: list[Callable[[], None]] = []
    if progress_mode() != "bar":
        for name in ("transformers", "diffusers"):
            logs = getattr(getattr(sys.modules.get(name), "utils", None), "logging", None)
            if logs is not None and getattr(logs, "is_progress_bar_enabled", lambda: False)():
                logs.disable_progress_bar()
                undo.append(logs.enable_progress_bar)
        hub = getattr(sys.modules.get("huggingface_hub"), "utils", None)
        if hub is not None and not getattr(hub, "are_progress_bars_disabled", lambda: True)():
            hub.disable_progress_bars()
            undo.append(hub.enable_progress_bars)
    try:
        yield
    finally:
        for enable in undo:
            enable()


def progress_write(text: str) -> None:
    """Print a message between progress reports (above a live bar on a terminal)."""
    if progress_mode() == "bar":
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
