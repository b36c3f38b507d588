"""gmt_ray.eval.datasets: every evaluation file checked before training."""

from pathlib import Path

from gmt_ray.config import Experiment
from gmt_ray.eval.datasets import check_eval_data

GSM8K = Path(__file__).parent / "data" / "gsm8k_sample.jsonl"


def _experiment(**eval_options) -> Experiment:
    return Experiment.model_validate({"eval": {"benchmarks": ["gsm8k"], "data": {"gsm8k": str(GSM8K)},
                                               **eval_options}})


def test_the_validation_files_a_sweep_chooses_on_are_checked_with_the_test_files(tmp_path):
    assert check_eval_data(_experiment(validation_data={"gsm8k": str(GSM8K)})) == []
    missing = tmp_path / "dev.jsonl"
    (problem,) = check_eval_data(_experiment(validation_data={"gsm8k": str(missing)}))
    assert problem.startswith("eval.validation_data.gsm8k: ") and str(missing) in problem
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1+1?", "answer": "#### 2"}\n{not json\n')
    (problem,) = check_eval_data(_experiment(validation_data={"gsm8k": str(broken)}))
    assert problem.startswith("eval.validation_data.gsm8k: ") and f"{broken}:2" in problem
    (problem,) = check_eval_data(_experiment(data={"gsm8k": str(missing)}))  # the test file, as before
    assert problem.startswith("eval.data.gsm8k: ")
