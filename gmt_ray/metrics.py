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

# benchmark -> the name of its score (replaced by the benchmark registry)
_SCORES = {"arithmetic": "accuracy", "gsm8k": "accuracy", "math": "accuracy", "humaneval": "pass_at_1",
           "mbpp": "pass_at_1"}
INTERVAL_SUFFIXES = ("_low", "_high")


def benchmark_metric(benchmark: str) -> str:
    """The metric a benchmark's score is reported as: ``gsm8k_accuracy``, ``humaneval_pass_at_1``."""
    return f"{benchmark}_{_SCORES[benchmark]}"


def benchmark_metrics(benchmarks) -> list[str]:
    """Every metric the benchmarks report: each score and its interval's bounds."""
    return [benchmark_metric(b) + suffix for b in benchmarks for suffix in ("", *INTERVAL_SUFFIXES)]


def evaluation_scores(metrics: dict, objective: str | None = None) -> dict[str, float]:
    """The evaluation scores among ``metrics`` (benchmarks and lm-eval; not their bounds,
    not the objective), by name."""
    scores = {benchmark_metric(b) for b in _SCORES}
    return {k: v for k, v in metrics.items() if k != objective and isinstance(v, (int, float))
            and (k in scores or (k.startswith(LM_EVAL_PREFIX) and not k.endswith("_stderr")))}
