"""cluster.yaml, checked offline with Ray's own launcher validation (nothing is started).

What stays untested: AWS itself (instances, the EFS mount, the image pull), and the
setup commands running on real nodes.
"""

from pathlib import Path

import pytest
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
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    assert "mlflow server --host $(hostname -I" in start  # the private VPC address
    assert "bind=127.0.0.1" in start  # the loopback forwarder for ray attach --port-forward


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
