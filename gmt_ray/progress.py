"""Progress of a one-shot command (``gmt_ray.train``, ``gmt_ray.evaluate --model``) on stderr:
a rich progress bar on a terminal, plain lines when piped (one at most every ``interval_s``
seconds, and one at least every ``heartbeat_s`` while nothing moves), so that stdout keeps
only the command's results.

    with StepProgress("train", total=60, unit="step") as progress:
        progress.update(20, info="loss 1.2345")   # "train  step 20/60  loss 1.2345  12s in  ~24s left"
"""

from __future__ import annotations

import math
import sys
import threading
import time

__all__ = ["StepProgress", "duration"]


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StepProgress:
    """``completed`` out of ``total`` units, with a short free-text ``info`` (e.g. the loss).

    Args:
        interactive: a live bar (default: when ``stream`` is a terminal).
        stream: where it goes (default: stderr).
    """

    def __init__(self, description: str, total: int, *, unit: str = "step", info: str = "",
                 interactive: bool | None = None, stream=None, interval_s: float = 5.0, heartbeat_s: float = 30.0):
        self.description, self.total, self.unit, self.info = description, total, unit, info
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self.completed = 0
        self.initial = 0  # units already done before this run started (a resumed training run)
        self._started = self._printed = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = self._task = None

    def __enter__(self) -> StepProgress:
        self._started = time.monotonic()
        self._printed = -math.inf
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn(self.unit), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, info=self.info)
        else:
            self._print(time.monotonic())
            self._thread = threading.Thread(target=self._beat, daemon=True, name="gmt-ray-progress")
            self._thread.start()
        return self

    def update(self, completed: int, info: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            moved = completed != self.completed
            self.completed = completed
            if info is not None:
                self.info = info
            if self._progress is not None:
                self._progress.update(self._task, completed=completed, info=self.info)
            elif moved and (completed >= self.total or now - self._printed >= self.interval_s):
                self._print(now)

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._progress is not None:
            self._progress.stop()

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self._started
        done_here = self.completed - self.initial
        left = elapsed / done_here * (self.total - self.completed) if done_here > 0 else math.nan
        parts = [self.description, f"{self.unit} {self.completed}/{self.total}"]
        parts += [self.info] if self.info else []
        parts.append(f"{duration(elapsed)} in")
        parts += [f"~{duration(left)} left"] if math.isfinite(left) and self.completed < self.total else []
        return "  ".join(parts)

    def _print(self, now: float) -> None:
        self._printed = now
        print(self.line(now), file=self.stream, flush=True)

    def _beat(self) -> None:
        while not self._stopped.wait(min(1.0, self.heartbeat_s)):
            with self._lock:
                now = time.monotonic()
                if now - self._printed >= self.heartbeat_s:
                    self._print(now)
