"""cluster.yaml, checked offline with Ray's own launcher validation (nothing is started).

What stays untested: AWS itself (instances, the EFS mount, the image pull), and the
setup commands running on real nodes.
"""

import re
import shlex
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_check(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cluster)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_every_node_type_has_explicit_resources_and_gpu_workers_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    assert all(isinstance(node.get("resources"), dict) and node["resources"] for node in types.values())
    workers = {name: node for name, node in types.items() if name != cluster["head_node_type"]}
    assert any(node["resources"].get("GPU") == 8 for node in workers.values())
    assert all(node["min_workers"] == 0 and node["resources"].get("GPU", 0) > 0 for node in workers.values())
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_the_image_is_a_current_ray_gpu_image_matching_the_installed_ray(cluster):
    import ray

    image = cluster["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "ray-ml" not in image and image.endswith("-gpu")
    assert image.split(":")[1].startswith(ray.__version__)


def test_setup_installs_this_package_and_the_sandbox_on_every_node(cluster):
    setup = " ".join(cluster["setup_commands"])
    assert "pip install" in setup and "~/gmt-ray" in setup and "bubblewrap" in setup
    assert cluster["file_mounts"]["~/gmt-ray"] == "."
    assert any("/mnt/shared" in option for option in cluster["docker"]["run_options"])


def test_nothing_listens_on_a_public_interface(cluster):
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "mlflow server --host $(hostname -I" in start  # the private VPC address
    assert _flag(_mlflow_server(cluster), "--host") == "$(hostname"  # and only that one
    assert "bind=127.0.0.1" in start  # the loopback forwarder for ray attach --port-forward
    for text in ((ROOT / "cluster.yaml").read_text(), SCRIPT.read_text()):
        assert "0.0.0.0" not in text and "'*'" not in text and "::" not in text
    # PostgreSQL listens on no TCP port at all, only on its Unix socket on the head.
    assert "listen_addresses = ''" in SCRIPT.read_text()
    assert "--auth-host=reject" in SCRIPT.read_text()


SCRIPT = ROOT / "cluster" / "mlflow-db.sh"
HEAD_DISK = "/var/lib/gmt-ray"


def _mlflow_server(cluster) -> list[str]:
    (command,) = [c for c in cluster["head_start_ray_commands"] if "nohup mlflow server" in c]
    return shlex.split(command)


def _flag(tokens: list[str], name: str) -> str:
    assert tokens.count(name) == 1, f"{name} given {tokens.count(name)} times"
    return tokens[tokens.index(name) + 1]


def _script_default(variable: str) -> str:
    """A path the head's script defaults to, with its variables expanded."""
    text = SCRIPT.read_text()
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)=(\$\{\w+:-)?([^}\s]*)\}?(\s+#.*)?", line)
        if match:
            values[match[1]] = re.sub(r"\$(\w+)", lambda m: values.get(m[1], m[0]), match[3])
    return values[variable]


def test_mlflow_server_runs_on_postgresql_with_basic_auth(cluster):
    tokens = _mlflow_server(cluster)
    assert _flag(tokens, "--app-name") == "basic-auth"
    uri = urlsplit(_flag(tokens, "--backend-store-uri"))
    assert uri.scheme == "postgresql" and uri.path == "/mlflow"
    # Through the Unix socket on the head's disk, as the server's own OS user: no password to leak.
    assert uri.password is None and not uri.hostname
    assert parse_qs(uri.query)["host"] == [_script_default("SOCKET")]
    # Artifacts stay on shared storage, served by the MLflow server.
    assert _flag(tokens, "--artifacts-destination").startswith("/mnt/shared/") and "--serve-artifacts" in tokens
    assert "sqlite" not in " ".join(cluster["head_start_ray_commands"])
    # The server's auth settings (basic_auth.ini, admin password, CSRF key) come from the head's disk.
    assert tokens[:4] == ["set", "-a", "&&", "."] and tokens[4] == f"{HEAD_DISK}/mlflow/server.env"
    assert _script_default("AUTH") + "/server.env" == tokens[4]


def test_mlflow_state_is_on_the_heads_ebs_volume_not_on_shared_storage(cluster):
    state, shared = _script_default("STATE"), _script_default("SHARED")
    assert state == HEAD_DISK and shared == "/mnt/shared"
    for variable in ("PGDATA", "SOCKET", "AUTH"):
        assert _script_default(variable).startswith(state + "/")
        assert not _script_default(variable).startswith(shared)
    assert "database_uri = sqlite:///$AUTH/basic_auth.db" in SCRIPT.read_text()  # basic auth's user store
    # Outside the container, which `ray up` re-creates when the image changes.
    assert f"-v {HEAD_DISK}:{HEAD_DISK}" in cluster["docker"]["head_run_options"]
    assert not any(HEAD_DISK in option for option in cluster["docker"]["run_options"])
    assert _script_default("BACKUPS").startswith(shared + "/")  # only the dumps go to EFS


def test_head_setup_installs_postgresql_sets_it_up_and_dumps_it_nightly(cluster):
    from ray.autoscaler._private.util import prepare_config

    head = prepare_config(cluster)["head_setup_commands"]  # the common commands, then the head's
    index = {key: next(i for i, c in enumerate(head) if key in c)
             for key in ("apt-get install -y -q postgresql", "[server]", "mlflow-db.sh setup", "mlflow-db.sh dump")}
    assert index["mlflow-db.sh setup"] > max(index["apt-get install -y -q postgresql"], index["[server]"])
    cron = head[index["mlflow-db.sh dump"]]
    (entry,) = re.findall(r"echo '([^']*)'", cron)
    minute, hour, *every_day = entry.split()[:5]
    assert every_day == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()
    assert "crontab -" in cron and "grep -v 'mlflow-db.sh dump'" in cron  # replaced, not added again
    assert "pgrep -x cron" in cron  # a container runs no cron daemon of its own
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"psycopg", "psycopg2", "flask-wtf"} <= {re.split(r"[\[<>=]", r)[0].lower().removesuffix("-binary")
                                                   for r in extras["server"]}
    start = cluster["head_start_ray_commands"]
    assert next(i for i, c in enumerate(start) if "mlflow-db.sh start" in c) < start.index(
        next(c for c in start if "nohup mlflow server" in c))


def test_every_node_gets_the_mlflow_credentials_before_ray_starts(cluster):
    credentials = "~/.gmt-ray/mlflow-credentials"
    assert _script_default("CREDENTIALS") == "$HOME/.gmt-ray/mlflow-credentials"
    # Workers copy the head's file from EFS (the script writes it there) ...
    (copy,) = cluster["worker_setup_commands"]
    assert f"{_script_default('WORKER_COPY')} {credentials}" in copy and "install -m 600" in copy
    assert "exit 1" in copy  # a worker without credentials does not join
    # ... and Ray on every node starts with them in its environment, which its workers inherit.
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert start.startswith(f"set -a && . {credentials} && set +a && ")
    # So do interactive shells and `ray exec` (the sweep's driver).
    assert any(f". {credentials}" in c and "~/.bashrc" in c for c in cluster["setup_commands"])


def test_paper_experiments_plan_against_the_cluster_file():
    from gmt_ray.config import load_experiment
    from gmt_ray.sweep.plan import cluster_capacity, concurrency, describe_plan

    capacity = cluster_capacity(ROOT / "cluster.yaml")
    assert capacity["GPU"] == 4 * 8 + 4 * 4
    for name in ("math", "code", "general", "dpo"):
        config = load_experiment(ROOT / "experiments" / f"{name}.yaml")
        plan = describe_plan(config)
        assert plan["per_trial"]["GPU"] == 8
        assert concurrency(plan["per_trial"], capacity, config.search.max_concurrent_trials) == 4
        estimate = plan["estimate"]
        assert estimate["gpu_hours_per_trial"] > 1 and estimate["gpu_hours_total"] >= estimate["gpu_hours_per_trial"]


def test_a_file_without_node_types_is_refused(tmp_path):
    from gmt_ray.sweep.plan import cluster_capacity

    path = tmp_path / "c.yaml"
    path.write_text("cluster_name: x\n")
    with pytest.raises(ValueError, match="available_node_types"):
        cluster_capacity(path)


RAY_ENV_PROBE = """
import os, shutil, tempfile
os.environ["RAY_TMPDIR"] = tmp = tempfile.mkdtemp(prefix="gmt-ray-")  # its own Ray, not another test's
os.environ["MLFLOW_TRACKING_PASSWORD"] = "from-ray-start"
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
os.environ["MLFLOW_TRACKING_PASSWORD"] = "the-drivers"
import ray
try:
    ray.init(address=cluster.address, logging_level="ERROR")
    print("worker sees", ray.get(ray.remote(lambda: os.environ.get("MLFLOW_TRACKING_PASSWORD")).remote()))
finally:
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
"""


@pytest.mark.integration
def test_ray_workers_take_the_login_from_the_environment_ray_started_in():
    """What cluster.yaml relies on: a node's Ray worker processes inherit the environment of
    that node's `ray start`, not the driver's, so sourcing the credentials before `ray start`
    reaches every trial on that node."""
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", RAY_ENV_PROBE], check=False, capture_output=True, text=True,
                           timeout=300)
    assert "worker sees from-ray-start" in probe.stdout, probe.stdout + probe.stderr
