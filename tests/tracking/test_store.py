"""gmt_ray.tracking.store: what is wrong with a tracking URI, found before anything starts."""

import http.server
import threading
import time

import pytest

from gmt_ray.tracking import store_problem
from tests.helpers import free_port


def test_a_file_store_is_refused_as_mlflow_3_refuses_it_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (str(tmp_path / "mlruns"), (tmp_path / "mlruns").as_uri()):
        assert "MLflow 3 refuses its file store" in store_problem(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert store_problem(str(tmp_path / "mlruns")) is None


def test_a_sqlite_store_needs_a_directory_for_its_file(tmp_path):
    assert store_problem(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'mlflow.db'}") is None  # made when first used
    (tmp_path / "a-file").write_text("")
    assert store_problem(f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}") == f"{tmp_path / 'a-file'} is not a directory"


def test_a_server_address_is_refused_within_the_timeout_where_none_answers():
    started = time.monotonic()
    problem = store_problem(f"http://127.0.0.1:{free_port()}", timeout_s=2.0)
    assert problem.startswith("no MLflow server answers there within 2 s") and time.monotonic() - started < 10


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_at_all_passes(status):
    # A server behind MLflow's basic auth answers 401 to an anonymous client: it is there.
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert store_problem(f"http://127.0.0.1:{server.server_port}") is None
    finally:
        server.shutdown()
        server.server_close()
