"""The names of the metrics a trial reports: the one place that builds and reads them.

Training reports ``loss`` and ``val_loss`` (and the step figures), DPO its pair metrics
(``DPO_METRICS``, and ``val_`` of each), every benchmark ``<benchmark>_<score>`` with
``_low``/``_high`` bounds of its 95% interval, and lm-eval ``lm_eval/<task>/<metric>``.
"""

from __future__ import annotations

__all__ = ["DPO_METRICS", "LM_EVAL_PREFIX", "benchmark_metric", "benchmark_metrics", "evaluation_scores"]

# Means per preference pair: judged right, margin, policy log-probs, implicit rewards.
DPO_METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen",
               "rewards_rejected")
LM_EVAL_PREFIX = "lm_eval/"
INTERVAL_SUFFIXES = ("_low", "_high")


def benchmark_metric(benchmark: str) -> str:
    """The metric a benchmark's score is reported as: ``gsm8k_accuracy``, ``humaneval_pass_at_1``."""
    from gmt_ray.eval.benchmarks import get_benchmark

    return get_benchmark(benchmark).metric


def benchmark_metrics(benchmarks) -> list[str]:
    """Every metric the benchmarks report: each score and its interval's bounds."""
    return [benchmark_metric(b) + suffix for b in benchmarks for suffix in ("", *INTERVAL_SUFFIXES)]


def evaluation_scores(metrics: dict, objective: str | None = None) -> dict[str, float]:
    """The evaluation scores among ``metrics`` (benchmarks and lm-eval; not their bounds,
    not the objective), by name."""
    from gmt_ray.eval.benchmarks import BENCHMARKS

    scores = {b.metric for b in BENCHMARKS.values()}
    return {k: v for k, v in metrics.items() if k != objective and isinstance(v, (int, float))
            and (k in scores or (k.startswith(LM_EVAL_PREFIX) and not k.endswith("_stderr")))}
