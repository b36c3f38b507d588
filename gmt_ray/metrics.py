"""The names of the metrics a trial reports: the one place that builds and reads them.

Training reports ``loss`` and ``val_loss`` (and the step figures), DPO its pair metrics
(``DPO_METRICS``, and ``val_`` of each), every benchmark ``<benchmark>_<score>`` with
``_low``/``_high`` bounds of its 95% interval (a code benchmark sampled several times per
problem also ``<benchmark>_pass_at_<k>``), and lm-eval ``lm_eval/<task>/<metric>``.
"""

from __future__ import annotations

import re

__all__ = ["DPO_METRICS", "LM_EVAL_PREFIX", "PASS_AT_KS", "benchmark_metric", "benchmark_metrics", "evaluation_scores",
           "pass_at_ks", "pass_at_metric"]

# Means per preference pair: judged right, margin, policy log-probs, implicit rewards.
DPO_METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen",
               "rewards_rejected")
LM_EVAL_PREFIX = "lm_eval/"
INTERVAL_SUFFIXES = ("_low", "_high")
# pass@k reported for a code benchmark with n samples per problem: each of these k up to n
# (the unbiased estimator needs k <= n).
PASS_AT_KS = (1, 10, 100)
_PASS_AT = re.compile(r"(?P<benchmark>.+)_pass_at_(?P<k>\d+)")


def pass_at_ks(samples: int) -> tuple[int, ...]:
    """The k of pass@k that ``samples`` completions per problem can estimate: 1, 10, 100 up to it."""
    return tuple(k for k in PASS_AT_KS if k <= samples)


def pass_at_metric(benchmark: str, k: int) -> str:
    """``humaneval_pass_at_10``: a code benchmark's pass@k."""
    return f"{benchmark}_pass_at_{k}"


def benchmark_metric(benchmark: str) -> str:
    """The metric a benchmark's score is reported as: ``gsm8k_accuracy``, ``humaneval_pass_at_1``."""
    from gmt_ray.eval.benchmarks import get_benchmark

    return get_benchmark(benchmark).metric


def benchmark_metrics(benchmarks, samples: dict[str, int] | None = None) -> list[str]:
    """Every metric the benchmarks report: each score and its interval's bounds, and pass@k
    for k > 1 of the benchmarks sampled ``samples[name]`` times per problem."""
    names = [benchmark_metric(b) + suffix for b in benchmarks for suffix in ("", *INTERVAL_SUFFIXES)]
    return names + [pass_at_metric(b, k) for b in benchmarks for k in pass_at_ks((samples or {}).get(b, 1))[1:]]


def evaluation_scores(metrics: dict, objective: str | None = None) -> dict[str, float]:
    """The evaluation scores among ``metrics`` (benchmarks and lm-eval; not their bounds,
    not the objective), by name."""
    from gmt_ray.eval.benchmarks import BENCHMARKS

    scores = {b.metric for b in BENCHMARKS.values()}

    def is_score(name: str) -> bool:
        sampled = _PASS_AT.fullmatch(name)
        return (name in scores or (sampled is not None and sampled["benchmark"] in BENCHMARKS)
                or (name.startswith(LM_EVAL_PREFIX) and not name.endswith("_stderr")))

    return {k: v for k, v in metrics.items() if k != objective and isinstance(v, (int, float)) and is_score(k)}
