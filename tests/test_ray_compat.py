"""Every private piece of Ray that gmt_ray.ray_compat leans on, checked against the installed
Ray: a release that changes one fails here by name."""

import mmap
import os
from pathlib import Path

import pytest


def test_rays_worker_pool_warning_is_hidden_but_other_raylet_messages_show(ray_local, capsys):
    import ray._private.worker as ray_worker

    from gmt_ray.ray_compat import WORKER_POOL_WARNING, hide_worker_pool_warning, show_worker_pool_warning

    assert hide_worker_pool_warning(), "ray._private.worker.print_to_stdstream is gone"
    noise = f"WARNING: 8 PYTHON {WORKER_POOL_WARNING} on node: abc with address: 1.2.3.4"
    message = {"lines": [noise, "a real raylet error"], "pid": "raylet", "is_err": False}
    ray_worker.print_to_stdstream(message, ignore_prefix=False)
    printed = capsys.readouterr()
    assert "a real raylet error" in printed.out + printed.err
    assert WORKER_POOL_WARNING not in printed.out + printed.err
    show_worker_pool_warning()
    ray_worker.print_to_stdstream(message, ignore_prefix=False)
    assert WORKER_POOL_WARNING in "".join(capsys.readouterr())
    hide_worker_pool_warning()


def test_the_raylet_still_words_its_warning_as_we_filter_it():
    import ray

    from gmt_ray.ray_compat import WORKER_POOL_WARNING

    raylet = Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet"
    assert raylet.is_file(), f"no raylet binary at {raylet}"
    with open(raylet, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        assert data.find(WORKER_POOL_WARNING.encode()) >= 0


@pytest.mark.integration
def test_ray_train_still_records_its_registered_checkpoints(ray_local, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from gmt_ray.ray_compat import registered_checkpoints

    def loop(_):
        import tempfile

        for step in (1, 2, 3):
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "step").write_text(str(step))
                ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(directory))

    result = TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=1),
                          run_config=ray.train.RunConfig(name="compat", storage_path=str(tmp_path),
                                                         checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))).fit()
    assert result.error is None
    registered = registered_checkpoints(tmp_path / "compat")
    assert registered is not None, "Ray Train no longer writes checkpoint_manager_snapshot.json"
    assert sorted((path / "step").read_text() for path in registered) == ["2", "3"]
    assert registered_checkpoints(tmp_path / "nowhere") is None


# ----------------------------------------------------------------------------- finding a cluster


def test_the_bootstrap_file_is_where_ray_looks_for_it(tmp_path, monkeypatch):
    from ray._private.utils import write_ray_address

    from gmt_ray.ray_compat import bootstrap_file, recorded_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert bootstrap_file() == tmp_path / "ray" / "ray_current_cluster"
    assert recorded_cluster() is None
    (tmp_path / "ray").mkdir()
    write_ray_address("10.1.2.3:6379")  # as `ray start --head` records its head
    assert recorded_cluster() == "10.1.2.3:6379"
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "other"))
    assert bootstrap_file() == tmp_path / "other" / "ray" / "ray_current_cluster"


def test_forgetting_a_cluster_removes_the_file_only_while_it_names_that_cluster(tmp_path, monkeypatch):
    from ray._private.services import canonicalize_bootstrap_address
    from ray._private.utils import write_ray_address

    from gmt_ray.ray_compat import bootstrap_file, forget_recorded_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    write_ray_address("10.1.2.3:6379")
    assert canonicalize_bootstrap_address(None) == "10.1.2.3:6379"  # what Ray's own lookups find
    assert not forget_recorded_cluster("10.9.9.9:6379") and bootstrap_file().exists()  # another cluster's: kept
    assert forget_recorded_cluster("10.1.2.3:6379") and not bootstrap_file().exists()
    assert not forget_recorded_cluster("10.1.2.3:6379")  # already gone



def test_a_bootstrap_file_removed_while_ray_reads_it_is_no_recorded_cluster(tmp_path, monkeypatch):
    # Another process (`ray stop`, another command) removes the file between Ray's check that
    # it exists and its open: no cluster is recorded, and nothing raises. The race is made
    # certain by removing the file inside Ray's own existence check.
    import os

    import ray._private.utils as ray_utils
    from ray._private.utils import write_ray_address

    from gmt_ray.ray_compat import bootstrap_file, forget_recorded_cluster, recorded_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    exists = os.path.exists

    def exists_then_removed(path):
        found = exists(path)
        if found and str(path) == str(bootstrap_file()):
            os.remove(path)
        return found

    write_ray_address("10.1.2.3:6379")
    monkeypatch.setattr(ray_utils.os.path, "exists", exists_then_removed)
    assert recorded_cluster() is None
    write_ray_address("10.1.2.3:6379")
    assert not forget_recorded_cluster("10.1.2.3:6379")  # gone before it could be read: nothing to forget
    assert not bootstrap_file().exists()


def test_ray_dials_loopback_as_the_nodes_address_and_rejects_non_addresses():
    from ray.util import get_node_ip_address

    from gmt_ray.ray_compat import canonical_address

    assert canonical_address("127.0.0.1:6390") == f"{get_node_ip_address()}:6390"
    assert canonical_address("10.1.2.3:6379") == "10.1.2.3:6379"
    with pytest.raises(ValueError):
        canonical_address("no-port")


def test_the_gcs_probe_is_bounded_where_something_else_listens():
    import socket
    import time

    from gmt_ray.ray_compat import gcs_answers

    with socket.socket() as server:  # accepts connections (the kernel's backlog), never speaks gRPC
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        start = time.monotonic()
        answer = gcs_answers(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=2)
        assert time.monotonic() - start < 4
    assert not answer.ok and answer.timeout and "2 s" in answer.error


@pytest.mark.integration
def test_a_ray_start_head_is_found_answers_and_wants_this_machines_token(ray_head, monkeypatch):
    import subprocess
    import sys

    from gmt_ray.ray_compat import canonical_address, local_gcs_addresses, recorded_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(ray_head.temp_root))
    assert recorded_cluster() == ray_head.address, "ray start no longer records its head where we look"
    assert ray_head.address in local_gcs_addresses(), "the raylet's --gcs-address is no longer found"
    assert canonical_address(f"127.0.0.1:{ray_head.port}") == ray_head.address
    # A fresh process (no token mode yet): Ray sends no token to an explicit address, so the head
    # refuses it by name; use_local_token() is what makes ray.init(address=None) succeed.
    probe = ("import sys; from gmt_ray.ray_compat import gcs_answers, use_local_token; "
             "a = gcs_answers(sys.argv[1], 20); print('before', a.ok, a.auth); use_local_token(); "
             "a = gcs_answers(sys.argv[1], 20); print('after', a.ok, a.auth, a.error)")
    env = {k: v for k, v in ray_head.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    out = subprocess.run([sys.executable, "-c", probe, ray_head.address], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled"  # the head's mode, as started
    before = "before False True" if token_auth else "before True False"
    assert before in out.stdout and "after True False" in out.stdout, out.stdout + out.stderr
class _Recorder:  # the hooks of a Train worker callback, written where the test can read them
    def __init__(self, directory):
        self.directory = directory

    def after_init_train_context(self):
        import ray.train

        Path(self.directory, f"init-{ray.train.get_context().get_world_rank()}").touch()

    def before_worker_shutdown(self):
        Path(self.directory, "shutdown").touch()


@pytest.mark.integration
def test_ray_train_runs_worker_callbacks_inside_every_worker(ray_local, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from gmt_ray.ray_compat import train_worker_callback

    base = train_worker_callback()
    recorder = type("RecorderCallback", (_Recorder, base), {})(str(tmp_path))
    result = TorchTrainer(lambda _: ray.train.report({"step": 1}),
                          scaling_config=ray.train.ScalingConfig(num_workers=2),
                          run_config=ray.train.RunConfig(name="callbacks", storage_path=str(tmp_path / "runs"),
                                                         callbacks=[recorder])).fit()
    assert result.error is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["init-0", "init-1", "shutdown"]


def test_the_lean_trainer_keeps_ray_datas_callback_only_where_there_are_datasets(ray_local):
    import ray.data
    from ray.train.torch import TorchTrainer

    from gmt_ray.ray_compat import torch_trainer_class

    def callbacks(trainer_class, **kwargs):
        return [type(c).__name__ for c in trainer_class(lambda: None, **kwargs)._create_default_callbacks()]

    assert "DatasetsCallback" in callbacks(TorchTrainer)  # what Ray does: the reason for the class
    assert "DatasetsCallback" not in callbacks(torch_trainer_class())
    with_data = callbacks(torch_trainer_class(), datasets={"train": ray.data.from_items([{"x": 1}])})
    assert with_data == callbacks(TorchTrainer, datasets={"train": ray.data.from_items([{"x": 1}])})
    assert "DatasetsCallback" in with_data


def test_a_run_of_the_lean_trainer_starts_no_dataset_manager(ray_local, tmp_path):
    import ray
    import ray.train
    from ray.util.state import list_actors

    from gmt_ray.ray_compat import torch_trainer_class

    def managers():  # of this session's Ray: another may run beside it (a live head's test)
        return len(list_actors(address=ray.get_runtime_context().gcs_address,
                               filters=[("class_name", "=", "DatasetManager")], limit=1000))

    def train(config):
        Path(config["ran"]).write_text("yes")
        ray.train.report({"step": 1})

    before = managers()
    result = torch_trainer_class()(train, train_loop_config={"ran": str(tmp_path / "ran")},
                                   scaling_config=ray.train.ScalingConfig(num_workers=1),
                                   run_config=ray.train.RunConfig(name="lean", storage_path=str(tmp_path))).fit()
    assert result.error is None and (tmp_path / "ran").read_text() == "yes"
    assert managers() == before


def test_a_restored_tuner_hands_over_the_callbacks_it_unpickled(tmp_path):
    from ray import tune

    from gmt_ray.ray_compat import restored_callbacks

    tune.Tuner(_noop, run_config=tune.RunConfig(storage_path=str(tmp_path), name="e",
                                                callbacks=[_Marked("as pickled")]))
    restored = restored_callbacks(tune.Tuner.restore(str(tmp_path / "e"), trainable=_noop))
    assert [type(c).__name__ for c in restored] == ["_Marked"] and restored[0].mark == "as pickled"


def _noop(config):
    pass


class _Marked:
    def __init__(self, mark):
        self.mark = mark
