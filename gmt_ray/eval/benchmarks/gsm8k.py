"""GSM8K (Cobbe et al., 2021): JSONL with ``question`` and an ``answer`` ending in ``#### N``."""

from gmt_ray.eval.benchmarks._base import MathBenchmark

BENCHMARK = MathBenchmark(name="gsm8k", question_field="question", answer_field="answer", style="gsm8k")
