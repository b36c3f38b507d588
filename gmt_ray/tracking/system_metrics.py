"""MLflow's own system-metrics monitor, logging a machine's figures into a run."""

from __future__ import annotations

__all__ = ["SystemMetrics"]


class SystemMetrics:
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPUs where
    nvidia-ml-py finds them) logging this machine's figures to a run as ``system/...``
    metrics (``system/<node_id>/...`` with a node id) every ``interval_s`` seconds, from a
    thread of this process.

    A run shorter than one interval still gets one sample: ``stop()`` logs what was sampled.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, node_id: str | None = None, interval_s: float = 10.0):
        self.tracking_uri, self.run_id, self.node_id, self.interval_s = tracking_uri, run_id, node_id, interval_s
        self._monitor = None
        self._first_step = 0

    def start(self) -> SystemMetrics:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: steps continue after those already in the run (a retried trial, other nodes).
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval_s, samples_before_logging=1,
                                             resume_logging=True, node_id=self.node_id, tracking_uri=self.tracking_uri)
        self._first_step = getattr(self._monitor, "_logging_step", 0)
        self._monitor.start()
        return self

    def stop(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor.finish()
        # MLflow's monitor logs at the end of each interval only and drops the interval in
        # progress when it stops: a run shorter than one interval would have no system metrics.
        if getattr(monitor, "_logging_step", None) == self._first_step:
            try:
                if not monitor.aggregate_metrics():
                    monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception:  # noqa: BLE001 - a last sample is a courtesy, never a failure
                pass
