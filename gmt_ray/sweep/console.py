"""What a person watching a sweep sees: a line per trial, a progress bar, a final table."""

from __future__ import annotations

import math
import sys
from typing import Any, get_args

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gmt_ray.config import Benchmark

__all__ = ["SweepConsole"]


def evaluation_scores(metrics: dict[str, Any], objective: str) -> dict[str, float]:
    """The benchmark scores a trial reported (not the objective), by name."""
    benchmarks = get_args(Benchmark)
    return {k: v for k, v in metrics.items() if k != objective and isinstance(v, (int, float))
            and k.split("_")[0] in benchmarks and (k.endswith("_accuracy") or k.endswith("_pass_at_1"))}


def _describe(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        name = key.split(".")[-1]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


class SweepConsole:
    def __init__(self, console: Console | None = None):
        # soft_wrap: commands and paths printed here must stay copyable in narrow or piped output.
        # Piped output (CI logs, `| tee`) has no width: give the table room not to truncate.
        self.console = console or Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
        )
        self.task = None

    def start(self, total: int, parent_run_id: str, tracking_uri: str) -> None:
        self.console.print(f"sweep: {total} trials; MLflow parent run {parent_run_id} in {tracking_uri}")
        self.progress.start()
        self.task = self.progress.add_task("trials", total=total)

    def note(self, text: str) -> None:
        self.console.print(text)

    def trial_started(self, trial_id: str, params: dict) -> None:
        self.console.print(f"  start  {trial_id}  {_describe(params)}")

    def trial_finished(self, trial_id: str, params: dict, metrics: dict, seconds: float, metric: str) -> None:
        value = metrics.get(metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        scores = "".join(
            f"  {name}={value:.3f} [{metrics.get(name + '_low', value):.3f}, {metrics.get(name + '_high', value):.3f}]"
            for name, value in evaluation_scores(metrics, metric).items()
        )
        self.console.print(
            f"  done   {trial_id}  {metric}={shown}{scores}  step={metrics.get('step')}  "
            f"{metrics.get('tokens_per_s', 0):.0f} tok/s  {seconds:.0f} s"
        )
        self.progress.advance(self.task)

    def trial_failed(self, trial_id: str, params: dict, error_file: str) -> None:
        self.console.print(f"  [red]failed[/red] {trial_id}  {_describe(params)}  see {error_file}")
        self.progress.advance(self.task)

    def stop(self) -> None:
        self.progress.stop()

    def summary(self, summary: dict, metric: str, mode: str) -> None:
        rows = summary["rows"]
        table = Table(title=f"{len(rows)} trials, objective {metric} ({mode})")
        score_names = sorted({name for row in rows for name in row.get("scores", {})})
        for column in ("", "trial", "method", "mask_ratio", "lr", metric, *score_names, "steps", "status"):
            table.add_column(column)
        best = summary["best"]

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
        uri = summary["tracking_uri"]
        self.console.print(f"MLflow: parent run {summary['parent_run_id']}; open the UI with\n"
                           f"  mlflow ui --backend-store-uri {uri} --port 5000\n"
                           f"Tune results: {summary['root']}")
        if summary["interrupted"]:
            self.console.print("[yellow]the sweep did not finish: run the same command with --resume to continue")
