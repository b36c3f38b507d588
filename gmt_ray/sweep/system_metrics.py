"""System metrics (CPU, memory, disk, network, GPUs) of every node a trial trains on, in the
trial's MLflow run: a Ray Train callback that runs inside the Train workers.

The recipe knows Ray Train only; this callback, passed in the trial's Train ``RunConfig``,
is copied into each worker by Ray Train. On each node the worker of local rank 0 starts
MLflow's ``SystemMetricsMonitor`` for the trial's run (``system/...`` metrics; on a
multi-node trial ``system/node<N>/...``) and stops it when the worker group shuts down.
MLflow is imported and the monitor started in a background thread, so the training
function does not wait for it.

This module stays light (no Tune, no MLflow at import): every Train worker unpickles it.
"""

from __future__ import annotations

import threading

from gmt_ray.ray_compat import train_worker_callback

__all__ = ["SystemMetricsCallback"]


class SystemMetricsCallback(train_worker_callback()):
    """Logs each node's system metrics to the MLflow run ``run_id`` every ``interval_s``."""

    def __init__(self, tracking_uri: str, run_id: str, interval_s: float = 10.0):
        self.tracking_uri, self.run_id, self.interval_s = tracking_uri, run_id, interval_s
        self._thread: threading.Thread | None = None
        self._metrics = None

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "interval_s": self.interval_s}

    def __setstate__(self, state):
        self.__init__(**state)

    def after_init_train_context(self) -> None:
        import ray.train

        context = ray.train.get_context()
        if context.get_local_rank() != 0:
            return  # one monitor per node: it measures the whole machine
        multi_node = context.get_world_size() != context.get_local_world_size()
        node_id = f"node{context.get_node_rank()}" if multi_node else None
        self._thread = threading.Thread(target=self._start, args=(node_id,), daemon=True,
                                        name="gmt-ray-system-metrics")
        self._thread.start()

    def _start(self, node_id: str | None) -> None:
        from gmt_ray.tracking import SystemMetrics

        try:
            self._metrics = SystemMetrics(self.tracking_uri, self.run_id, node_id=node_id,
                                          interval_s=self.interval_s).start()
        except Exception:  # noqa: BLE001 - metrics about the machine must never fail a trial
            self._metrics = None

    def before_worker_shutdown(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
