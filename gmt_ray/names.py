"""The ground floor: names every layer reads and none defines again.

Methods and their labels, Drop's strategies, the arithmetic story worlds, the benchmarks and
every metric's name live here as names only (what they do lives in masking/, data/ and eval/,
which check at import that they agree with this). Nothing here imports gmt-ray.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BARE", "BENCHMARKS", "DOMAINS", "DPO_METRICS", "DROP_STRATEGIES", "INTERVAL_SUFFIXES", "LM_EVAL_PREFIX",
           "MASK_METHODS", "METHOD_LABELS", "METHODS", "PASS_AT_KS", "PRETRAINING_DOMAINS", "RATIO_METHODS",
           "BenchmarkKind", "benchmark_metric", "benchmark_metrics", "benchmark_of_metric", "chosen_on", "evaluation_scores",
           "label_of", "method_label", "pass_at_ks", "pass_at_metric", "uses_mask_ratio"]

# Every training method a sweep compares, in the order reports list them. GradientMask
# applies the first four at every step (masking/methods.py says how); drop trains as sft and
# resets a ratio of the fine-tuning deltas afterwards (the paper's post-hoc Drop baseline).
MASK_METHODS = ("sft", "gmt", "rmt", "hft")
METHODS = (*MASK_METHODS, "drop")
# The methods for which mask.mask_ratio means something (sft and hft have none).
RATIO_METHODS = ("gmt", "rmt", "drop")
# Which deltas drop resets: the smallest |delta| (trivial, the paper's Drop), a random subset
# (DARE), or the largest.
DROP_STRATEGIES = ("trivial", "random", "salient")


def uses_mask_ratio(method: str) -> bool:
    """Whether ``mask.mask_ratio`` means anything to ``method``."""
    return method in RATIO_METHODS


def method_label(method: str, drop_strategy: str | None = None, apply_to: str | None = None) -> str:
    """A method as reports, run names and model names show it: drop with its strategy
    (``drop-trivial``) where the strategy is known, a masking method in the sparse-update
    mode with ``-update`` (``gmt-update``), every other as itself."""
    if method == "drop" and drop_strategy:
        return f"drop-{drop_strategy}"
    if apply_to == "update" and method in ("gmt", "rmt"):
        return f"{method}-update"
    return method


def label_of(params: Mapping[str, Any]) -> str:
    """The method label (``method_label``) of a run from its logged params."""
    return method_label(params.get("mask.method", "?"), params.get("mask.drop_strategy"), params.get("mask.apply_to"))


# Every label a report can show, in its order (drop once per strategy, the sparse-update modes
# after the rest).
METHOD_LABELS = (*MASK_METHODS, *(method_label("drop", s) for s in DROP_STRATEGIES),
                 *(method_label(m, apply_to="update") for m in RATIO_METHODS if m != "drop"))


# ----------------------------------------------------------------------------- story worlds

# The arithmetic generator's story worlds (gmt_ray/data/arithmetic.py writes each), and bare
# expressions instead of stories. The quick start's base model was pretrained on the first four
# and bare; its fine-tuning task is bus, which it never saw.
DOMAINS = ("collection", "money", "farm", "reading", "bus")
PRETRAINING_DOMAINS = ("collection", "money", "farm", "reading")
BARE = "bare"


# ----------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class BenchmarkKind:
    """What the layers need to know of a benchmark by its name (its code: the module of the
    same name in gmt_ray/eval/benchmarks/, which checks that it agrees with this)."""

    score: str  # accuracy or pass@1: reported as <name>_<score> (pass@1 as pass_at_1)
    problems: str  # generated (the data's own held-out split), bundled (shipped), or file (eval.data.<name>)
    executes_code: bool = False  # its samples are programs, run in the sandbox

    @property
    def needs_data(self) -> bool:
        return self.problems == "file"

    @property
    def generated(self) -> bool:
        return self.problems == "generated"


BENCHMARKS = {
    "arithmetic": BenchmarkKind("accuracy", "generated"),
    "gsm8k": BenchmarkKind("accuracy", "file"),
    "humaneval": BenchmarkKind("pass@1", "bundled", executes_code=True),
    "humaneval_plus_tests": BenchmarkKind("pass@1", "file", executes_code=True),
    "math": BenchmarkKind("accuracy", "file"),
    "mbpp": BenchmarkKind("pass@1", "file", executes_code=True),
    "mbpp_plus_tests": BenchmarkKind("pass@1", "file", executes_code=True),
}


# ----------------------------------------------------------------------------- metrics
#
# Training reports loss and val_loss (and the step figures), DPO its pair metrics
# (DPO_METRICS, and val_ of each), every benchmark <benchmark>_<score> with _low/_high bounds of
# its 95% interval (a code benchmark sampled several times per problem also
# <benchmark>_pass_at_<k>; on validation problems each with val_ before it), and lm-eval
# lm_eval/<task>/<metric>.

# Means per preference pair: judged right, margin, policy log-probs, implicit rewards.
DPO_METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen",
               "rewards_rejected")
LM_EVAL_PREFIX = "lm_eval/"
INTERVAL_SUFFIXES = ("_low", "_high")
# pass@k reported for a code benchmark with n samples per problem: each of these k up to n
# (the unbiased estimator needs k <= n).
PASS_AT_KS = (1, 10, 100)
_SCORE = re.compile(r"(?:val_)?(?P<benchmark>.+?)_(?:accuracy|pass_at_(?P<k>\d+))")


def pass_at_ks(samples: int) -> tuple[int, ...]:
    """The k of pass@k that ``samples`` completions per problem can estimate: 1, 10, 100 up to it."""
    return tuple(k for k in PASS_AT_KS if k <= samples)


def pass_at_metric(benchmark: str, k: int) -> str:
    """``humaneval_pass_at_10``: a code benchmark's pass@k."""
    return f"{benchmark}_pass_at_{k}"


def benchmark_metric(benchmark: str) -> str:
    """The metric a benchmark's score is reported as: ``gsm8k_accuracy``, ``humaneval_pass_at_1``."""
    return f"{benchmark}_{BENCHMARKS[benchmark].score.replace('@', '_at_')}"


def benchmark_metrics(benchmarks, samples: dict[str, int] | None = None) -> list[str]:
    """Every metric the benchmarks report: each score and its interval's bounds, and pass@k
    for k > 1 of the benchmarks sampled ``samples[name]`` times per problem."""
    names = [benchmark_metric(b) + suffix for b in benchmarks for suffix in ("", *INTERVAL_SUFFIXES)]
    return names + [pass_at_metric(b, k) for b in benchmarks for k in pass_at_ks((samples or {}).get(b, 1))[1:]]


def benchmark_of_metric(metric: str) -> str | None:
    """The benchmark a score metric belongs to: ``val_arithmetic_accuracy`` and
    ``arithmetic_accuracy`` -> ``arithmetic``, ``humaneval_pass_at_10`` -> ``humaneval``;
    None for anything else (losses, lm-eval's own names)."""
    match = _SCORE.fullmatch(metric)
    return match.group("benchmark") if match and match.group("benchmark") in BENCHMARKS else None


def chosen_on(objective: str, benchmarks) -> str | None:
    """The benchmark whose validation problems a search with objective ``objective`` chooses
    on (``val_<benchmark>_<score>``, the benchmark among the evaluated ``benchmarks``); None
    where the objective is no benchmark's (val_loss)."""
    benchmark = benchmark_of_metric(objective)
    return benchmark if objective.startswith("val_") and benchmark in benchmarks else None


def evaluation_scores(metrics: dict, objective: str | None = None) -> dict[str, float]:
    """The evaluation scores among ``metrics`` (benchmarks on either split, and lm-eval; not
    their bounds, not the objective), by name."""
    def is_score(name: str) -> bool:
        return benchmark_of_metric(name) is not None or (name.startswith(LM_EVAL_PREFIX)
                                                         and not name.endswith("_stderr"))

    return {k: v for k, v in metrics.items() if k != objective and isinstance(v, (int, float))
            and not isinstance(v, bool) and is_score(k)}
