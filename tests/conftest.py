import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the whole session (starting one costs ~10 s)."""
    from gmt_ray.train.launch import init_ray

    # Logical CPUs: room for two 1-CPU workers plus trial drivers on a 2-core machine.
    init_ray(num_cpus=6)
    import ray

    yield ray
    ray.shutdown()
