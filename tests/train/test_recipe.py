"""The recipe: exact resume, evaluation, Drop and DPO in this process; DDP and FSDP on two
gloo processes (torch's spawn); and on a real local Ray, what Ray Train adds: a worker crash
restarted from the run's own checkpoint (with both ranks' files merged), a fatal one."""

import json
import math
from pathlib import Path

import pytest
import torch

from gmt_ray.config import load_experiment
from gmt_ray.data.prepare import prepare
from tests.helpers import recipe_ranks, run_recipe

SMALL = {
    "data.arithmetic.train_size": 256,
    "data.arithmetic.validation_size": 32,
    "data.arithmetic.test_size": 8,
    "model.tiny.hidden_size": 32,
    "model.tiny.intermediate_size": 64,
    "model.tiny.num_layers": 2,
    "model.tiny.vocab_size": 384,
    "train.micro_batch_size": 4,
    "train.grad_accum": 2,
    "train.lr": 3e-3,
    "train.log_every": 1,
    "train.eval_every": 4,
    "train.checkpoint_every": 2,
    "mask.method": "gmt",
    "mask.mask_ratio": 0.5,
}


def small(**overrides):
    return load_experiment(None, {**SMALL, **overrides})


@pytest.fixture(scope="module")
def prepared():
    """SMALL's data and tokenizer, prepared once (every override below leaves them alike)."""
    return prepare(small())


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "model.pt", weights_only=False)


# ----------------------------------------------------------------------------- one process


def test_resume_is_bit_identical(tmp_path, prepared):
    straight = run_recipe(small(**{"train.max_steps": 8, "mask.method": "rmt"}), tmp_path / "straight",
                          prepared=prepared)
    first = run_recipe(small(**{"train.max_steps": 8, "train.stop_after_steps": 4, "mask.method": "rmt"}),
                       tmp_path / "first", prepared=prepared)
    assert first.steps()[-1] == 4
    resumed = run_recipe(small(**{"train.max_steps": 8, "train.resume_from": str(first.last_checkpoint),
                                  "mask.method": "rmt"}), tmp_path / "resumed", prepared=prepared)
    assert resumed.steps() == [5, 6, 7, 8]
    assert [r["resumed_from_step"] for r in resumed.reports] == [4] * 4
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    # The optimizer moments too: the continuation is the same run, not a lookalike.
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_a_restored_run_is_not_failed_again_by_its_injected_failure(tmp_path, prepared):
    from gmt_ray.train.recipe import InjectedFailure

    config = small(**{"train.max_steps": 6, "train.fail_at_step": 3})
    with pytest.raises(InjectedFailure, match="injected failure at step 3"):
        run_recipe(config, tmp_path / "first", prepared=prepared)
    restarted = run_recipe(config, tmp_path / "again", prepared=prepared, restore_from=tmp_path / "first" / "step2")
    assert restarted.steps() == [3, 4, 5, 6]
    # As Ray Train hands it over: a Checkpoint, opened only while it loads.
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path / "first" / "step2"))
    through_ray = run_recipe(config, tmp_path / "ray", prepared=prepared, restore_from=checkpoint)
    assert through_ray.steps() == [3, 4, 5, 6]
    assert [r["loss"] for r in through_ray.reports] == [r["loss"] for r in restarted.reports]


def test_evaluation_at_the_end_reports_accuracy_and_ships_per_sample_rows(tmp_path, prepared):
    run = run_recipe(small(**{"train.max_steps": 4, "eval.benchmarks": ["arithmetic"], "eval.max_new_tokens": 8,
                              "eval.every": 2}), tmp_path, prepared=prepared)
    evaluated = [r for r in run.reports if "arithmetic_accuracy" in r]
    assert [r["step"] for r in evaluated] == [2, 4]
    final = evaluated[-1]
    assert 0 <= final["arithmetic_accuracy_low"] <= final["arithmetic_accuracy"] <= final["arithmetic_accuracy_high"] <= 1
    rows = [json.loads(line) for line in (run.checkpoints[4] / "eval" / "step4-arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"prompt", "completion", "extracted", "gold", "correct"} <= set(rows[0])
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(final["arithmetic_accuracy"])


def test_drop_resets_the_given_ratio_of_deltas_to_the_base_weights(tmp_path, prepared):
    from gmt_ray.models import build_model

    config = small(**{"train.max_steps": 3, "mask.method": "drop", "mask.mask_ratio": 0.6,
                      "mask.drop_strategy": "trivial", "mask.drop_rescale": False})
    run = run_recipe(config, tmp_path, prepared=prepared)
    base = build_model(config.model, prepared.tokenizer, dtype=torch.float32, seed=config.train.seed).state_dict()
    tuned = weights(run.last_checkpoint)["model"]
    matrix = "model.layers.0.mlp.up_proj.weight"
    unchanged = (tuned[matrix] == base[matrix]).float().mean().item()
    assert unchanged == pytest.approx(0.6, abs=0.01)


def test_dpo_from_an_sft_checkpoint_learns_the_preference(tmp_path):
    # 128 built-in pairs seen five times over: DPO must come to prefer the chosen answers
    # (measured: 0.73 over the last 10 steps; 0.66 on the 32 held-out pairs, too few to assert on).
    size = {"model.tiny.hidden_size": 64, "model.tiny.intermediate_size": 172, "model.tiny.num_heads": 4,
            "data.arithmetic.train_size": 128, "data.arithmetic.max_number": 9, "train.micro_batch_size": 8,
            "train.lr": 3e-3}
    sft = run_recipe(small(**size, **{"train.max_steps": 30, "mask.method": "sft"}), tmp_path / "sft")
    assert Path(sft.last_checkpoint, "tokenizer", "tokenizer.json").exists()
    dpo = run_recipe(small(**{**size, **{
        "train.objective": "dpo", "train.init_from": str(sft.last_checkpoint), "train.dpo.reference": "precomputed",
        "train.max_steps": 40, "train.eval_every": 20, "train.dpo.beta": 0.5, "train.lr": 1e-2,
        "mask.method": "gmt", "mask.mask_ratio": 0.5,
    }}), tmp_path / "dpo")
    first, last = dpo.reports[0], dpo.reports[-1]
    # At the first step the policy is the reference: the loss is log 2 and rewards are tiny.
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert {"val_loss", "val_reward_accuracy", "val_reward_margin", "logps_chosen", "logps_rejected"} <= set(last)
    late = [r["reward_accuracy"] for r in dpo.reports if r["step"] > 30]
    # 160 pair judgements over the last 10 steps: by chance the mean is 0.5 +- 0.04.
    assert sum(late) / len(late) > 0.62
    assert sum(r["loss"] for r in dpo.reports if r["step"] > 30) / len(late) < math.log(2)


# ----------------------------------------------------------------------------- two gloo processes


@pytest.mark.integration
def test_ddp_and_fsdp_on_two_processes_follow_the_same_trajectory(tmp_path, prepared, spawn):
    # FSDP masks sharded gradients with all-reduced counts; DDP masks replicated ones. The
    # same run must come out the same either way, up to float reduction order.
    common = {"train.max_steps": 8, "train.checkpoint_every": 8}
    reports, _ = spawn(recipe_ranks, tmp_path, prepared, [
        (parallelism, small(**common, **{"train.parallelism": parallelism}), None) for parallelism in ("ddp", "fsdp")
    ])
    for parallelism in ("ddp", "fsdp"):
        run = reports[parallelism]
        assert [r["step"] for r in run] == list(range(1, 9))
        val = [r["val_loss"] for r in run if "val_loss" in r]
        assert val[-1] < val[0]
        assert all(0.3 < r["kept_fraction"] <= 0.5 for r in run)
        assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in run)
        assert {"rank0.pt", "rank1.pt"} <= {p.name for p in (tmp_path / parallelism / "step8").iterdir()}
    for ddp, fsdp in zip(reports["ddp"], reports["fsdp"]):
        assert fsdp["loss"] == pytest.approx(ddp["loss"], rel=1e-4)
        assert fsdp["kept_fraction"] == pytest.approx(ddp["kept_fraction"], rel=1e-3)


@pytest.mark.integration
def test_fsdp_resume_of_hft_whose_frozen_matrices_have_no_optimizer_state(tmp_path, prepared, spawn):
    # Found by general.yaml's rehearsal: the fresh optimizer's template asked for the
    # state of matrices hft never updated, which the checkpoint does not hold.
    common = {"train.max_steps": 4, "mask.method": "hft", "train.parallelism": "fsdp"}
    reports, _ = spawn(recipe_ranks, tmp_path, prepared, [
        ("straight", small(**common), None),
        ("first", small(**common, **{"train.stop_after_steps": 2}), None),
        ("resumed", small(**common), "first"),
    ])
    assert [r["step"] for r in reports["resumed"]] == [3, 4]
    assert reports["resumed"][-1]["loss"] == pytest.approx(reports["straight"][-1]["loss"], rel=1e-5)


@pytest.mark.integration
def test_fsdp_streaming_a_saved_model_trains_like_ddp_loading_it_whole(tmp_path, prepared, spawn):
    # A saved model directory (model.name) or an exported one (train.init_from): under FSDP
    # it is built on the meta device and streamed from rank 0; DDP loads it whole on every
    # rank, as before. The same weights must give the same run.
    from gmt_ray.models import build_model

    saved = tmp_path / "saved"
    torch.manual_seed(7)  # not the recipe's seed: the runs must start from the files, not a re-init
    build_model(small().model, prepared.tokenizer, dtype=torch.float32, seed=7).save_pretrained(saved)
    prepared.tokenizer.save_pretrained(saved)
    steps = {"train.max_steps": 4, "train.checkpoint_every": 4, "train.eval_every": 4}
    reports, _ = spawn(recipe_ranks, tmp_path, prepared, [
        ("whole", small(**steps, **{"model.name": str(saved), "train.parallelism": "ddp"}), None),
        ("streamed", small(**steps, **{"model.name": str(saved), "train.parallelism": "fsdp"}), None),
        ("init-from", small(**steps, **{"train.init_from": str(saved), "train.parallelism": "fsdp"}), None),
    ])
    whole, streamed, init_from = reports["whole"], reports["streamed"], reports["init-from"]
    assert [r["step"] for r in streamed] == [r["step"] for r in init_from] == [1, 2, 3, 4]
    for ddp, fsdp, exported in zip(whole, streamed, init_from):
        assert fsdp["loss"] == pytest.approx(ddp["loss"], rel=1e-4)
        assert exported["loss"] == pytest.approx(fsdp["loss"], rel=1e-6)
    assert streamed[-1]["val_loss"] == pytest.approx(whole[-1]["val_loss"], rel=1e-4)


@pytest.mark.integration
def test_drop_under_fsdp_drops_the_ratio_of_each_full_tensor(tmp_path, prepared, spawn):
    from transformers import AutoModelForCausalLM

    from gmt_ray.masking import keep_count
    from gmt_ray.models import build_model

    config = small(**{"train.max_steps": 2, "mask.method": "drop", "mask.mask_ratio": 0.5,
                      "mask.drop_strategy": "trivial", "train.parallelism": "fsdp"})
    spawn(recipe_ranks, tmp_path, prepared, [("fsdp-drop", config, None)])
    base = build_model(config.model, prepared.tokenizer, dtype=torch.float32, seed=config.train.seed).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp-drop" / "model").state_dict()
    for matrix in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        changed = int((tuned[matrix] != base[matrix]).sum())  # sharded by rows over the two ranks
        assert changed == keep_count(tuned[matrix].numel(), 0.5), matrix  # exact over the full tensor


def test_packed_training_follows_the_padded_trajectory_under_fsdp(tmp_path, prepared, spawn):
    # data.packing changes the layout of each step, not its sequences: the same losses, kept
    # fractions and validation loss, step by step, up to float reduction order.
    common = {"train.max_steps": 4, "train.parallelism": "fsdp", "train.checkpoint_every": 4, "train.eval_every": 4}
    reports, _ = spawn(recipe_ranks, tmp_path, prepared, [
        ("padded", small(**common), None), ("packed", small(**common, **{"data.packing": True}), None)])
    padded, packed = reports["padded"], reports["packed"]
    assert [r["step"] for r in packed] == [1, 2, 3, 4]
    for a, b in zip(padded, packed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["kept_fraction"] == pytest.approx(a["kept_fraction"], rel=1e-3)
    assert packed[-1]["val_loss"] == pytest.approx(padded[-1]["val_loss"], rel=1e-4)


# ----------------------------------------------------------------------------- on Ray Train


def fit(ray, tmp_path, run_name, **overrides):
    from gmt_ray.train.launch import make_trainer

    config = small(**{"storage_path": str(tmp_path), **overrides})
    metrics_path = tmp_path / f"{run_name}.jsonl"
    result = make_trainer(config, run_name=run_name, prepared=ray.put(prepare(config)),
                          metrics_path=str(metrics_path)).fit()
    reports = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return result, reports


def test_worker_crash_restarts_from_the_last_checkpoint_both_ranks_merged(ray_local, tmp_path):
    result, reports = fit(ray_local, tmp_path, "crash", **{
        "train.max_steps": 6, "train.fail_at_step": 5, "resources.max_failures": 1,
        "resources.num_workers": 2, "train.parallelism": "fsdp"})
    assert result.error is None, result.error
    # The crash comes after step 5 is computed but before it is reported: the restarted
    # workers resume from the checkpoint of step 4 (both ranks' files and shards, which Ray
    # Train merged), so metrics run on without a gap or repeat.
    assert [r["step"] for r in reports] == list(range(1, 7))
    assert [r["resumed_from_step"] for r in reports] == [0, 0, 0, 0, 4, 4]
    assert result.metrics["step"] == 6
    with result.checkpoint.as_directory() as directory:
        assert {"rank0.pt", "rank1.pt", "sharded"} <= {p.name for p in Path(directory).iterdir()}


def test_crash_without_failures_allowed_fails_the_run(ray_local, tmp_path):
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError, match="injected failure at step 1"):
        fit(ray_local, tmp_path, "fatal", **{"train.max_steps": 2, "train.fail_at_step": 1})
