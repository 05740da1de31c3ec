"""Progress and cancel: one callback that every pipeline stage calls.

A pipeline calls `progress(stage, step, total)` as it goes. The CLI prints it; the worker
(later) forwards it to the server and raises CancelledError from inside the callback when the
job's owner cancels, which unwinds the pipeline at the next report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, step: int, total: int) -> None:
    """The callback for callers that do not watch."""


class Stopwatch:
    """Wall time per named stage, for the result's metadata."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 4)


class TerminalProgress:
    """One line per stage on a terminal (redrawn in place), plain lines when piped."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stage: str | None = None
        self._t0 = time.perf_counter()
        self._stage_t0 = self._t0

    def __call__(self, stage: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self._finish_line(now)
            self._stage, self._stage_t0 = stage, now
        if self.tty:
            frac = step / total if total else 1.0
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            self.stream.write(f"\r  {stage:<10} [{bar}] {step}/{total}")
            self.stream.flush()

    def _finish_line(self, now: float, word: str = "done") -> None:
        if self._stage is None:
            return
        text = f"  {self._stage:<10} {word} after {now - self._stage_t0:.2f} s"
        self.stream.write(("\r" + text + " " * 20 if self.tty else text) + "\n")
        self.stream.flush()

    def interject(self, say):
        """`say` wrapped to end the current stage's line first (a message between lines)."""
        def wrapped(*a, **kw):
            self._finish_line(time.perf_counter())
            self._stage = None
            return say(*a, **kw)
        return wrapped

    def close(self, ok: bool = True) -> None:
        """End the current stage's line: 'done', or 'stopped' when the job failed in it."""
        self._finish_line(time.perf_counter(), "done" if ok else "stopped")
        self._stage = None
