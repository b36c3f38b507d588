"""The Ray resources a KubeRay manifest (``ray.io/v1`` RayJob or RayCluster) can bring up, for
``--dry-run --cluster``: the head and every worker group, each pod's resources derived as the
KubeRay operator derives its ``ray start`` flags (``rayStartParams`` first, else the Ray
container's limits: ``num-cpus`` from ``cpu`` (rounded up; the requests when no limit is set),
``num-gpus`` from a resource named ``*gpu`` such as ``nvidia.com/gpu``, ``memory`` from
``memory``; custom resources from the ``resources`` parameter)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["RAY_KINDS", "kuberay_capacity", "kuberay_cluster_spec", "quantity"]

RAY_KINDS = ("RayJob", "RayCluster")
_SUFFIXES = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
             "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``190``, ``1800Gi``, ``1e3``) as a number.

    Raises:
        ValueError: not a quantity.
    """
    found = re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)\s*", str(value))
    if not found or found.group(2) not in _SUFFIXES:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(found.group(1)) * _SUFFIXES[found.group(2)]


def kuberay_cluster_spec(documents: list[Any]) -> tuple[str, dict] | None:
    """The RayCluster spec in a manifest's documents (a RayJob's ``rayClusterSpec``) and the
    kind it came from; None when no document is a ``ray.io/v1`` RayJob or RayCluster."""
    for document in documents:
        if not isinstance(document, dict) or document.get("kind") not in RAY_KINDS:
            continue
        if document.get("apiVersion") != "ray.io/v1":
            raise ValueError(f"{document['kind']} has apiVersion {document.get('apiVersion')!r}: "
                             "gmt-ray reads ray.io/v1")
        spec = document.get("spec") or {}
        cluster = spec.get("rayClusterSpec") if document["kind"] == "RayJob" else spec
        if not isinstance(cluster, dict):
            name = (document.get("metadata") or {}).get("name")
            raise ValueError(f"{document['kind']} {name!r} has no cluster spec (a RayJob that selects a running "
                             "cluster by clusterSelector cannot be planned from its file)")
        return document["kind"], cluster
    return None


def kuberay_capacity(cluster: dict) -> tuple[dict[str, float], str]:
    """The most resources a RayCluster spec brings up: the head plus each worker group at its
    ``maxReplicas`` when the autoscaler is on (else ``replicas``), times ``numOfHosts``.

    Returns:
        The resources, and which replica count was used (``maxReplicas`` or ``replicas``).

    Raises:
        ValueError: a group without a pod template or with a value KubeRay would not accept.
    """
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    field = "maxReplicas" if autoscaling else "replicas"
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        raise ValueError("no headGroupSpec")
    groups = [("head", head, 1)]
    for group in cluster.get("workerGroupSpecs") or []:
        name = group.get("groupName", "?")
        replicas = int(group.get(field, 0 if field == "replicas" else 2**31 - 1))  # KubeRay's defaults
        count = replicas * int(group.get("numOfHosts", 1))
        groups.append((name, group, count))
    total: dict[str, float] = {}
    for name, group, count in groups:
        for key, value in _pod_resources(name, group).items():
            total[key] = total.get(key, 0.0) + count * value
    return total, field


def _pod_resources(name: str, group: dict) -> dict[str, float]:
    params = {key: str(value) for key, value in (group.get("rayStartParams") or {}).items()}
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        raise ValueError(f"group {name!r}: its pod template has no containers")
    resources = containers[0].get("resources") or {}  # KubeRay's Ray container is the first one
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    try:
        out: dict[str, float] = {}
        cpu = params.get("num-cpus", limits.get("cpu", requests.get("cpu")))
        if cpu is not None:
            out["CPU"] = float(math.ceil(quantity(cpu)))
        gpu = params.get("num-gpus", next((v for k, v in limits.items() if k.endswith("gpu")), None))
        if gpu is not None and quantity(gpu) > 0:
            out["GPU"] = float(math.ceil(quantity(gpu)))
        memory = params.get("memory", limits.get("memory"))
        if memory is not None:
            out["memory"] = float(math.ceil(quantity(memory)))
        if "resources" in params:  # a JSON object, as KubeRay passes it: often quoted once more for the shell
            custom = json.loads(params["resources"].strip().strip("'\"").replace('\\"', '"'))
            out.update({key: float(value) for key, value in custom.items()})
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"group {name!r}: {error}") from None
    return out
