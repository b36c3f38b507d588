"""The test servers themselves (tests/servers.py): a throwaway PostgreSQL cluster and
`mlflow server` on it, with and without basic auth, against real processes."""

import os
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.servers import PostgresUnavailable, postgres_cluster


def test_throwaway_cluster_runs_unprivileged_on_loopback_and_leaves_nothing_behind():
    started = time.monotonic()
    try:
        with postgres_cluster("probe") as cluster:
            elapsed = time.monotonic() - started
            assert cluster.sql("SHOW listen_addresses").strip() == "127.0.0.1"
            assert cluster.sql("SELECT current_database()", "probe").strip() == "probe"
            assert os.stat(cluster.data).st_uid != 0  # PostgreSQL refuses root; it must not run as root
            assert cluster.url("probe").startswith(f"postgresql://postgres:{cluster.password}@127.0.0.1:")
            base = cluster.base
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    print(f"throwaway PostgreSQL cluster up in {elapsed:.1f} s")
    assert not base.exists()


def test_sqlalchemy_reaches_a_fresh_database(postgres, postgres_url):
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE t (x int)"))
        connection.execute(sqlalchemy.text("INSERT INTO t VALUES (1), (2)"))
    engine.dispose()
    assert postgres.sql("SELECT sum(x) FROM t", postgres_url.rsplit("/", 1)[1]).strip() == "3"


def _log_a_run(client, name: str, tmp_path: Path):
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, run_name="r")
    for step in range(5):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    client.log_param(run.info.run_id, "lr", "0.001")
    artifact = tmp_path / "answers.jsonl"
    artifact.write_text('{"ok": true}\n')
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id


def _assert_run_reads_back(client, run_id: str):
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.001"}
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(5))
    assert min(m.value for m in history) == pytest.approx(0.2)
    assert [a.path for a in client.list_artifacts(run_id)] == ["answers.jsonl"]


@pytest.mark.integration
def test_mlflow_server_on_postgres_keeps_runs_across_a_restart(postgres, postgres_url, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    server = mlflow_server(postgres_url)
    print(f"mlflow server on PostgreSQL up in {time.monotonic() - started:.1f} s")
    client = MlflowClient(tracking_uri=server.url)
    experiment_id, run_id = _log_a_run(client, "pg-backed", tmp_path)
    _assert_run_reads_back(client, run_id)
    database = postgres_url.rsplit("/", 1)[1]
    # The runs are in PostgreSQL, not in some store beside the server.
    assert postgres.sql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}'", database).strip() == "5"
    assert (server.artifacts / experiment_id / run_id / "artifacts" / "answers.jsonl").is_file()

    server.stop()
    assert not server.healthy()
    server.start()
    _assert_run_reads_back(client, run_id)
    client.log_metric(run_id, "loss", 0.1, step=5)
    assert len(client.get_metric_history(run_id, "loss")) == 6

    server.kill()  # a crash rather than a shutdown
    assert not server.healthy()
    server.start()
    assert len(client.get_metric_history(run_id, "loss")) == 6


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.integration
def test_basic_auth_refuses_anonymous_clients_and_admits_the_admin(postgres_url, mlflow_server, tmp_path,
                                                                   monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    server = mlflow_server(postgres_url, auth=True)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"  # the fixture hands clients the credentials
    api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(api) == 401
    assert _status(api, "admin", "wrong-password-123") == 401
    assert _status(api, "admin", server.admin_password) == 200

    client = MlflowClient(tracking_uri=server.url)
    _, run_id = _log_a_run(client, "with-auth", tmp_path)
    _assert_run_reads_back(client, run_id)
    artifacts = f"{server.url}/api/2.0/mlflow-artifacts/artifacts"
    assert _status(artifacts) == 401  # the artifact proxy is behind the same gate

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException, match="401|403|[Uu]nauthori|not authenticated"):
        MlflowClient(tracking_uri=server.url).get_run(run_id)

    # The admin's password was only needed to create the user store: a restart keeps it.
    server.restart()
    assert _status(api, "admin", server.admin_password) == 200
    assert _status(api) == 401
