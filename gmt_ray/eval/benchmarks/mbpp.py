"""MBPP (Austin et al., 2021): JSONL in the original or sanitized format (``test_list`` assertions), or
EvalPlus's MBPP+ file (evalplus/mbppplus), whose 378 problems are then scored on their base tests only:
the problem set EvalPlus reports as MBPP."""

from gmt_ray.eval.benchmarks._base import CodeBenchmark

BENCHMARK = CodeBenchmark(name="mbpp", family="mbpp")
