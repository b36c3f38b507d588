"""Metric names: built and read in one place."""

import pytest

from gmt_ray.names import benchmark_metrics, evaluation_scores


def test_only_benchmark_and_lm_eval_scores_other_than_the_objective_count_as_scores():
    metrics = {"reward_accuracy": 0.5, "val_reward_accuracy": 0.6, "arithmetic_accuracy": 0.1,
               "arithmetic_accuracy_low": 0.0, "humaneval_pass_at_1": 0.2, "gsm8k_accuracy": 0.3, "loss": 1.0,
               "lm_eval/mmlu/acc": 0.4, "lm_eval/mmlu/acc_stderr": 0.01}
    assert evaluation_scores(metrics, "gsm8k_accuracy") == {"arithmetic_accuracy": 0.1, "humaneval_pass_at_1": 0.2,
                                                            "lm_eval/mmlu/acc": 0.4}


def test_each_benchmark_reports_its_score_and_interval_bounds():
    assert benchmark_metrics(["gsm8k", "mbpp"]) == ["gsm8k_accuracy", "gsm8k_accuracy_low", "gsm8k_accuracy_high",
                                                    "mbpp_pass_at_1", "mbpp_pass_at_1_low", "mbpp_pass_at_1_high"]


def test_a_sampled_code_benchmark_also_reports_pass_at_k_up_to_its_samples():
    from gmt_ray.names import pass_at_ks

    assert pass_at_ks(1) == (1,) and pass_at_ks(20) == (1, 10) and pass_at_ks(200) == (1, 10, 100)
    assert benchmark_metrics(["humaneval"], {"humaneval": 20})[-1] == "humaneval_pass_at_10"
    metrics = {"humaneval_pass_at_10": 0.5, "not_a_benchmark_pass_at_10": 0.1, "lm_eval/gsm8k_cot/strict-match/exact_match": 0.2}
    assert evaluation_scores(metrics) == {"humaneval_pass_at_10": 0.5, "lm_eval/gsm8k_cot/strict-match/exact_match": 0.2}


def test_a_search_chooses_on_its_objective_s_benchmark_only_where_that_benchmark_is_evaluated():
    from gmt_ray.names import chosen_on

    assert chosen_on("val_arithmetic_accuracy", ["arithmetic"]) == "arithmetic"
    assert chosen_on("val_arithmetic_accuracy", ["gsm8k"]) is None
    assert chosen_on("arithmetic_accuracy", ["arithmetic"]) is None  # a test score is never chosen on
    assert chosen_on("val_loss", ["arithmetic"]) is None


@pytest.mark.parametrize("changes", [
    {},
    {"confirm.benchmark": "arithmetic"},
    {"search.metric": "val_arithmetic_accuracy", "search.mode": "max"},
])
def test_the_report_reads_the_verdict_benchmark_the_sweep_used(changes):
    # One definition (names.chosen_on) for the config and the report, which reads the stored config.
    from gmt_ray.config import Experiment
    from gmt_ray.report.sweep import Sweep
    from tests.helpers import experiment

    stored = experiment(**{"eval.benchmarks": ["arithmetic"], **changes})
    config = Experiment.model_validate(stored)
    sweep = Sweep("s", "parent", "sqlite:///x.db", config.search.metric, config.search.mode,
                  config={**stored, "a_key_of_another_version": 1})  # read field by field, not validated
    assert sweep.verdict_benchmark == config.verdict_benchmark()
