"""Confidence intervals for evaluation scores, from scipy's closed forms.

An accuracy (or pass@1 with one sample per problem) counts successes among n problems:
its interval is the Wilson score interval of a binomial proportion. Unlike a percentile
bootstrap, it never claims certainty the data cannot give: 0 of 64 correct gives
[0, 0.057], not [0, 0].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

__all__ = ["rate_interval", "wilson_interval"]


def wilson_interval(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(successes / trials, low, high): the Wilson score interval (``scipy.stats.binomtest``).

    Raises:
        ValueError: for no trials, successes outside [0, trials], or a confidence outside (0, 1).
    """
    _check(confidence)
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, but got {successes=}, {trials=}.")
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return successes / trials, float(interval.low), float(interval.high)


def rate_interval(rates: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-problem success rates in [0, 1].

    With 0/1 rates (one sample per problem) this is ``wilson_interval``. With fractional
    rates (pass@1 from several samples per problem) it is the same Wilson score formula
    at the mean rate over n problems; it is conservative there, because a variable in
    [0, 1] with mean p has a variance of at most p(1 - p), the binomial one.

    Raises:
        ValueError: for no rates, a rate outside [0, 1], or a confidence outside (0, 1).
    """
    _check(confidence)
    values = [float(r) for r in rates]
    if not values:
        raise ValueError("no scores to summarise")
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"rates must lie in [0, 1], but got {min(values)}..{max(values)}.")
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(int(sum(values)), len(values), confidence=confidence)
    n, p = len(values), math.fsum(values) / len(values)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, center - half), min(1.0, center + half)


def _check(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), but got confidence={confidence}.")
