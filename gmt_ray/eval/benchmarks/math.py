"""MATH (Hendrycks et al., 2021): JSONL with ``problem`` and a ``solution`` holding a ``\\boxed{}`` answer."""

from gmt_ray.eval.benchmarks._base import MathBenchmark

BENCHMARK = MathBenchmark(name="math", question_field="problem", answer_field="solution", style="math")
