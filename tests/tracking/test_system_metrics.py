"""MLflow's system-metrics monitor in a run (gmt_ray.tracking.system_metrics)."""


from gmt_ray import tracking


def test_system_metrics_reach_a_run_even_when_it_is_shorter_than_one_interval(store):
    import time

    uri, trials = store
    metrics = tracking.SystemMetrics(uri, trials["d"], interval_s=60).start()
    time.sleep(0.5)
    metrics.stop()
    logged = tracking.client(uri).get_run(trials["d"]).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(logged)
    node = tracking.SystemMetrics(uri, trials["d"], node_id="node1", interval_s=0.2).start()
    time.sleep(1.0)
    node.stop()
    history = tracking.client(uri).get_metric_history(trials["d"], "system/node1/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled every interval, not only at the end
