"""MBPP (Austin et al., 2021): JSONL in the original or sanitized format (``test_list`` assertions)."""

from gmt_ray.eval.benchmarks._base import CodeBenchmark

BENCHMARK = CodeBenchmark(name="mbpp", family="mbpp")
