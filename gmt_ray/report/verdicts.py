"""Verdicts: is method a better than method b, and how sure is that?

Each confirmed configuration is trained with the same fresh seeds (one per round) and
evaluated on the same test problems, so a comparison of a and b has a seeds x problems
matrix of differences ``D[s, p] = score_a[s, p] - score_b[s, p]``, paired by seed and by
problem. Its mean is the difference. Both seeds and problems are samples: another seed, or
other problems, would give another difference. The design is two crossed random factors
(seed, problem), and the variance of the mean is estimated from the two-way analysis of
variance of D (method of moments, no replication):

    E[MS_seed]    = s2_e + P s2_seed       MS_seed    = P sum_s (D_s. - D..)^2 / (S - 1)
    E[MS_problem] = s2_e + S s2_problem    MS_problem = S sum_p (D_.p - D..)^2 / (P - 1)
    E[MS_resid]   = s2_e                   MS_resid   = sum (D_sp - D_s. - D_.p + D..)^2 / ((S-1)(P-1))

    Var(D..) = s2_seed / S + s2_problem / P + s2_e / (S P) = (MS_seed + MS_problem - MS_resid) / (S P)

with the seeds' degrees of freedom (S - 1; the problems' with a single seed), and a t
interval and test on them. The comparisons are corrected together: intervals at 1 - alpha / m
(Bonferroni, simultaneous) and p-values by Holm's step-down (m comparisons). The smallest
effect the design detects with 80% power is ``(t_{1-alpha/2m} + t_{0.8}) x SE`` (alpha/2mL with a
sequential confirmation of L looks, below).

Sequential confirmation (``confirm.until_decisive``) looks at the data after every round of
seeds, at most ``looks`` times. Each look tests at ``alpha / (m x looks)`` (Bonferroni over
comparisons and looks: a conservative group-sequential design with a flat boundary), so the
chance of a wrong "differs" verdict anywhere stays at or below alpha
(tests/report/test_verdicts.py simulates it); its p-values are multiplied by ``looks`` before
Holm's adjustment for the same reason. A comparison is decided when its interval
excludes 0 (a differs from b) or lies within +-min_effect (no difference that large).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from gmt_ray.names import label_of

__all__ = ["Arm", "Verdict", "arm_of", "compare", "decisive", "holm", "judge", "looks_allowed", "primary_comparisons",
           "seeds_for_half_width", "verdicts"]

POWER = 0.8  # for the smallest detectable effect


@dataclass(frozen=True, order=True)
class Arm:
    """One confirmed configuration's method label and mask ratio (0.0 for sft and hft)."""

    method: str
    mask_ratio: float

    def __str__(self) -> str:
        return f"{self.method}@{self.mask_ratio:g}" if self.mask_ratio else self.method

    @property
    def key(self) -> str:
        """The arm in an MLflow metric name (no '@' there): ``gmt-0.9``, ``sft``."""
        return f"{self.method}-{self.mask_ratio:g}" if self.mask_ratio else self.method


@dataclass
class Verdict:
    """One comparison, a - b (see the module's docstring for every figure)."""

    a: Arm
    b: Arm
    difference: float  # mean score of a minus b over their paired seeds and problems (a fraction)
    low: float  # the interval, simultaneous over the comparisons (Bonferroni)
    high: float
    p_value: float  # two-sided, times the looks (a sequential confirmation's), then Holm over the comparisons
    seeds: int
    problems: int
    min_detectable_effect: float
    standard_error: float
    degrees_of_freedom: float
    decision: str  # "a better", "b better", "equivalent" (within +-min_effect), "undecided"
    # Seeds that would bring the interval to +-target_half_width on the same problems
    # (``seeds_for_half_width``); None where it cannot be estimated or more problems are needed.
    target_half_width: float | None = None
    seeds_for_target: int | None = None

    def as_json(self) -> dict:
        row = asdict(self)
        row["a"], row["b"] = {"method": self.a.method, "mask_ratio": self.a.mask_ratio}, \
            {"method": self.b.method, "mask_ratio": self.b.mask_ratio}
        return row


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(mean difference, its standard error, Satterthwaite's degrees of freedom) of two
    seeds x problems score matrices, paired cell by cell (see the module's docstring).
    NaN standard error where there is a single seed and a single problem."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    seeds, problems = d.shape
    mean = float(d.mean())
    if seeds < 2 and problems < 2:
        return mean, math.nan, math.nan
    ms_seed, ms_problem, ms_resid = _mean_squares(d)
    terms = []  # (mean square, its sign in the variance)
    if seeds > 1:
        terms.append((ms_seed, 1.0))
    if problems > 1:
        terms.append((ms_problem, 1.0))
    if seeds > 1 and problems > 1:
        terms.append((ms_resid, -1.0))
    variance_sum = sum(sign * ms for ms, sign in terms)
    # Never below what a single factor shows on its own: the moments can undershoot with few seeds.
    floor = max(ms for ms, sign in terms if sign > 0)
    total = max(variance_sum, floor)
    # Degrees of freedom: the seeds' (S - 1) wherever there are several seeds. Satterthwaite's
    # approximation, which pools them with the problems' many, rejected a true null 9% of the
    # time at 2 seeds in simulation (tests/report/test_verdicts.py); the seeds' own df keeps
    # the error rate at or below alpha, at the price of wider intervals when problems dominate.
    df = seeds - 1 if seeds > 1 else problems - 1
    return mean, math.sqrt(total / (seeds * problems)), float(df)


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """MS_seed, MS_problem and MS_resid of a seeds x problems matrix (NaN where undefined)."""
    seeds, problems = d.shape
    mean = float(d.mean())
    by_seed, by_problem = d.mean(axis=1), d.mean(axis=0)
    ms_seed = problems * float(((by_seed - mean) ** 2).sum()) / (seeds - 1) if seeds > 1 else math.nan
    ms_problem = seeds * float(((by_problem - mean) ** 2).sum()) / (problems - 1) if problems > 1 else math.nan
    if seeds > 1 and problems > 1:
        resid = d - by_seed[:, None] - by_problem[None, :] + mean
        return ms_seed, ms_problem, float((resid ** 2).sum()) / ((seeds - 1) * (problems - 1))
    return ms_seed, ms_problem, math.nan


def seeds_for_half_width(a: np.ndarray, b: np.ndarray, half_width: float, *, alpha: float,
                         most: int = 10_000) -> int | None:
    """How many seeds (on the same problems) would bring this comparison's interval to
    +-``half_width`` at level ``alpha``: the variance components estimated from this design
    (seed, problem, residual), with only the seed terms shrinking as seeds are added, and the
    t quantile at the new seeds' degrees of freedom. None: fewer than 2 seeds or problems (no
    seed spread to extrapolate), or more than ``most`` seeds needed (the problems' own term
    alone is too wide: more problems are needed, not seeds)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    seeds, problems = d.shape
    if seeds < 2 or problems < 2:
        return None
    ms_seed, ms_problem, ms_resid = _mean_squares(d)
    s2_seed = max(0.0, (ms_seed - ms_resid) / problems)
    s2_problem = max(0.0, (ms_problem - ms_resid) / seeds)

    def half(n: int) -> float:
        return float(stats.t.ppf(1 - alpha / 2, n - 1)) * math.sqrt(s2_seed / n + s2_problem / problems
                                                                    + ms_resid / (n * problems))

    if half(most) > half_width:
        return None
    low, high = 2, most  # half() falls as seeds grow: the smallest n with half(n) <= half_width
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if half(middle) <= half_width else (middle + 1, high)
    return low


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error rate), in their order.

    (scipy offers Benjamini-Hochberg and Benjamini-Yekutieli, not Holm.)"""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare(a: np.ndarray, b: np.ndarray, *, alpha: float, min_effect: float | None = None) -> dict:
    """One paired comparison at level ``alpha`` (already divided over comparisons and looks):
    difference, interval, raw p-value, smallest detectable effect, decision."""
    from scipy import stats

    difference, se, df = paired_difference(a, b)
    if np.asarray(a).shape[0] < 2:
        # One seed: the seed-to-seed spread, usually the larger part, is unknown. No interval
        # from the problems alone would hold its error rate: nothing is decided.
        return {"difference": difference, "low": math.nan, "high": math.nan, "p_value": 1.0, "se": math.nan,
                "df": math.nan, "mde": math.nan, "decision": "undecided"}
    if not math.isfinite(se) or se == 0 or not df > 0:
        # No spread to measure (one seed and one problem, or every difference alike).
        exact = math.isfinite(se) and se == 0
        low = high = difference if exact else math.nan
        return {"difference": difference, "low": low, "high": high, "p_value": 0.0 if exact and difference else 1.0,
                "se": se, "df": df, "mde": math.nan, "decision": _decision(low, high, min_effect)}
    quantile = float(stats.t.ppf(1 - alpha / 2, df))
    half = quantile * se
    p = float(2 * stats.t.sf(abs(difference) / se, df))
    mde = (quantile + float(stats.t.ppf(POWER, df))) * se
    return {"difference": difference, "low": difference - half, "high": difference + half, "p_value": p, "se": se,
            "df": df, "mde": mde, "decision": _decision(difference - half, difference + half, min_effect)}


def _decision(low: float, high: float, min_effect: float | None) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undecided"
    if low > 0:
        return "a better"
    if high < 0:
        return "b better"
    if min_effect is not None and -min_effect < low and high < min_effect:
        return "equivalent"
    return "undecided"


def looks_allowed(seeds: int, max_seeds: int, per_round: int) -> int:
    """How many times a sequential confirmation may look: after its first ``seeds`` and after
    every further round of ``per_round``, up to ``max_seeds`` (1: a fixed design)."""
    if max_seeds <= seeds or per_round <= 0:
        return 1
    return 1 + math.ceil((max_seeds - seeds) / per_round)


def verdicts(scores: Mapping[Arm, Mapping[int, Mapping[str, float]]], comparisons: Iterable[tuple[Arm, Arm]], *,
             alpha: float = 0.05, min_effect: float | None = None, looks: int = 1,
             target_half_width: float | None = None) -> list[Verdict]:
    """The verdict of each comparison (a, b) from per-sample scores ``scores[arm][seed][task]``,
    paired on the seeds both arms have and the problems every run of both has.

    Args:
        alpha: the family-wise error rate over the comparisons (and the looks).
        min_effect: a difference smaller than this does not matter (equivalence); None: never.
        looks: how many times a sequential confirmation may look at the data in all.
        target_half_width: also say how many seeds a fixed design would need for intervals
            this narrow (``Verdict.seeds_for_target``).
    """
    paired = []
    for a, b in comparisons:
        if a not in scores or b not in scores:
            continue
        seeds = sorted(set(scores[a]) & set(scores[b]))
        tasks = sorted(set.intersection(*(set(scores[arm][s]) for arm in (a, b) for s in seeds))) if seeds else []
        matrices = [np.array([[scores[arm][s][t] for t in tasks] for s in seeds], dtype=float).reshape(len(seeds),
                                                                                                       len(tasks))
                    for arm in (a, b)]
        paired.append((a, b, *matrices))
    return judge(paired, alpha=alpha, min_effect=min_effect, looks=looks, target_half_width=target_half_width)


def judge(paired: list[tuple[Arm, Arm, np.ndarray, np.ndarray]], *, alpha: float = 0.05,
          min_effect: float | None = None, looks: int = 1, target_half_width: float | None = None) -> list[Verdict]:
    """``verdicts`` on scores already paired: (a, b, a's seeds x problems, b's alike) each."""
    level = alpha / max(1, len(paired)) / max(1, looks)
    rows = []
    for a, b, matrix_a, matrix_b in paired:
        result = compare(matrix_a, matrix_b, alpha=level, min_effect=min_effect) if matrix_a.size else \
            {"difference": math.nan, "low": math.nan, "high": math.nan, "p_value": math.nan, "se": math.nan,
             "df": math.nan, "mde": math.nan, "decision": "undecided"}
        if target_half_width is not None:  # a fixed design over the same comparisons
            result["needed"] = seeds_for_half_width(matrix_a, matrix_b, target_half_width,
                                                    alpha=alpha / max(1, len(paired))) if matrix_a.size else None
        rows.append((a, b, *matrix_a.shape, result))
    # A sequential confirmation's p-value counts its looks too (Bonferroni, as its intervals do),
    # so that p < alpha where the interval excludes 0; then Holm over the comparisons.
    raw = [min(1.0, r[4]["p_value"] * max(1, looks)) if math.isfinite(r[4]["p_value"]) else 1.0 for r in rows]
    adjusted = holm(raw)
    return [Verdict(a=a, b=b, difference=r["difference"], low=r["low"], high=r["high"], p_value=p, seeds=seeds,
                    problems=tasks, min_detectable_effect=r["mde"], standard_error=r["se"],
                    degrees_of_freedom=r["df"], decision=r["decision"], target_half_width=target_half_width,
                    seeds_for_target=r.get("needed"))
            for (a, b, seeds, tasks, r), p in zip(rows, adjusted)]


def decisive(found: Iterable[Verdict]) -> bool:
    """Whether every comparison is decided (its interval excludes 0, or lies within +-min_effect)."""
    return all(v.decision != "undecided" for v in found)


# The baselines GMT is compared with, as the paper does: at GMT's own mask ratio where the
# baseline has one (rmt, drop), else at none (sft, hft).
def primary_comparisons(arms: Iterable[Arm]) -> list[tuple[Arm, Arm]]:
    """Every gmt arm against every baseline arm at the same mask ratio (sft and hft at 0.0)."""
    arms = sorted(set(arms))
    gmt = [arm for arm in arms if arm.method.split("-")[0] == "gmt"]
    pairs = []
    for mine in gmt:
        for other in arms:
            base = other.method.split("-")[0]
            if base == "gmt":  # gmt's variants (its update mode) against each other, once
                if other.mask_ratio == mine.mask_ratio and other.method > mine.method:
                    pairs.append((other, mine))
            elif base in ("sft", "hft") or other.mask_ratio == mine.mask_ratio:
                pairs.append((mine, other))
    return pairs


def arm_of(params: Mapping[str, str]) -> Arm:
    """The arm of a trial from its params (``mask.method``, ``mask.mask_ratio``, and where they
    make a variant, ``mask.drop_strategy`` and ``mask.apply_to``)."""
    method = params.get("mask.method", "?")
    label = label_of(params)
    ratio = float(params.get("mask.mask_ratio", 0.0)) if method not in ("sft", "hft") else 0.0
    return Arm(label, round(ratio, 6))
