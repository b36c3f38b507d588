"""HumanEval with EvalPlus's expanded tests (the evalplus/humanevalplus dataset's ``test``), run in
the sandbox as plain checks: not EvalPlus's evaluator (no per-input time limits, no special
oracles), so the score does not claim the name HumanEval+ (see ``gmt_ray.eval.code``)."""

from gmt_ray.eval.benchmarks._base import CodeBenchmark

BENCHMARK = CodeBenchmark(name="humaneval_plus_tests", family="humaneval", evalplus=True)
