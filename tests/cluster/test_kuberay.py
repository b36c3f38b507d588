"""cluster/kuberay/, checked offline (nothing is started): the Kubernetes objects and every Ray
pod template against Kubernetes' own schemas (kubernetes-validate), the RayJob and RayCluster
against KubeRay's ray.io/v1 fields (tests/cluster/schemas/, trimmed from KubeRay's API types), and what
the manifests promise: the sweep as the job, GPU worker groups, shared storage, Secrets,
nothing exposed; then ``--dry-run --cluster`` on them.

What stays untested: a real Kubernetes cluster with the KubeRay operator (the image build,
scheduling onto GPU nodes, the ReadWriteMany volume, token auth through the submitter pod).
"""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMAS = yaml.safe_load((Path(__file__).parent / "schemas" / "kuberay-ray.io-v1-trimmed.yaml").read_text())
KUBERNETES = "1.32"  # the API version the objects are validated against (kubernetes-validate's schemas)
CORE_KINDS = {"PersistentVolumeClaim", "Service", "StatefulSet", "Deployment", "NetworkPolicy"}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


@pytest.fixture(scope="module")
def rayjob():
    (job,) = documents("rayjob.yaml")
    return job


@pytest.fixture(scope="module")
def raycluster():
    (cluster,) = documents("raycluster.yaml")
    return cluster


def ray_schema(kind: str) -> dict:
    return {**SCHEMAS[kind], "definitions": SCHEMAS["definitions"]}


def groups(cluster_spec: dict) -> list[tuple[str, dict]]:
    return [("head", cluster_spec["headGroupSpec"]), *((g["groupName"], g) for g in cluster_spec["workerGroupSpecs"])]


def every_object() -> list[dict]:
    return [d for name in ("rayjob.yaml", "raycluster.yaml", "mlflow.yaml", "shared-storage.yaml")
            for d in documents(name)]


# ----------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_the_ray_fields_follow_kuberays_v1_spec(name):
    import jsonschema

    (document,) = documents(name)
    jsonschema.validate(document, ray_schema(document["kind"]))


def test_the_trimmed_schema_refuses_what_kuberay_would_not_take(rayjob):
    """The schema is no rubber stamp: a misspelt field, a wrong type, an unknown mode fail."""
    import jsonschema

    for path, value in [(("spec", "shutdownAfterJobFinish"), True), (("spec", "ttlSecondsAfterFinished"), "600"),
                        (("spec", "submissionMode"), "K8sMode"),
                        (("spec", "rayClusterSpec", "headGroupSpec", "serviceType"), "Public")]:
        broken = copy.deepcopy(rayjob)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ray_schema("RayJob"))
    broken = copy.deepcopy(rayjob)
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError, match="groupName"):
        jsonschema.validate(broken, ray_schema("RayJob"))


def test_the_kubernetes_objects_pass_kubernetes_schemas():
    import kubernetes_validate

    objects = [d for d in every_object() if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in objects} == CORE_KINDS
    for document in objects:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_every_ray_pod_template_passes_kubernetes_schemas(rayjob, raycluster):
    import kubernetes_validate

    templates = [("submitter", rayjob["spec"]["submitterPodTemplate"])]
    templates += [(n, g["template"]) for spec in (rayjob["spec"]["rayClusterSpec"], raycluster["spec"])
                  for n, g in groups(spec)]
    for name, template in templates:
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        kubernetes_validate.validate(pod_template, KUBERNETES, strict=True)
    broken = copy.deepcopy(templates[1][1])
    broken["spec"]["containers"][0]["resource"] = broken["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": broken}, KUBERNETES, strict=True)


# ----------------------------------------------------------------------------- what they promise


def test_the_rayjob_runs_a_shipped_sweep_and_removes_its_cluster_afterwards(rayjob):
    spec = rayjob["spec"]
    command = spec["entrypoint"].split()
    assert command[:3] == ["python", "-m", "gmt_ray.sweep"]
    experiment = Path(command[3])
    assert experiment.parts[:4] == ("/", "home", "ray", "gmt-ray")  # the checkout inside the image
    assert (ROOT / experiment.relative_to("/home/ray/gmt-ray")).is_file()
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    assert "WORKDIR /home/ray/gmt-ray" in (KUBERAY / "Dockerfile").read_text()


def test_the_interactive_cluster_has_the_same_pods_as_the_job(rayjob, raycluster):
    assert raycluster["spec"] == rayjob["spec"]["rayClusterSpec"]


def test_a_cpu_head_and_gpu_worker_groups_from_zero(rayjob):
    import ray

    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in (KUBERAY / "Dockerfile").read_text()
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert not any("gpu" in key for part in head.values() for key in part)
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no trials on the head
    assert cluster["enableInTreeAutoscaling"] is True
    for name, group in groups(cluster)[1:]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] > 0, name
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]  # as Kubernetes requires
        assert group["minReplicas"] == group["replicas"] == 0 < group["maxReplicas"]


def test_storage_path_is_the_shared_read_write_many_volume_on_every_ray_pod(rayjob):
    from gmt_ray.config import load_experiment

    (claim,) = documents("shared-storage.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, group in groups(rayjob["spec"]["rayClusterSpec"]):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
        assert mounts["shared"] == "/mnt/shared", name
    experiment = load_experiment(ROOT / rayjob["spec"]["entrypoint"].split()[3].removeprefix("/home/ray/gmt-ray/"))
    assert Path(experiment.storage_path).is_relative_to("/mnt/shared")


def test_mlflow_and_postgres_run_in_the_cluster_with_credentials_from_secrets(rayjob):
    objects = {(d["kind"], d["metadata"]["name"]): d for d in documents("mlflow.yaml")}
    postgres = objects[("StatefulSet", "gmt-ray-postgres")]["spec"]["template"]["spec"]["containers"][0]
    mlflow = objects[("Deployment", "gmt-ray-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    store = next(a for a in mlflow["args"] if a.startswith("--backend-store-uri="))
    assert store == "--backend-store-uri=postgresql://mlflow:$(POSTGRES_PASSWORD)@gmt-ray-postgres:5432/mlflow"
    for container in (postgres, mlflow):
        env = {e["name"]: e for e in container["env"]}
        password = env.get("POSTGRES_PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": "gmt-ray-postgres", "key": "password"}
    # MLflow's artifacts go to the shared volume; its database does not (its own ReadWriteOnce volume).
    assert "--artifacts-destination=/mnt/shared/mlflow/artifacts" in mlflow["args"]
    claim = objects[("StatefulSet", "gmt-ray-postgres")]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Every Ray pod finds the tracking server in a Secret (in-cluster or external).
    for name, group in groups(rayjob["spec"]["rayClusterSpec"]):
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"] == "gmt-ray-mlflow", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "gmt-ray-ray-token", name


def test_no_credential_is_written_in_a_manifest():
    for document in every_object():
        for env in _find(document, "env"):
            for variable in env:
                if re.search(r"PASSWORD|TOKEN|SECRET|KEY", variable["name"]):
                    assert "value" not in variable, (document["metadata"]["name"], variable)


def test_nothing_is_exposed_outside_the_cluster(rayjob):
    objects = every_object()
    assert not [d for d in objects if d["kind"] in ("Ingress", "Route", "Gateway")]
    for service in (d for d in objects if d["kind"] == "Service"):
        assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]
    for document in objects:
        assert not _find(document, "hostNetwork") and not _find(document, "hostPort") and not _find(document, "nodePort")
    for spec in (rayjob["spec"]["rayClusterSpec"], documents("raycluster.yaml")[0]["spec"]):
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
        assert not spec["headGroupSpec"].get("enableIngress")
    # MLflow takes connections from gmt-ray's Ray pods only, PostgreSQL from MLflow only.
    policies = {d["metadata"]["name"]: d["spec"] for d in objects if d["kind"] == "NetworkPolicy"}
    allowed = policies["gmt-ray-mlflow"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == {"app.kubernetes.io/part-of": "gmt-ray", "ray.io/is-ray-node": "yes"}
    for name, group in groups(rayjob["spec"]["rayClusterSpec"]):
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gmt-ray", name
    assert policies["gmt-ray-postgres"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gmt-ray-mlflow"}


def _find(node, key: str) -> list:
    """Every value under ``key`` anywhere in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in _find(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _find(v, key)]
    return []


# ----------------------------------------------------------------------------- planning against them


def test_the_worker_groups_are_read_as_kuberay_derives_ray_start():
    from gmt_ray.sweep.kuberay import kuberay_capacity, quantity

    assert quantity("500m") == 0.5 and quantity("1800Gi") == 1800 * 2**30 and quantity("2e3") == 2000.0
    with pytest.raises(ValueError):
        quantity("lots")
    spec = {"headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [
                {"name": "h", "resources": {"limits": {"cpu": "8", "memory": "32Gi"}}}]}}},
            "workerGroupSpecs": [
                {"groupName": "g", "replicas": 2, "maxReplicas": 5, "numOfHosts": 2,
                 "rayStartParams": {"resources": '"{\\"accelerator_type:A100\\": 4}"'},
                 "template": {"spec": {"containers": [{"name": "w", "resources": {
                     "requests": {"cpu": "7500m"}, "limits": {"nvidia.com/gpu": 4}}}]}}}]}
    capacity, replicas = kuberay_capacity(spec)
    # No autoscaler: replicas (2) x numOfHosts (2) pods; the CPU request rounded up; the head's CPUs overridden.
    assert replicas == "replicas"
    assert capacity == {"CPU": 32.0, "memory": 32 * 2**30, "GPU": 16.0, "accelerator_type:A100": 16.0}
    capacity, replicas = kuberay_capacity({**spec, "enableInTreeAutoscaling": True})
    assert replicas == "maxReplicas" and capacity["GPU"] == 40.0


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_dry_run_plans_the_paper_experiments_against_the_manifests(name):
    from gmt_ray.config import load_experiment
    from gmt_ray.sweep.plan import cluster_file_capacity, concurrency, describe_plan

    capacity, where = cluster_file_capacity(KUBERAY / name)
    assert where.endswith("at maxReplicas")
    assert capacity["GPU"] == 4 * 8 + 4 * 4 and capacity["accelerator_type:H100"] == 32
    for experiment in ("math", "code", "general", "dpo"):
        config = load_experiment(ROOT / "experiments" / f"{experiment}.yaml")
        plan = describe_plan(config)
        assert concurrency(plan["per_trial"], capacity, config.search.max_concurrent_trials) == 4, experiment


def test_dry_run_cluster_on_the_rayjob_from_the_command_line(monkeypatch, capsys):
    from gmt_ray.sweep.__main__ import main

    monkeypatch.chdir(ROOT)
    assert main(["experiments/math.yaml", "--dry-run", "--cluster", "cluster/kuberay/rayjob.yaml"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out[out.index("\n{") + 1:])
    assert list(plan["cluster"]) == ["cluster/kuberay/rayjob.yaml (RayJob) at maxReplicas"]
    assert plan["cluster"]["cluster/kuberay/rayjob.yaml (RayJob) at maxReplicas"]["GPU"] == 48.0
    assert plan["concurrent_trials"] == 4


def test_dry_run_cluster_refuses_a_manifest_without_a_ray_cluster(monkeypatch, capsys):
    from gmt_ray.sweep.__main__ import main

    monkeypatch.chdir(ROOT)
    assert main(["experiments/math.yaml", "--dry-run", "--cluster", "cluster/kuberay/mlflow.yaml"]) == 2
    assert "cluster/kuberay/mlflow.yaml: none of its 6 documents is a KubeRay RayJob or RayCluster" in \
        capsys.readouterr().err


def test_dry_run_cluster_names_a_file_that_is_no_mapping_or_no_yaml(monkeypatch, capsys, tmp_path):
    from gmt_ray.sweep.__main__ import main

    monkeypatch.chdir(ROOT)
    (tmp_path / "list.yaml").write_text("- head\n- workers\n")
    assert main(["experiments/math.yaml", "--dry-run", "--cluster", str(tmp_path / "list.yaml")]) == 2
    assert f"--cluster: {tmp_path / 'list.yaml'}: expected a mapping (a Ray cluster launcher file), not list" in \
        capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("available_node_types: [1\n")
    assert main(["experiments/math.yaml", "--dry-run", "--cluster", str(tmp_path / "broken.yaml")]) == 2
    assert f'in "{tmp_path / "broken.yaml"}", line 1' in capsys.readouterr().err  # YAML's own words, naming the file
