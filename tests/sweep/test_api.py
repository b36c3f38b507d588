"""gmt_ray.sweep.run(): a sweep from Python, which leaves the process as it found it."""

import os
import signal

import pytest

from tests.sweep.test_sweep_cli import TINY


@pytest.mark.slow
def test_a_sweep_from_python_returns_its_trials_logs_to_wandb_offline_and_leaves_no_state(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import ray

    import gmt_ray.sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B's own offline mode: runs written locally, nothing sent
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    assert not ray.is_initialized()

    result = gmt_ray.sweep.run(
        _experiment(tmp_path),
        overrides=["search.methods=[gmt]", "wandb.project=gmt-ray-test"],
    )

    assert [row["method"] for row in result.rows] == ["gmt"] and not result.interrupted and not result.failed
    assert result.best is not None and result.best["objective"] == pytest.approx(result.rows[0]["objective"])
    assert (tmp_path / "mlflow.db").exists()
    offline_runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1  # Tune's W&B logger wrote the trial's run
    # Nothing left behind: no Ray, the same environment and signal handlers.
    assert not ray.is_initialized()
    assert dict(os.environ) == environ
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_bad_input_from_python_is_a_usage_error_and_starts_nothing(tmp_path, monkeypatch):
    import gmt_ray.sweep
    from gmt_ray.cli import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="search.num_samples"):
        gmt_ray.sweep.run(_experiment(tmp_path), overrides={"search.num_samples": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def _experiment(directory):
    import yaml

    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path
