"""The evaluation's data as a run meets it: every evaluation file checked before training,
and what a run is evaluated on described for trackers (``DatasetRef``s)."""

from __future__ import annotations

import json
from pathlib import Path

from gmt_ray.config import Experiment
from gmt_ray.data.catalog import DatasetRef, file_digest, records_digest
from gmt_ray.eval.benchmarks import get_benchmark

__all__ = ["check_eval_data", "evaluation_datasets"]


def check_eval_data(config: Experiment) -> list[str]:
    """Loads every evaluation file now (``eval.data`` and ``eval.validation_data``), so that a
    missing or broken one is found before training rather than after it; returns the
    problems (empty: all fine)."""
    problems = []
    for name in config.eval.benchmarks:
        benchmark = get_benchmark(name)
        if benchmark.generated:
            continue
        try:
            benchmark.load_items(config.eval.data.get(name), limit=1)
        except (ValueError, FileNotFoundError) as error:
            problems.append(f"eval.data.{name}: {error}")
    for name, path in config.eval.validation_data.items():  # the problems a sweep chooses on
        try:
            get_benchmark(name).load_items(path, limit=1)
        except (ValueError, FileNotFoundError) as error:
            problems.append(f"eval.validation_data.{name}: {error}")
    return problems


def evaluation_datasets(config: Experiment, test_records: list[dict] | None) -> list[DatasetRef]:
    """What a run is evaluated on, one ``DatasetRef`` per benchmark (context ``eval``): the
    generated test split's records, or the benchmark's file (its digest, its problems)."""
    found = []
    limit = config.eval.max_samples
    for name in config.eval.benchmarks:
        benchmark = get_benchmark(name)
        if benchmark.generated:
            rows = (test_records or [])[:limit] if limit else (test_records or [])
            generator = {"mlflow.source.name": "gmt_ray.data.arithmetic.generate_arithmetic",
                         "gmt_ray.generator.config": json.dumps(config.data.arithmetic.model_dump(mode="json"),
                                                                sort_keys=True)}
            found.append(DatasetRef(name=f"{name}-test", digest=records_digest(rows), source_type="code",
                                    source={"tags": generator}, context="eval", split="test", rows=len(rows),
                                    columns=tuple(rows[0]) if rows else ()))
            continue
        path = config.eval.data.get(name)
        if path is None:
            path = getattr(benchmark, "_bundled_path", lambda: None)()
        if path is None or not Path(path).is_file():
            continue
        items = benchmark.load_items(path, limit=limit)
        found.append(DatasetRef(name=f"{name}-test", digest=file_digest(path), source_type="local",
                                source={"uri": str(Path(path).resolve())}, context="eval", split="test",
                                rows=len(items)))
    return found
