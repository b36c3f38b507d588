"""Metric names: built and read in one place."""

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
