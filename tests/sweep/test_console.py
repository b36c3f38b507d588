"""The sweep console as a person reads it when piped: a line per trial start and end, and
each running trial's progress (step N/TOTAL, loss, time left) at a steady pace."""

import io
import time
from pathlib import Path

from rich.console import Console

from gmt_ray.sweep import console as console_module
from gmt_ray.sweep.console import SweepConsole, publish
from tests.helpers import ROOT


def _console():
    out = io.StringIO()
    return SweepConsole(Console(file=out, width=200, highlight=False), interactive=False), out


def test_progress_lines_show_step_of_total_loss_and_time_left_at_most_every_interval():
    sweep_console, out = _console()
    sweep_console.start(2, "parent", "sqlite:///x.db")
    try:
        publish("trial_started", trial_id="t1", params={"mask.method": "gmt"}, total=60)
        publish("trial_progress", trial_id="t1", step=10, total=60, loss=2.5, elapsed=10.0)
        publish("trial_progress", trial_id="t1", step=20, total=60, loss=2.0, elapsed=20.0)  # within 5 s: quiet
        publish("trial_progress", trial_id="t1", step=60, total=60, loss=1.5, elapsed=60.0)  # the last: always
        # Another trial that spent 40 s starting: its pace counts from its first report.
        publish("trial_progress", trial_id="t2", step=10, total=60, loss=3.0, elapsed=50.0)
        console_module.PIPED_PROGRESS_INTERVAL_S, saved = 0.0, console_module.PIPED_PROGRESS_INTERVAL_S
        try:
            publish("trial_progress", trial_id="t2", step=20, total=60, loss=2.5, elapsed=60.0)
        finally:
            console_module.PIPED_PROGRESS_INTERVAL_S = saved
        publish("trial_finished", trial_id="t1", params={}, metrics={"val_loss": 1.4, "step": 60}, seconds=61.0,
                metric="val_loss")
    finally:
        sweep_console.stop()
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("  step ")]
    assert len(steps) == 4, lines
    assert "step 10/60  loss 2.5000" in steps[0] and "~50s left" in steps[0]
    assert "step 60/60  loss 1.5000" in steps[1] and "left" not in steps[1]
    assert "t2  step 10/60" in steps[2] and "~4m10s left" in steps[2]  # 50 s for 10 steps, as far as it knows
    assert "t2  step 20/60" in steps[3] and "~40s left" in steps[3]  # 1 s a step since
    assert lines.index(steps[1]) < next(i for i, line in enumerate(lines) if line.startswith("  done   t1"))


def test_a_quiet_trial_still_gets_a_line_every_heartbeat(monkeypatch):
    monkeypatch.setattr(console_module, "HEARTBEAT_S", 0.25)
    sweep_console, out = _console()
    sweep_console.start(1, "parent", "sqlite:///x.db")
    try:
        publish("trial_started", trial_id="slow", params={}, total=100)
        time.sleep(1.0)  # starting up: no report yet (about 4 heartbeats)
        publish("trial_progress", trial_id="slow", step=5, total=100, loss=3.0, elapsed=3.0)
        time.sleep(1.0)
    finally:
        sweep_console.stop()
    steps = [line for line in out.getvalue().splitlines() if line.startswith("  step ")]
    assert any("step 0/100  starting" in line for line in steps), steps
    assert sum("step 5/100  loss 3.0000" in line for line in steps) >= 2, steps  # the report, then heartbeats


def test_the_summary_links_the_runs_table_and_the_registered_models():
    from gmt_ray.sweep.driver import SweepResult

    sweep_console, out = _console()
    result = SweepResult(rows=[], best=None, parent_run_id="p", tracking_uri="sqlite:////tmp/m.db", interrupted=False,
                         total=0, root=Path("/tmp/runs"), registered={"gmt": "models:/s-gmt@best"}, experiment_id="3",
                         view_id="v1")
    sweep_console.summary(result, "val_loss", "min")
    text = out.getvalue()
    assert "mlflow ui --backend-store-uri sqlite:////tmp/m.db --port 5000" in text
    assert "runs table:      http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning" in text
    assert "trials compared: http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=v1&compareRunsMode=CHART&" in text
    assert "best gmt model: models:/s-gmt@best  (train.init_from=models:/s-gmt@best)" in text  # no evaluate hint
    assert "gmt_ray.evaluate" not in text  # a sweep of the generated arithmetic only: that command cannot score it

    sweep_console, out = _console()
    result.evaluate_args = "--benchmark gsm8k --data /d/gsm8k_test.jsonl"
    sweep_console.summary(result, "val_loss", "min")
    assert ("best gmt model: models:/s-gmt@best  (train.init_from=models:/s-gmt@best, or python -m gmt_ray.evaluate "
            "--benchmark gsm8k --data /d/gsm8k_test.jsonl --model models:/s-gmt@best)") in out.getvalue()


def test_the_evaluate_hint_names_a_benchmark_that_command_takes_and_its_data():
    from gmt_ray.config import load_experiment
    from gmt_ray.eval.cli import _parser
    from gmt_ray.sweep.driver import evaluate_args

    assert evaluate_args(load_experiment(ROOT / "experiments" / "quickstart.yaml")) is None  # arithmetic only
    math = evaluate_args(load_experiment(ROOT / "experiments" / "math.yaml"))
    assert math == "--benchmark gsm8k --data /mnt/shared/data/gsm8k_test.jsonl"
    code = evaluate_args(load_experiment(ROOT / "experiments" / "code.yaml"))
    assert code.startswith("--benchmark humaneval")
    for args in (math, code):  # what the hint prints parses as the evaluate command's own arguments
        parsed = _parser().parse_args([*args.split(), "--model", "models:/s-gmt@best"])
        assert parsed.benchmark in {"gsm8k", "humaneval"}


def test_a_failed_or_retried_trial_says_why(tmp_path):
    from gmt_ray.sweep.callbacks import failure_reason

    # An error file as Tune writes it: the failure's traceback, the exception on its last line.
    error_file = tmp_path / "error.txt"
    error_file.write_text('Failure # 1 (occurred at 2026-12-05_07-00-00)\nTraceback (most recent call last):\n'
                          '  File "driver.py", line 90, in train_trial\n    run_id = runs.open_trial(...)\n'
                          "       ^^^^^^^^^^^^^^^^^^^^^^^^\ngmt_ray.tracking.outage.TrackingUnavailable: MLflow run "
                          "abc: open trial NOT logged\n")
    reason = failure_reason(str(error_file))
    assert reason == "gmt_ray.tracking.outage.TrackingUnavailable: MLflow run abc: open trial NOT logged"
    assert failure_reason(str(tmp_path / "missing.txt")) == "no error file"
    sweep_console, out = _console()
    sweep_console.start(2, "parent", "sqlite:///x.db")
    try:
        publish("trial_started", trial_id="t1", params={"mask.method": "gmt"}, total=6)
        publish("trial_retrying", trial_id="t1", reason="ActorDiedError: the actor died (its node was lost)")
        publish("trial_failed", trial_id="t1", params={"mask.method": "gmt"}, error_file=str(error_file),
                reason=reason)
    finally:
        sweep_console.stop()
    lines = out.getvalue().splitlines()
    assert any(line.startswith("  retry  t1  it failed: ActorDiedError: the actor died") for line in lines), lines
    failed = next(line for line in lines if line.startswith("  failed t1"))
    assert "TrackingUnavailable: MLflow run abc: open trial NOT logged" in failed and str(error_file) in failed
