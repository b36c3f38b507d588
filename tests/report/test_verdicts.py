"""Verdicts (gmt_ray.report.verdicts): the paired seeds x problems analysis, Holm, the
comparisons GMT gets, and by simulation that sequential confirmation keeps its error rate."""

import math

import numpy as np
import pytest

from gmt_ray.report.verdicts import (
    Arm,
    compare,
    decisive,
    holm,
    judge,
    looks_allowed,
    paired_difference,
    primary_comparisons,
    seeds_for_half_width,
    verdicts,
)


def test_the_variance_of_the_mean_is_seed_plus_problem_plus_residual_from_the_two_way_anova():
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 30)), rng.random((4, 30))
    mean, se, df = paired_difference(a, b)
    d = a - b
    s, p = d.shape
    ms_seed = p * ((d.mean(1) - d.mean()) ** 2).sum() / (s - 1)
    ms_problem = s * ((d.mean(0) - d.mean()) ** 2).sum() / (p - 1)
    resid = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + d.mean()
    ms_resid = (resid ** 2).sum() / ((s - 1) * (p - 1))
    assert mean == pytest.approx(d.mean())
    assert se ** 2 == pytest.approx(max(ms_seed + ms_problem - ms_resid, ms_seed, ms_problem) / (s * p))
    assert df == s - 1  # the seeds' degrees of freedom


def test_one_seed_still_has_the_problems_spread_and_a_constant_difference_is_exact():
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 50)), rng.random((1, 50))
    mean, se, df = paired_difference(a, b)
    assert se == pytest.approx((a - b).std(ddof=1) / math.sqrt(50)) and df == 49
    exact = compare(np.ones((3, 5)), np.zeros((3, 5)), alpha=0.05)
    assert exact["difference"] == 1 and exact["low"] == exact["high"] == 1 and exact["decision"] == "a better"
    # One seed decides nothing: the seed-to-seed spread is unknown.
    single = compare(np.ones((1, 50)), np.zeros((1, 50)), alpha=0.05)
    assert single["decision"] == "undecided" and math.isnan(single["low"]) and single["difference"] == 1


def test_holm_steps_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_gmt_is_compared_with_every_baseline_at_its_own_ratio_and_its_update_mode_once():
    arms = [Arm("sft", 0.0), Arm("hft", 0.0), Arm("gmt", 0.9), Arm("gmt-update", 0.9), Arm("rmt", 0.9),
            Arm("rmt", 0.5), Arm("gmt", 0.5), Arm("drop-trivial", 0.9)]
    pairs = {(str(a), str(b)) for a, b in primary_comparisons(arms)}
    assert pairs == {
        ("gmt@0.5", "sft"), ("gmt@0.5", "hft"), ("gmt@0.5", "rmt@0.5"),
        ("gmt@0.9", "sft"), ("gmt@0.9", "hft"), ("gmt@0.9", "rmt@0.9"), ("gmt@0.9", "drop-trivial@0.9"),
        ("gmt-update@0.9", "sft"), ("gmt-update@0.9", "hft"), ("gmt-update@0.9", "rmt@0.9"),
        ("gmt-update@0.9", "drop-trivial@0.9"), ("gmt-update@0.9", "gmt@0.9"),
    }


def test_verdicts_pair_seeds_and_problems_that_both_arms_have():
    gmt, sft = Arm("gmt", 0.9), Arm("sft", 0.0)
    scores = {gmt: {1000: {"a": 1, "b": 1, "c": 0}, 1001: {"a": 1, "b": 0, "c": 1}, 1002: {"a": 1, "b": 1, "c": 1}},
              sft: {1000: {"a": 0, "b": 1, "c": 0, "d": 1}, 1001: {"a": 0, "b": 0, "c": 1, "d": 0}}}
    (verdict,) = verdicts(scores, [(gmt, sft)], min_effect=0.5)
    assert verdict.seeds == 2 and verdict.problems == 3  # seed 1002 and problem d are not in both
    assert verdict.difference == pytest.approx((2 / 3 + 2 / 3 - 1 / 3 - 1 / 3) / 2)
    assert verdict.low < verdict.difference < verdict.high and 0 <= verdict.p_value <= 1
    assert verdict.as_json()["a"] == {"method": "gmt", "mask_ratio": 0.9}


def test_a_sequential_confirmation_s_p_values_and_intervals_count_its_looks():
    rng = np.random.default_rng(5)
    gmt, sft, rmt = Arm("gmt", 0.9), Arm("sft", 0.0), Arm("rmt", 0.9)
    scores = {arm: {seed: {str(p): float(rng.random() < 0.5 + shift) for p in range(300)} for seed in range(4)}
              for arm, shift in ((gmt, 0.2), (sft, 0.0), (rmt, 0.04))}
    once = verdicts(scores, [(gmt, sft), (gmt, rmt)])
    thrice = verdicts(scores, [(gmt, sft), (gmt, rmt)], looks=3)
    raw = [compare(np.array([[scores[a][s][str(p)] for p in range(300)] for s in range(4)]),
                   np.array([[scores[b][s][str(p)] for p in range(300)] for s in range(4)]), alpha=0.05)["p_value"]
           for a, b in ((gmt, sft), (gmt, rmt))]
    assert [v.p_value for v in once] == pytest.approx(holm(raw))
    assert [v.p_value for v in thrice] == pytest.approx(holm([min(1.0, 3 * p) for p in raw]))
    for v1, v3 in zip(once, thrice):  # wider intervals; one that excludes 0 comes with p below alpha
        assert v3.high - v3.low > v1.high - v1.low
        if v3.low > 0 or v3.high < 0:
            assert v3.p_value < 0.05
    assert thrice[0].low > 0  # gmt is 20 points above sft: decided even at three looks


def test_looks_count_the_first_and_every_further_round():
    assert looks_allowed(3, 3, 2) == 1 and looks_allowed(3, 9, 2) == 4 and looks_allowed(2, 10, 3) == 4


def _simulated_scores(rng, arms, seeds, problems, effects, seed_sd):
    """Binary answers (seeds x problems per arm) from a logistic model: problem difficulty
    shared by every arm, a seed's luck partly shared by the arms trained with it (pairing),
    partly its own; ``effects`` shifts an arm's log-odds (none: no difference anywhere)."""
    difficulty = rng.normal(0.0, 1.5, problems)
    shared = rng.normal(0.0, 0.1, seeds)
    out = {}
    for arm in arms:
        own = rng.normal(0.0, seed_sd, seeds)
        logits = 0.3 + effects.get(arm, 0.0) + difficulty[None, :] + (shared + own)[:, None]
        out[arm] = (rng.random((seeds, problems)) < 1 / (1 + np.exp(-logits))).astype(float)
    return out


def _sequential(rng, arms, comparisons, *, first, per_round, max_seeds, problems, effects, min_effect, seed_sd=0.1):
    """One simulated confirmation stage as the sweep runs it: seeds in rounds until every
    comparison is decided or max_seeds is spent; returns the final verdicts and the seeds used."""
    full = _simulated_scores(rng, arms, max_seeds, problems, effects, seed_sd)
    looks = looks_allowed(first, max_seeds, per_round)
    seeds = first
    while True:
        found = judge([(a, b, full[a][:seeds], full[b][:seeds]) for a, b in comparisons], alpha=0.05,
                      min_effect=min_effect, looks=looks)
        if decisive(found) or seeds >= max_seeds:
            return found, seeds
        seeds = min(max_seeds, seeds + per_round)


def test_sequential_confirmation_keeps_its_error_rate_under_no_difference():
    # 1,000 simulated confirmation stages with no true difference: 3 comparisons, 3 seeds then
    # rounds of 2 up to 11 (5 looks), 200 problems, stopping when every comparison is decided
    # (here: within +-10 points). A wrong verdict is "a better" or "b better" anywhere.
    rng = np.random.default_rng(2026)
    arms = [Arm("gmt", 0.9), Arm("sft", 0.0), Arm("rmt", 0.9), Arm("hft", 0.0)]
    comparisons = primary_comparisons(arms)
    assert len(comparisons) == 3
    wrong, seeds_used = 0, []
    for _ in range(1000):
        found, seeds = _sequential(rng, arms, comparisons, first=3, per_round=2, max_seeds=11, problems=200,
                                   effects={}, min_effect=0.10)
        wrong += any(v.decision in ("a better", "b better") for v in found)
        seeds_used.append(seeds)
    assert wrong / 1000 <= 0.05, wrong
    assert sum(s < 11 for s in seeds_used) >= 300  # the rule is exercised: many stop early, decided


def test_the_fixed_design_keeps_its_error_rate_even_with_two_seeds():
    rng = np.random.default_rng(11)
    arms = [Arm("gmt", 0.9), Arm("sft", 0.0)]
    for seeds in (2, 3, 10):
        wrong = 0
        for _ in range(1000):
            scores = _simulated_scores(rng, arms, seeds, 150, {}, seed_sd=0.3)
            (verdict,) = judge([(arms[0], arms[1], scores[arms[0]], scores[arms[1]])], alpha=0.05)
            wrong += verdict.decision != "undecided"
        assert wrong / 1000 <= 0.05, (seeds, wrong)


def test_a_real_difference_is_found_and_stops_the_rounds_early():
    # gmt 0.4 log-odds better (about 9 points here): decided "a better" in every simulated
    # stage, most of them before max_seeds.
    rng = np.random.default_rng(7)
    arms = [Arm("gmt", 0.9), Arm("sft", 0.0)]
    runs = [_sequential(rng, arms, [(arms[0], arms[1])], first=3, per_round=2, max_seeds=11, problems=300,
                        effects={arms[0]: 0.4}, min_effect=0.02) for _ in range(50)]
    assert all(found[0].decision == "a better" for found, _ in runs)
    assert sum(seeds < 11 for _, seeds in runs) >= 40


def _seed_dominated_scores(seeds: int, problems: int, seed_sd: float, rng) -> dict:
    """Two arms whose difference varies from seed to seed by ``seed_sd`` (each seed's own
    accuracy), each problem answered or not at that seed's rate."""
    gmt, sft = Arm("gmt", 0.9), Arm("sft", 0.0)
    scores = {gmt: {}, sft: {}}
    for seed in range(seeds):
        rate = {gmt: 0.7 + rng.normal(0, seed_sd), sft: 0.7 + rng.normal(0, seed_sd)}
        for arm in (gmt, sft):
            scores[arm][seed] = {str(p): float(rng.random() < rate[arm]) for p in range(problems)}
    return scores


def test_the_seeds_a_target_width_needs_follow_from_the_design_s_own_spread():
    rng = np.random.default_rng(11)
    scores = _seed_dominated_scores(10, 400, 0.04, rng)
    pair = [(Arm("gmt", 0.9), Arm("sft", 0.0))]
    (now,) = verdicts(scores, pair)
    half = (now.high - now.low) / 2
    (same,) = verdicts(scores, pair, target_half_width=half)
    assert same.target_half_width == half and same.seeds_for_target in (9, 10, 11)  # the design it has
    (narrower,) = verdicts(scores, pair, target_half_width=half / 2)
    assert 3 * 10 <= narrower.seeds_for_target <= 5 * 10  # ~4x the seeds, and a smaller t quantile
    # Simulated at that many seeds, the interval is about that narrow.
    wider_design = _seed_dominated_scores(narrower.seeds_for_target, 400, 0.04, np.random.default_rng(12))
    (check,) = verdicts(wider_design, pair)
    assert 0.6 * half / 2 < (check.high - check.low) / 2 < 1.4 * half / 2
    # The problems' own term does not shrink with seeds: below it no number of seeds will do.
    (unreachable,) = verdicts(scores, pair, target_half_width=0.001)
    assert unreachable.seeds_for_target is None
    assert seeds_for_half_width(np.ones((1, 5)), np.zeros((1, 5)), 0.1, alpha=0.05) is None  # no seed spread
