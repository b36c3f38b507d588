"""Everything gmt-ray needs from Ray that Ray does not offer as public API, in one place.

Each function here leans on a private module, attribute or file format of Ray 2.60.
tests/test_ray_compat.py checks every one of them against the installed Ray, so that a
Ray release that changes one fails a test by name instead of breaking a sweep quietly.
Nothing else in gmt_ray touches ``ray._private`` or Ray's internal files.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

__all__ = ["WORKER_POOL_WARNING", "GcsAnswer", "bootstrap_file", "canonical_address", "forget_recorded_cluster",
           "gcs_answers", "hide_worker_pool_warning", "local_gcs_addresses", "recorded_cluster",
           "registered_checkpoints", "restored_callbacks", "show_worker_pool_warning", "torch_trainer_class",
           "train_worker_callback", "use_local_token"]

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


# ----------------------------------------------------------------------------- finding a cluster
#
# ray.init() without an address connects to the cluster named in Ray's bootstrap file
# (``ray_current_cluster`` in Ray's temp dir), which ``ray start`` writes and only
# ``ray stop`` removes: after a crash it names a dead head. These pieces let launch.py
# look at that file and at a cluster before ray.init does, and bound how long it waits.


def restored_callbacks(tuner) -> list:
    """The Tune callbacks that ``Tuner.restore`` unpickled from the experiment's state, as they
    were when the sweep began (``Tuner.restore`` takes no new ``RunConfig``). Ray 2.60 keeps
    them in its ``TunerInternal``'s run config."""
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def bootstrap_file() -> Path:
    """Ray's bootstrap file: ``$RAY_TMPDIR/ray`` (else ``$TMPDIR/ray``, else ``/tmp/ray``)
    ``/ray_current_cluster``, the cluster a plain ``ray.init()`` connects to."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def recorded_cluster() -> str | None:
    """The GCS address (host:port) the bootstrap file names, None where there is none
    (also where another process removes it as it is read: `ray stop`, another command)."""
    from ray._private.utils import read_ray_address

    try:  # Ray checks that the file exists, then opens it: it may be gone in between
        return read_ray_address(None) or None
    except FileNotFoundError:
        return None


def forget_recorded_cluster(address: str) -> bool:
    """Removes Ray's bootstrap file if it still names ``address``, as `ray stop` removes it
    for the cluster it stopped; False where it names another cluster, is gone, or stays."""
    from ray._common.utils import reset_ray_address

    if recorded_cluster() != address:
        return False
    reset_ray_address(None)  # ignores an OSError, as `ray stop` does
    return recorded_cluster() is None


def canonical_address(address: str) -> str:
    """``address`` as ray.init will dial it: host:port with loopback names replaced by this
    node's address (Ray does that, so 127.0.0.1:P reaches a head bound to the node's IP);
    ``auto`` resolved as Ray resolves it (the bootstrap file, else a local raylet's GCS).

    Raises:
        ValueError: not a host:port address.
        ConnectionError: ``auto`` and no Ray runs here.
    """
    from ray._private.services import canonicalize_bootstrap_address

    resolved = canonicalize_bootstrap_address(address, None)
    if resolved is None:  # "local", or "auto" with nothing found (Ray raises for that itself)
        raise ConnectionError(f"{address!r} names no running cluster")
    return resolved


def local_gcs_addresses() -> set[str]:
    """GCS addresses of the Ray clusters with a raylet on this machine (from the raylets'
    command lines), whatever temp dir or user started them."""
    from ray._private.services import find_gcs_addresses

    find_gcs_addresses.cache_clear()
    return set(find_gcs_addresses())


def use_local_token() -> bool:
    """Sends this machine's Ray token (``~/.ray/auth_token`` or RAY_AUTH_TOKEN) to the
    clusters this process connects to, as ray.init does by itself only for the cluster it
    finds with no address or ``auto``; returns whether token auth is now on. An explicit
    RAY_AUTH_MODE is respected. Only for clusters running on this machine: the token is
    this machine's."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class GcsAnswer:
    """What a cluster's GCS said to ``gcs_answers``: ``ok``, or ``error`` (``auth`` when it
    refused this process's token, ``timeout`` when nothing answered in time)."""

    def __init__(self, ok: bool, error: str = "", *, auth: bool = False, timeout: bool = False):
        self.ok, self.error, self.auth, self.timeout = ok, error, auth, timeout


def gcs_answers(address: str, timeout_s: float) -> GcsAnswer:
    """Asks the GCS at ``address`` for its cluster id, as every Ray process does first,
    waiting at most ``timeout_s`` (Ray's own client retries for ~40 s, and ray.init far
    longer, against an address that accepts connections but is not Ray).

    The client call releases the GIL; on timeout it is left to give up on its own in a
    daemon thread.
    """
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    outcome: list[GcsAnswer] = []

    def ask():
        try:
            client = GcsClient(address=address)
            client.cluster_id  # noqa: B018 - fetched at construction; read to be sure
            outcome.append(GcsAnswer(True))
        except AuthenticationError as error:
            outcome.append(GcsAnswer(False, str(error), auth=True))
        except Exception as error:  # noqa: BLE001 - RpcError and friends: not a GCS, or not answering
            outcome.append(GcsAnswer(False, f"{type(error).__name__}: {error}"))

    thread = threading.Thread(target=ask, name="gmt-ray-gcs-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return GcsAnswer(False, f"no Ray GCS answered within {timeout_s:g} s", timeout=True)
    return outcome[0]


def train_worker_callback() -> type:
    """Ray Train V2's ``WorkerCallback`` (a DeveloperAPI in a private module): the base of
    callbacks that run inside every Train worker. A callback of this type passed in
    ``ray.train.RunConfig(callbacks=...)`` is copied to each worker, where
    ``after_init_train_context()`` runs once the worker's train context is set (before the
    training function starts) and ``before_worker_shutdown()`` when the worker group stops."""
    from ray.train.v2._internal.execution.callback import WorkerCallback

    return WorkerCallback


@functools.cache
def torch_trainer_class() -> type:
    """``ray.train.torch.TorchTrainer`` without Ray Data's actor when it has no datasets.

    Ray Train V2 adds its ``DatasetsCallback`` to every run, which starts a ``DatasetManager``
    actor (a process that imports Ray Data, ~1.5 CPU-s) even when no dataset was passed. A
    sweep's trials pass none (the recipe reads its own tokenised data) and each trial is a
    new run, so on a small machine that actor is a measurable share of a trial's start-up.
    Overrides the private ``_create_default_callbacks``; with datasets it changes nothing.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTorchTrainer
