"""Everything gmt-ray needs from Ray that Ray does not offer as public API, in one place.

Each function here leans on a private module, attribute or file format of Ray 2.60.
tests/test_ray_compat.py checks every one of them against the installed Ray, so that a
Ray release that changes one fails a test by name instead of breaking a sweep quietly.
Nothing else in gmt_ray touches ``ray._private`` or Ray's internal files.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["WORKER_POOL_WARNING", "hide_worker_pool_warning", "registered_checkpoints", "show_worker_pool_warning",
           "train_worker_callback"]

# The raylet's message when it starts more Python workers than it has CPUs.
WORKER_POOL_WARNING = "worker processes have been started"
# Ray Train V2's record of the checkpoints its controller registered, in a run directory.
_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def hide_worker_pool_warning() -> bool:
    """Drops the raylet's "N PYTHON worker processes have been started" warning from the
    driver's console; returns whether the filter is in place.

    A sweep's trials start several short-lived actors per CPU (trial driver, Train
    controller, Train workers), which trips it on every small machine; Ray prints it to
    the driver's console unconditionally (no setting turns it off). Every other raylet
    message still shows.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return False
    if getattr(original, "_gmt_ray_filtered", False):
        return True

    def filtered(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if WORKER_POOL_WARNING not in line]
        if lines:
            original({**data, "lines": lines}, *args, **kwargs)

    filtered._gmt_ray_filtered = True
    filtered._gmt_ray_original = original
    ray_worker.print_to_stdstream = filtered
    return True


def show_worker_pool_warning() -> None:
    """Undoes ``hide_worker_pool_warning``."""
    import ray._private.worker as ray_worker

    original = getattr(getattr(ray_worker, "print_to_stdstream", None), "_gmt_ray_original", None)
    if original is not None:
        ray_worker.print_to_stdstream = original


def registered_checkpoints(run_dir: str | Path) -> list[Path] | None:
    """The checkpoint directories Ray Train's controller registered for a run, from the
    snapshot it keeps in the run directory; None where there is no readable snapshot."""
    snapshot = Path(run_dir) / _CHECKPOINT_SNAPSHOT
    if not snapshot.exists():
        return None
    try:
        registered = json.loads(snapshot.read_text())["checkpoint_results"]
        return [Path(run_dir) / entry["checkpoint_dir_name"] for entry in registered]
    except (ValueError, KeyError, TypeError):
        return None


def train_worker_callback() -> type:
    """Ray Train V2's ``WorkerCallback`` (a DeveloperAPI in a private module): the base of
    callbacks that run inside every Train worker. A callback of this type passed in
    ``ray.train.RunConfig(callbacks=...)`` is copied to each worker, where
    ``after_init_train_context()`` runs once the worker's train context is set (before the
    training function starts) and ``before_worker_shutdown()`` when the worker group stops."""
    from ray.train.v2._internal.execution.callback import WorkerCallback

    return WorkerCallback
