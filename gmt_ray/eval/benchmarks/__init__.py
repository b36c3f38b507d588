"""The benchmark registry: every module of this package defines one ``BENCHMARK``.

Adding a benchmark is adding a module here, its line in gmt_ray/names.py (and its test):
configs, the evaluation CLI, metric names and reports find it by its name.
"""

from __future__ import annotations

import importlib
import pkgutil

from gmt_ray import names
from gmt_ray.eval.benchmarks._base import (
    Benchmark,
    CodeBenchmark,
    EvalItem,
    GeneratedBenchmark,
    MathBenchmark,
)

__all__ = ["BENCHMARKS", "Benchmark", "CodeBenchmark", "EvalItem", "GeneratedBenchmark", "MathBenchmark",
           "get_benchmark"]


def _discover() -> dict[str, Benchmark]:
    found = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        benchmark = importlib.import_module(f"{__name__}.{module.name}").BENCHMARK
        if benchmark.name != module.name:
            raise ImportError(f"{__name__}.{module.name} defines benchmark {benchmark.name!r}: name them alike")
        kind = names.BENCHMARKS.get(benchmark.name)
        if kind is None or (kind.score, kind.needs_data, kind.generated, kind.executes_code) != \
                (benchmark.score, benchmark.needs_data, benchmark.generated, benchmark.executes_code):
            raise ImportError(f"benchmark {benchmark.name!r} and its entry in gmt_ray.names.BENCHMARKS ({kind}) "
                              "disagree: a new benchmark is a module here and a line there")
        found[benchmark.name] = benchmark
    if set(found) != set(names.BENCHMARKS):
        raise ImportError(f"gmt_ray.names.BENCHMARKS names {sorted(set(names.BENCHMARKS) - set(found))}, which have no "
                          "module here")
    return found


BENCHMARKS: dict[str, Benchmark] = _discover()


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``.

    Raises:
        ValueError: no such benchmark (the message lists the known ones).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
