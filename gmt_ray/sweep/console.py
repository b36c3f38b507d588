"""What a person watching a sweep sees: a line per trial start and end, each running
trial's progress, and a final table.

Tune's callbacks publish what happens as records of the ``gmt_ray.sweep.events`` logger
(``publish``); a ``SweepConsole`` renders them while it is started. A sweep run without
a console (a notebook's ``gmt_ray.sweep.run(..., console=None)``) stays silent, and a
resumed sweep, whose callbacks Tune unpickles from its saved state, still reaches the
console of the process that resumed it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gmt_ray.metrics import evaluation_scores

__all__ = ["SweepConsole", "publish"]

EVENTS = logging.getLogger("gmt_ray.sweep.events")
EVENTS.propagate = False  # events are for a console; nowhere else should print them
# Piped output gets one progress line per trial at most this often (a live view otherwise).
PIPED_PROGRESS_INTERVAL_S = 10.0


def publish(event: str, **payload: Any) -> None:
    """Tells the started console (if any) that ``event`` happened."""
    EVENTS.info(event, extra={"sweep_event": event, "payload": payload})


def _describe(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        name = key.split(".")[-1]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Handler(logging.Handler):
    def __init__(self, console: SweepConsole):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        handler = getattr(self.console, f"on_{getattr(record, 'sweep_event', '')}", None)
        if handler is not None:
            handler(**record.payload)


class SweepConsole:
    """Renders a sweep's events: a live view on a terminal, plain lines when piped.

    Args:
        console: a rich Console (default: stdout).
        interactive: live progress bars (default: when stdout is a terminal).
    """

    def __init__(self, console: Console | None = None, interactive: bool | None = None):
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        # soft_wrap: commands and paths printed here must stay copyable in narrow or piped output.
        # Piped output (CI logs, `| tee`) has no width: give the table room not to truncate.
        self.console = console or Console(highlight=False, soft_wrap=True, width=None if self.interactive else 160)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=self.console, transient=True,
        )
        self.task = None
        self._trial_tasks: dict[str, Any] = {}
        self._last_line: dict[str, float] = {}
        self._handler = _Handler(self)

    def start(self, total: int, parent_run_id: str, tracking_uri: str) -> None:
        self.console.print(f"sweep: {total} trials; MLflow parent run {parent_run_id} in {tracking_uri}")
        EVENTS.addHandler(self._handler)
        EVENTS.setLevel(logging.INFO)
        if self.interactive:
            self.progress.start()
        self.task = self.progress.add_task("[bold]trials", total=total)

    def stop(self) -> None:
        EVENTS.removeHandler(self._handler)
        self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(text)

    # ------------------------------------------------------------------ events

    def on_trial_started(self, trial_id: str, params: dict) -> None:
        self.console.print(f"  start  {trial_id}  {_describe(params)}")

    def on_trial_progress(self, trial_id: str, step: int, total: int, loss: float | None, elapsed: float) -> None:
        left = elapsed / step * (total - step) if step else math.nan
        loss_text = f"loss {loss:.4f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else "loss -"
        if self.interactive:
            description = f"  {trial_id}  {loss_text}"
            if trial_id not in self._trial_tasks:
                self._trial_tasks[trial_id] = self.progress.add_task(description, total=total)
            self.progress.update(self._trial_tasks[trial_id], completed=step, total=total, description=description)
            return
        now = time.monotonic()
        if step < total and now - self._last_line.get(trial_id, -math.inf) < PIPED_PROGRESS_INTERVAL_S:
            return
        self._last_line[trial_id] = now
        left_text = f"~{_duration(left)} left" if math.isfinite(left) else ""
        self.console.print(f"  step   {trial_id}  step {step}/{total}  {loss_text}  {_duration(elapsed)} in  {left_text}")

    def on_trial_finished(self, trial_id: str, params: dict, metrics: dict, seconds: float, metric: str) -> None:
        self._end_trial(trial_id)
        value = metrics.get(metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        scores = "".join(
            f"  {name}={value:.3f}" + (f" [{metrics[name + '_low']:.3f}, {metrics[name + '_high']:.3f}]"
                                       if name + "_low" in metrics and name + "_high" in metrics else "")
            for name, value in evaluation_scores(metrics, metric).items()
        )
        self.console.print(
            f"  done   {trial_id}  {metric}={shown}{scores}  step={metrics.get('step')}  "
            f"{metrics.get('tokens_per_s', 0):.0f} tok/s  {seconds:.0f} s"
        )
        self.progress.advance(self.task)

    def on_trial_failed(self, trial_id: str, params: dict, error_file: str) -> None:
        self._end_trial(trial_id)
        self.console.print(f"  [red]failed[/red] {trial_id}  {_describe(params)}  see {error_file}")
        self.progress.advance(self.task)

    def on_tracking_retrying(self, uri: str, window_s: float, error: str) -> None:
        self.console.print(f"  [yellow]mlflow[/yellow] {uri} unreachable ({escape(error)}): retrying for up to "
                           f"{window_s:.0f} s; trials wait at their next report")

    def on_tracking_recovered(self, uri: str, seconds: float, lost: int) -> None:
        self.console.print(f"  mlflow {uri} answers again after {_duration(seconds)}: "
                           + (f"[red]{lost} points were not logged[/red]" if lost else "nothing lost"))

    def on_tracking_failed(self, trial_id: str, message: str) -> None:
        self.console.print(f"  [red]mlflow[/red] {trial_id}: {escape(message)}; recorded in the run's gmt_ray.tracking_lost "
                           "tag once the server answers")

    def _end_trial(self, trial_id: str) -> None:
        task = self._trial_tasks.pop(trial_id, None)
        if task is not None:
            self.progress.remove_task(task)

    # ------------------------------------------------------------------ the end

    def summary(self, result, metric: str, mode: str) -> None:
        """The final table of a ``SweepResult``, and where to look next."""
        rows = result.rows
        table = Table(title=f"{len(rows)} trials, objective {metric} ({mode})")
        score_names = sorted({name for row in rows for name in row.get("scores", {})})
        for column in ("", "trial", "method", "mask_ratio", "lr", metric, *score_names, "steps", "status"):
            table.add_column(column)
        best = result.best

        def order(row):
            value = row["objective"]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return math.inf
            return value if mode == "min" else -value

        for row in sorted(rows, key=order):
            value = row["objective"]
            table.add_row(
                "*" if best is not None and row["trial"] == best["trial"] else "",
                row["trial"], str(row["method"]), f"{row['mask_ratio']:.3g}", f"{row['lr']:.3g}",
                f"{value:.4f}" if isinstance(value, (int, float)) else "-",
                *(f"{row.get('scores', {})[n]:.4f}" if n in row.get("scores", {}) else "-" for n in score_names),
                str(row["steps"]), row["status"],
            )
        self.console.print(table)
        self.console.print(f"MLflow: parent run {result.parent_run_id}; open the UI with\n"
                           f"  mlflow ui --backend-store-uri {result.tracking_uri} --port 5000\n"
                           f"Tune results: {result.root}")
        if result.interrupted:
            self.console.print("[yellow]the sweep did not finish: run the same command with --resume to continue")
