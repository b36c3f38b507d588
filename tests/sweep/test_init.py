"""gmt_ray.sweep.run(): a sweep from Python, which leaves the process as it found it."""

import pytest

from tests.helpers import write_experiment


def test_a_sweep_from_python_returns_its_trials_logs_to_wandb_offline_and_leaves_no_state(shared_sweep):
    # The shared sweep ran through gmt_ray.sweep.run() in a fresh process (tests.helpers.api_sweep_main).
    result = shared_sweep.result
    assert sorted(row["method"] for row in result["rows"]) == ["gmt"] * 4 + ["sft"] * 4
    assert sorted(row["stage"] for row in result["rows"]) == ["confirm"] * 4 + ["search"] * 4
    assert not result["interrupted"] and not result["failed"]
    best = min(row["objective"] for row in result["rows"] if row["stage"] == "search")  # val_loss, minimised
    assert result["best"] is not None and result["best"]["objective"] == pytest.approx(best)
    assert (shared_sweep.directory / "mlflow.db").exists()
    offline_runs = list((shared_sweep.directory / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 8  # Tune's W&B logger wrote every trial's run
    # Nothing left behind: no Ray, the same environment and signal handlers.
    assert result["left"] == {"ray_before": False, "ray_after": False, "environ_changed": [], "handlers_changed": []}


def test_bad_input_from_python_is_a_usage_error_and_starts_nothing(tmp_path, monkeypatch):
    import gmt_ray.sweep
    from gmt_ray.errors import UsageError

    monkeypatch.chdir(tmp_path)
    path = write_experiment(tmp_path)
    with pytest.raises(UsageError, match="search.num_samples"):
        gmt_ray.sweep.run(path, overrides={"search.num_samples": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]
