from pathlib import Path

import pytest

from gmt_ray.config import load_experiment
from gmt_ray.sweep.plan import concurrency, describe_plan, estimate, model_parameters, no_test_scores


def test_tiny_parameter_count_is_exact():
    from gmt_ray.data.tokens import train_tiny_tokenizer
    from gmt_ray.models import build_model

    config = load_experiment(None, ["model.tiny.vocab_size=300"])
    tokenizer = train_tiny_tokenizer(["some text to learn from"] * 50, 300)
    model = build_model(config.model.model_copy(update={"tiny": config.model.tiny.model_copy(
        update={"vocab_size": len(tokenizer)})}), tokenizer, dtype=__import__("torch").float32)
    real = sum(p.numel() for p in model.parameters())
    assert model_parameters(config.model_copy(update={"model": config.model.model_copy(update={
        "tiny": config.model.tiny.model_copy(update={"vocab_size": len(tokenizer)})})})) == real


def test_gpu_hours_follow_six_n_d():
    config = load_experiment(None, ["model.name=meta-llama/Llama-2-7b-hf", "resources.use_gpu=true",
                                    "resources.num_workers=8", "resources.accelerator_type=A100", "train.max_steps=100",
                                    "train.micro_batch_size=4", "train.grad_accum=2", "data.max_length=1000"])
    result = estimate(config, trials=3)
    tokens = 100 * 4 * 2 * 8 * 1000
    assert result["tokens_per_trial_max"] == tokens
    hours = 6 * 6.74e9 * tokens / (312e12 * 0.40) / 3600
    assert result["gpu_hours_per_trial"] == pytest.approx(hours, abs=0.01)
    assert result["gpu_hours_total"] == pytest.approx(3 * hours, abs=0.1)
    dpo = estimate(config.model_copy(update={"train": config.train.model_copy(update={"objective": "dpo"})}), trials=1)
    assert dpo["train_flops_per_trial"] == pytest.approx(8 / 6 * 2 * result["train_flops_per_trial"])


def test_unknown_models_say_how_to_estimate():
    config = load_experiment(None, ["model.name=someone/some-model", "resources.use_gpu=true"])
    assert "KNOWN_MODEL_PARAMS" in estimate(config, trials=1)["gpu_hours"]


def test_concurrency_is_the_scarcest_resource_and_the_cap():
    per_trial = {"CPU": 8.01, "GPU": 8}
    assert concurrency(per_trial, {"CPU": 100, "GPU": 32}, cap=10) == 4
    assert concurrency(per_trial, {"CPU": 16, "GPU": 32}, cap=10) == 1
    assert concurrency(per_trial, {"CPU": 100, "GPU": 32}, cap=2) == 2
    assert concurrency(per_trial, {"CPU": 100}, cap=2) == 0


def test_plan_counts_groups_times_samples():
    config = load_experiment(None, ["search.methods=[sft, gmt, rmt]", "search.mask_ratios=[0.5, 0.9]",
                                    "search.num_samples=3"])
    assert describe_plan(config)["trials"] == (1 + 2 + 2) * 3


def test_expected_gpu_hours_padded_and_packed_sit_below_the_bound():
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    math = load_experiment(experiments / "math.yaml")
    result = estimate(math, trials=22)
    expected = result["expected"]
    assert expected["this_file"] == "packed" and "assumed for meta-math/MetaMathQA" in expected["lengths"]
    packed, padded = expected["packed"], expected["padded"]
    assert packed["gpu_hours_per_trial"] < padded["gpu_hours_per_trial"] < result["gpu_hours_per_trial"]
    assert packed["gpu_hours_total"] == pytest.approx(22 * packed["gpu_hours_per_trial"], rel=0.01)
    # GPU-hours follow tokens: 6 x parameters per token at the assumed MFU, as the bound does.
    assert packed["gpu_hours_per_trial"] / result["gpu_hours_per_trial"] == pytest.approx(
        packed["tokens_per_trial"] / result["tokens_per_trial_max"], rel=1e-3)
    assert float(packed["padding"].rstrip("%")) < float(padded["padding"].rstrip("%"))
    # Flash attention's one flattened row per micro-batch computes no padding at all.
    flash = estimate(math.model_copy(update={"model": math.model.model_copy(
        update={"attn_implementation": "flash_attention_2"})}), trials=1)
    assert flash["expected"]["packed"]["padding"] == "0.0%"
    dpo = load_experiment(experiments / "dpo.yaml")
    assert "expected" not in estimate(dpo, trials=1)  # DPO is never packed: the bound only


def test_expected_tokens_come_from_the_loaded_rows_when_there_are_some():
    import numpy as np

    config = load_experiment(None, ["train.micro_batch_size=4", "train.grad_accum=2", "data.max_length=64"])
    lengths = np.array([10, 60, 20, 30, 64, 8, 40, 12] * 10)
    expected = estimate(config, trials=1, lengths=lengths)["expected"]
    assert expected["lengths"].startswith("the training split's own: 80 rows, mean 30 tokens")
    assert expected["this_file"] == "padded"
    assert expected["packed"]["tokens_per_trial"] < expected["padded"]["tokens_per_trial"]
    useful = 200 * 4 * 2 * lengths.mean()  # 200 steps of 8 sequences, every length equally likely
    assert expected["packed"]["tokens_per_trial"] == pytest.approx(useful / (1 - float(
        expected["packed"]["padding"].rstrip("%")) / 100), rel=0.05)


QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def test_without_a_confirmation_stage_the_warning_names_what_one_would_need_here():
    assert no_test_scores(load_experiment(None, [])) is None  # no benchmark: nothing a test set would score
    assert no_test_scores(load_experiment(None, ["eval.benchmarks=[arithmetic]", "confirm.seeds=2",
                                                 "confirm.benchmark=arithmetic"])) is None
    chosen_on_accuracy = no_test_scores(load_experiment(QUICKSTART))
    assert "--set confirm.seeds=K retrains" in chosen_on_accuracy and "confirm.benchmark" not in chosen_on_accuracy
    # Chosen on the validation loss, with ASHA: a confirmation stage also needs a benchmark and no ASHA.
    on_loss = no_test_scores(load_experiment(None, ["eval.benchmarks=[arithmetic]", "search.scheduler=asha"]))
    assert "--set confirm.seeds=K --set confirm.benchmark=arithmetic --set search.scheduler=none retrains" in on_loss
    for advice in (chosen_on_accuracy, on_loss):  # the advice is accepted by the config's own checks
        overrides = [part.strip().split(" ")[0] for part in advice.split("--set ")[1:]]
        config = load_experiment(None if advice is on_loss else QUICKSTART,
                                 [o.replace("=K", "=2") for o in overrides] +
                                 (["eval.benchmarks=[arithmetic]"] if advice is on_loss else []))
        assert config.confirm.seeds == 2
