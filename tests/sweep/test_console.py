from gmt_ray.sweep.console import evaluation_scores


def test_only_benchmark_scores_other_than_the_objective_count_as_scores():
    metrics = {"reward_accuracy": 0.5, "val_reward_accuracy": 0.6, "arithmetic_accuracy": 0.1,
               "arithmetic_accuracy_low": 0.0, "humaneval_pass_at_1": 0.2, "gsm8k_accuracy": 0.3, "loss": 1.0}
    assert evaluation_scores(metrics, "gsm8k_accuracy") == {"arithmetic_accuracy": 0.1, "humaneval_pass_at_1": 0.2}
