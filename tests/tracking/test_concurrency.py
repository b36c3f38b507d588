"""Trials that start together never fail on tracking: many trial starts at once, in rounds,
against a fresh store (SQLite, and PostgreSQL where it runs), each logging datasets it shares
with the others and its own, a model, its end; two sweeps of one name starting and
registering their best models at once. Nothing may fail and nothing may be duplicated.

Found by the ASHA test: two trials that started at the same moment both logged the sweep's
training set for the first time, and one lost MLflow's check-then-insert race
(``UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gmt_ray.data.catalog import DatasetRef
from gmt_ray.tracking import SweepRuns, Tags, client
from tests.helpers import model_dir

pytestmark = pytest.mark.integration  # dozens of threads writing at once: seconds per round

ROUNDS = 3
SWEEPS = 2  # per round, of the same name: they race to create the experiment and the registered models
TRIALS = 4  # per sweep: SWEEPS x TRIALS = 8 trial starts at once


def _dataset(name: str, digest: str, context: str) -> DatasetRef:
    return DatasetRef(name, digest, "code", {"tags": {"mlflow.source.name": "test"}}, context, context, 8,
                      ("prompt", "response"))


SHARED = [_dataset("arithmetic-train", "0" * 16, "train"), _dataset("arithmetic-validation", "1" * 16, "validation")]


def _all_at_once(functions: list) -> list[BaseException]:
    """Runs every function in its own thread, released together; returns what they raised."""
    barrier = threading.Barrier(len(functions))
    errors: list[BaseException] = []

    def run(function):
        barrier.wait()
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - collected and reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(function,)) for function in functions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return errors


def _rounds(uri: str, tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        sweep = f"race-{round_}"
        started: list[SweepRuns] = []

        def start(sweep=sweep):
            started.append(SweepRuns.start(uri, "raced", sweep, {"round": round_}, f"name: {sweep}\n"))

        assert not _all_at_once([start] * SWEEPS)

        def trial(runs: SweepRuns, index: int):
            trial_id = f"{runs.parent_run_id[:6]}-{index}"
            own = _dataset(f"eval-{trial_id}", f"{round_}{index}".ljust(16, "f"), "eval")
            mlflow_runs = SweepRuns(runs.tracking_uri, runs.parent_run_id)  # its own client, as a trial driver has
            run_id = mlflow_runs.open_trial(trial_id, f"gmt lr=1.0e-03 s{index}", {"mask.method": "gmt"},
                                            [*SHARED, own])
            mlflow_runs.log_step(run_id, {"val_loss": 1.0 / (index + 1), "step": 2}, step=2)
            mlflow_runs.finish_trial(run_id, objective="val_loss", value=1.0 / (index + 1), checkpoint=None,
                                     model=model_dir(tmp_path / "models" / trial_id), method="gmt")

        errors = _all_at_once([lambda r=runs, i=i: trial(r, i) for runs in started for i in range(TRIALS)])
        assert not errors, [repr(e) for e in errors]
        errors = _all_at_once([lambda r=runs: r.register_best("val_loss", "min") for runs in started]
                              + [lambda r=runs: r.save_comparison_view("val_loss", "min", ["train.lr"]) for runs in started])
        assert not errors, [repr(e) for e in errors]
        for runs in started:
            runs.finish(interrupted=False, metric="val_loss", best=None)


def _check(uri: str) -> None:
    mlflow_client = client(uri)
    (experiment,) = [e for e in mlflow_client.search_experiments() if e.name == "raced"]
    assert experiment.tags[Tags.EXPERIMENT_KIND] == "custom_model_development"
    runs = mlflow_client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(Tags.ROLE) == "sweep"]
    trials = [r for r in runs if r.data.tags.get(Tags.ROLE) == "trial"]
    assert len(parents) == ROUNDS * SWEEPS and len(trials) == ROUNDS * SWEEPS * TRIALS
    for run in trials:
        assert run.info.status == "FINISHED"
        inputs = [(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs]
        assert len(inputs) == len(set(inputs)) == 3, inputs  # the two shared and its own, each once
        assert {name for name, _ in inputs} >= {"arithmetic-train", "arithmetic-validation"}
        assert len(run.outputs.model_outputs) == 1  # one logged model
    models = mlflow_client.search_logged_models([experiment.experiment_id], max_results=1000)
    assert len(models) == len(trials) == len({m.source_run_id for m in models})
    for round_ in range(ROUNDS):  # one registered model per (sweep name, method), its alias on a best model
        name = f"race-{round_}-gmt"
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        assert 1 <= len(versions) <= SWEEPS
        best = mlflow_client.get_model_version_by_alias(name, "best")
        assert mlflow_client.get_run(best.run_id).data.metrics["val_loss"] == pytest.approx(1.0 / TRIALS)


def test_many_trials_starting_at_once_on_sqlite(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _rounds(uri, tmp_path)
    _check(uri)


def test_many_trials_starting_at_once_on_postgresql(tmp_path, postgres_url):
    _rounds(postgres_url, tmp_path)
    _check(postgres_url)
