"""Stores the tracking tests share: real SQLite stores written through MLflow's client."""

import pytest

from gmt_ray import tracking
from gmt_ray.tracking import SweepRuns
from tests.helpers import model_dir


@pytest.fixture
def store(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    runs = SweepRuns.start(uri, "exp", "sft-sweep", {"search": {"metric": "val_loss", "mode": "min"}},
                           "name: sft-sweep\n")
    trials = {}
    for trial_id, method, loss in [("a", "gmt", 0.9), ("b", "gmt", 0.7), ("c", "sft", 0.5), ("d", "gmt", 0.1)]:
        run_id = runs.open_trial(trial_id, f"trial_{trial_id}", {"mask.method": method})
        runs.log_step(run_id, {"val_loss": loss}, step=1)
        if trial_id != "d":  # d never finished: no checkpoint, still RUNNING
            runs.finish_trial(run_id, objective="val_loss", value=loss, checkpoint=f"/ckpt/{trial_id}")
        trials[trial_id] = run_id
    return uri, trials


@pytest.fixture
def sweep_with_models(tmp_path):
    """A sweep of four finished trials (two gmt, two sft), each with an exported model directory."""
    from gmt_ray.data.catalog import DatasetRef

    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    runs = SweepRuns.start(uri, "exp", "ui-sweep", {}, "name: ui-sweep\n")
    datasets = [DatasetRef("arithmetic-train", "0123456789abcdef", "code", {"tags": {"mlflow.source.name": "gen"}},
                           "train", "train", 256, ("prompt", "response")),
                DatasetRef("arithmetic-test", "fedcba9876543210", "code", {"tags": {}}, "eval", "test", 8)]
    run_ids = {}
    for trial_id, method, loss in [("a", "gmt", 0.9), ("b", "gmt", 0.7), ("c", "sft", 0.5), ("d", "sft", 0.6)]:
        run_id = runs.open_trial(trial_id, f"{method} lr=1.0e-03 s0", {"mask.method": method}, datasets)
        runs.log_step(run_id, {"val_loss": loss, "step": 6}, step=6)
        runs.finish_trial(run_id, objective="val_loss", value=loss, checkpoint=f"/ckpt/{trial_id}",
                          model=model_dir(tmp_path / "models" / trial_id))
        run_ids[trial_id] = run_id
    return uri, runs, run_ids, tmp_path
