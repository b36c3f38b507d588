"""The generated arithmetic word problems' held-out test split (``data.source: arithmetic``)."""

from gmt_ray.eval.benchmarks._base import GeneratedBenchmark

BENCHMARK = GeneratedBenchmark(name="arithmetic")
