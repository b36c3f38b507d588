"""gmt_ray.preflight: what a run needs, checked before Ray, MLflow or a directory starts
(more of its checks are tested with the commands that use them: tests/sweep/test_main.py)."""

import pytest

from gmt_ray.errors import UsageError
from tests.helpers import ROOT, free_port


def test_a_tracking_store_that_cannot_take_runs_stops_the_sweep_before_anything_starts(tmp_path, monkeypatch):
    import ray

    import gmt_ray.sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UsageError, match=f"mlflow.tracking_uri='{server}': no MLflow server answers there"):
        gmt_ray.sweep.run(ROOT / "experiments" / "quickstart.yaml", [f"mlflow.tracking_uri={server}"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))  # from the environment: named so
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UsageError, match="MLFLOW_TRACKING_URI=.*MLflow 3 refuses its file store"):
        gmt_ray.sweep.run(ROOT / "experiments" / "quickstart.yaml")
    assert not ray.is_initialized() and list(tmp_path.iterdir()) == []  # no Ray, no runs directory, no store
