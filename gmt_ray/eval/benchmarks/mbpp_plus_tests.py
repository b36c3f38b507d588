"""MBPP with EvalPlus's expanded tests (the evalplus/mbppplus dataset's ``test``), run in the
sandbox as plain checks: not EvalPlus's evaluator, so the score does not claim the name MBPP+."""

from gmt_ray.eval.benchmarks._base import CodeBenchmark

BENCHMARK = CodeBenchmark(name="mbpp_plus_tests", family="mbpp", evalplus=True)
