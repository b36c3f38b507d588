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
import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gmt_ray.names import evaluation_scores
from gmt_ray.progress import duration as _duration

__all__ = ["SweepConsole", "publish"]

EVENTS = logging.getLogger("gmt_ray.sweep.events")
EVENTS.propagate = False  # events are for a console; nowhere else should print them
# Piped output gets one progress line per trial at most this often (a live view otherwise),
# and at least this often while it runs, reports or not (a long start-up, a long log interval).
PIPED_PROGRESS_INTERVAL_S = 5.0
HEARTBEAT_S = 30.0


def publish(event: str, **payload: Any) -> None:
    """Tells the started console (if any) that ``event`` happened."""
    EVENTS.info(event, extra={"sweep_event": event, "payload": payload})


def _describe(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        name = key.split(".")[-1]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def _loss_text(loss) -> str:
    return f"loss {loss:.4f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else "loss -"


@dataclass
class _Running:
    """What the console knows of a running trial."""

    started: float  # time.monotonic()
    total: int | None = None
    step: int = 0
    loss: float | None = None
    reported: float | None = None  # when its latest step arrived (monotonic)
    elapsed_at_report: float = 0.0  # the trial's own elapsed seconds at that report
    first: tuple[int, float] | None = None  # (step, elapsed) of its first report
    printed: float = -math.inf  # the latest line printed for it (monotonic)

    def left(self, now: float) -> float:
        """Seconds left, at the pace since its first report (start-up excluded); from the
        elapsed time alone until a second report (NaN before the first)."""
        if not self.step or self.total is None or self.reported is None:
            return math.nan
        first_step, first_elapsed = self.first or (0, 0.0)
        if self.step > first_step:
            per_step = (self.elapsed_at_report - first_elapsed) / (self.step - first_step)
        else:
            per_step = self.elapsed_at_report / self.step
        return max(0.0, per_step * (self.total - self.step) - (now - self.reported))


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
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._handler = _Handler(self)

    def start(self, total: int, parent_run_id: str, tracking_uri: str, up_to: bool = False) -> None:
        self.console.print(f"sweep: {'up to ' if up_to else ''}{total} trials; MLflow parent run {parent_run_id} in "
                           f"{tracking_uri}")
        EVENTS.addHandler(self._handler)
        EVENTS.setLevel(logging.INFO)
        if self.interactive:
            self.progress.start()
        else:
            self._stopped.clear()
            self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="gmt-ray-console")
            self._heartbeat.start()
        self.task = self.progress.add_task("[bold]trials", total=total)

    def stop(self) -> None:
        EVENTS.removeHandler(self._handler)
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(text)

    # ------------------------------------------------------------------ events

    def on_trial_started(self, trial_id: str, params: dict, total: int | None = None) -> None:
        with self._lock:
            self._running[trial_id] = _Running(started=time.monotonic(), total=total)
        self.console.print(f"  start  {trial_id}  {_describe(params)}")
        if self.interactive and total:
            self._trial_tasks[trial_id] = self.progress.add_task(f"  {trial_id}  starting", total=total)

    def on_trial_progress(self, trial_id: str, step: int, total: int, loss: float | None, elapsed: float) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._running.setdefault(trial_id, _Running(started=now - elapsed))
            state.step, state.total, state.loss = step, total, loss
            state.reported, state.elapsed_at_report = now, elapsed
            if state.first is None:
                state.first = (step, elapsed)
        if self.interactive:
            description = f"  {trial_id}  {_loss_text(loss)}"
            if trial_id not in self._trial_tasks:
                self._trial_tasks[trial_id] = self.progress.add_task(description, total=total)
            self.progress.update(self._trial_tasks[trial_id], completed=step, total=total, description=description)
            return
        with self._lock:
            if step >= total or now - state.printed >= PIPED_PROGRESS_INTERVAL_S:
                self._print_progress(trial_id, state, now)

    def _print_progress(self, trial_id: str, state: _Running, now: float) -> None:
        """One line: ``step 20/60  loss 1.2345  1m05s in  ~2m10s left``."""
        state.printed = now
        left = state.left(now)
        total = state.total if state.total is not None else "?"
        left_text = f"  ~{_duration(left)} left" if math.isfinite(left) and state.step != state.total else ""
        loss_text = _loss_text(state.loss) if state.reported is not None else "starting"
        self.console.print(f"  step   {trial_id}  step {state.step}/{total}  {loss_text}  "
                           f"{_duration(now - state.started)} in{left_text}")

    def _beat(self) -> None:
        """Piped output: a line for every running trial that printed none for HEARTBEAT_S."""
        while not self._stopped.wait(min(1.0, HEARTBEAT_S)):
            now = time.monotonic()
            with self._lock:
                quiet = [(t, s) for t, s in self._running.items() if now - max(s.printed, s.started) >= HEARTBEAT_S]
                for trial_id, state in quiet:
                    self._print_progress(trial_id, state, now)

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

    def on_trial_failed(self, trial_id: str, params: dict, error_file: str, reason: str = "") -> None:
        self._end_trial(trial_id)
        why = f"  {escape(reason)}" if reason else ""
        self.console.print(f"  [red]failed[/red] {trial_id}  {_describe(params)}{why}  see {error_file}")
        self.progress.advance(self.task)

    def on_trial_retrying(self, trial_id: str, reason: str) -> None:
        self._end_trial(trial_id)
        self.console.print(f"  [yellow]retry[/yellow]  {trial_id}  it failed: {escape(reason)}; Tune starts it again "
                           "(resources.max_failures)")

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
        with self._lock:
            self._running.pop(trial_id, None)
        task = self._trial_tasks.pop(trial_id, None)
        if task is not None:
            self.progress.remove_task(task)

    # ------------------------------------------------------------------ the end

    def summary(self, result, metric: str, mode: str) -> None:
        """The final table of a ``SweepResult`` (each trial's score with its 95% interval: the
        objective on validation problems for search trials, the test score for confirmation
        runs), the verdicts after a confirmation stage, and where to look next."""
        rows = result.rows
        table = Table(title=f"{len(rows)} trials, objective {metric} ({mode})")
        score_names = sorted({name for row in rows for name in row.get("scores", {}) if name != row.get("score_name")})
        for column in ("", "trial", "stage", "method", "mask_ratio", "lr", "seed", "score [95% interval]",
                       *score_names, "steps", "status"):
            table.add_column(column)
        best = result.best

        def order(row):
            value = row["objective"]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return (row.get("stage") == "confirm", math.inf)
            return (row.get("stage") == "confirm", value if mode == "min" else -value)

        for row in sorted(rows, key=order):
            table.add_row(
                "*" if best is not None and row["trial"] == best["trial"] else "",
                row["trial"], row.get("stage", "search"), str(row["method"]), f"{row['mask_ratio']:.3g}",
                f"{row['lr']:.3g}", str(row.get("seed", "")), _score_text(row),
                *(f"{row.get('scores', {})[n]:.4f}" if n in row.get("scores", {}) else "-" for n in score_names),
                str(row["steps"]), row["status"],
            )
        self.console.print(table)
        if result.verdicts:
            self.console.print("verdicts (a - b on the test problems, paired by seed and problem; "
                               "interval simultaneous over the comparisons; python -m gmt_ray.report for more):")
            for v in result.verdicts:
                self.console.print(f"  {str(v.a):>16} - {str(v.b):<16} {v.difference:+.4f} [{v.low:+.4f}, {v.high:+.4f}]"
                                   f"  p={v.p_value:.3g}  {v.seeds} seeds x {v.problems} problems  {v.decision}")
        from gmt_ray.tracking import experiment_url

        local = not result.tracking_uri.startswith(("http://", "https://"))
        lines = [f"MLflow: parent run {result.parent_run_id}"]
        if local:
            lines.append(f"  serve it:        mlflow ui --backend-store-uri {result.tracking_uri} --port 5000")
        if result.experiment_id:
            lines.append(f"  runs table:      {experiment_url(result.tracking_uri, result.experiment_id)}")
            if result.view_id:
                lines.append("  trials compared: "
                             f"{experiment_url(result.tracking_uri, result.experiment_id, view=result.view_id)}")
        self.console.print("\n".join(lines))
        for method, uri in sorted(result.registered.items()):
            evaluate = f", or python -m gmt_ray.evaluate {result.evaluate_args} --model {uri}" \
                if result.evaluate_args else ""
            self.console.print(f"best {method} model: {uri}  (train.init_from={uri}{evaluate})")
        self.console.print(f"Tune results: {result.root}")
        if result.interrupted:
            self.console.print("[yellow]the sweep did not finish: run the same command with --resume to continue")


def _score_text(row: dict) -> str:
    """``0.6950 [0.6360, 0.7480]`` (the interval where the trial reported one)."""
    value, low, high = row["objective"], row.get("low"), row.get("high")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{value:.4f} [{low:.4f}, {high:.4f}]"
    return f"{value:.4f}"
