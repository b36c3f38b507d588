"""GradientMaskCallback in a plain transformers.Trainer: a tiny random-init Llama, a few
real optimizer steps on CPU, gradients and parameters observed from callbacks."""

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from gmt_ray import GradientMask
from gmt_ray.integrations.transformers import GradientMaskCallback

SEQ_LEN = 8


def tiny_llama():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def dataset(size):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (size, SEQ_LEN), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids]


def training_args(tmp_path, **overrides):
    options = {
        "output_dir": str(tmp_path), "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3,
        "max_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0, "lr_scheduler_type": "constant",
        "optim": "adamw_torch", "report_to": [], "use_cpu": True, "save_strategy": "no", "logging_strategy": "no",
        "disable_tqdm": True, "seed": 0,
    }
    return TrainingArguments(**{**options, **overrides})


class Snapshots(TrainerCallback):
    """What the gradients (and parameters) look like at ``on_pre_optimizer_step``, and the
    parameters after each optimizer step."""

    def __init__(self):
        self.grads, self.params_before, self.params_after = [], [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        self.params_before.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.params_after.append({n: p.detach().clone() for n, p in model.named_parameters()})


class SnapshotsAfterTheMask(Snapshots):
    """A second instance: the Trainer warns about two callbacks of one class."""


def train(tmp_path, mask_callback, *, samples=6, **overrides):
    """(before, after, model at start, trainer): snapshots taken just before and just after the mask callback."""
    model = tiny_llama()
    initial = copy.deepcopy(model)
    before, after = Snapshots(), SnapshotsAfterTheMask()
    trainer = Trainer(model=model, args=training_args(tmp_path, **overrides), train_dataset=dataset(samples),
                      callbacks=[before, mask_callback, after])
    trainer.train()
    return before, after, initial, trainer


def reference_masked(initial, grads, method="gmt", mask_ratio=0.5, **options):
    """GradientMask by hand on a copy of the model holding the given gradients."""
    model = copy.deepcopy(initial)
    for name, parameter in model.named_parameters():
        parameter.grad = grads[name].clone()
    GradientMask(model, method=method, mask_ratio=mask_ratio, **options).apply()
    return {n: p.grad for n, p in model.named_parameters()}


def test_the_mask_sees_the_whole_accumulated_step_and_keeps_what_gradient_mask_keeps(tmp_path):
    callback = GradientMaskCallback(method="gmt", mask_ratio=0.5)
    before, after, initial, _ = train(tmp_path, callback, samples=12, max_steps=2, max_grad_norm=0.0)

    assert len(before.grads) == 2 and callback.mask.step == 2  # once per optimizer step, not per micro-batch
    # The gradient the mask saw is the one of all 6 samples of the first step together.
    whole_batch = copy.deepcopy(initial)
    trainer_order = [s for batch in _first_step_batches(tmp_path) for s in batch]
    ids = torch.stack([s["input_ids"] for s in trainer_order])
    whole_batch(input_ids=ids, labels=ids).loss.backward()
    for name, parameter in whole_batch.named_parameters():
        torch.testing.assert_close(before.grads[0][name], parameter.grad, rtol=1e-5, atol=1e-7)

    for step in range(2):
        expected = reference_masked(initial, before.grads[step])
        for name, grad in after.grads[step].items():
            assert torch.equal(grad != 0, expected[name] != 0), (step, name)
            assert torch.equal(grad, expected[name]), (step, name)
        kept = sum(int((g != 0).sum()) for g in after.grads[step].values())
        total = sum(g.numel() for g in after.grads[step].values())
        assert kept < 0.6 * total  # the mask really removed entries


def _first_step_batches(tmp_path):
    """The 6 samples of the first optimizer step, in the order the same Trainer draws them."""
    trainer = Trainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2), train_dataset=dataset(12))
    loader = trainer.get_train_dataloader()
    batches = []
    for batch in loader:
        batches.append([{"input_ids": row} for row in batch["input_ids"]])
        if len(batches) == 3:
            return batches
    raise AssertionError("fewer than 3 batches")


def test_the_callback_clips_the_masked_gradient_as_the_recipe_does(tmp_path):
    callback = GradientMaskCallback(method="gmt", mask_ratio=0.5)
    max_norm = 1e-3  # far below the gradient's norm: clipping is active
    before, after, initial, trainer = train(tmp_path, callback, max_grad_norm=max_norm)

    full_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before.grads[0].values()]))
    assert full_norm > 10 * max_norm  # the Trainer did not clip before the mask: the callback took clipping over
    expected = reference_masked(initial, before.grads[0])
    torch.nn.utils.clip_grad_norm_(list(_as_parameters(expected)), max_norm)
    for name, grad in after.grads[0].items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=0)
    masked_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in after.grads[0].values()]))
    # Clipped after masking, the norm is exactly max_norm (clipped before, it would be below it).
    assert masked_norm == pytest.approx(max_norm, rel=1e-5)
    assert trainer.args.max_grad_norm == max_norm  # given back when training ends


def _as_parameters(grads):
    for grad in grads.values():
        parameter = torch.nn.Parameter(torch.zeros_like(grad))
        parameter.grad = grad  # clip_grad_norm_ scales .grad in place, so `grads` is clipped
        yield parameter


def test_after_the_first_adamw_step_exactly_the_kept_entries_have_moved(tmp_path):
    callback = GradientMaskCallback(method="gmt", mask_ratio=0.7)
    _, after, initial, trainer = train(tmp_path, callback)

    moved_any = 0
    for name, parameter in trainer.model.named_parameters():
        moved = parameter.detach() != dict(initial.named_parameters())[name].detach()
        kept = after.grads[0][name] != 0
        assert torch.equal(moved, kept), name
        moved_any += int(moved.sum())
    assert 0 < moved_any


def test_update_mode_moves_only_the_kept_entries_even_with_momentum(tmp_path):
    callback = GradientMaskCallback(method="gmt", mask_ratio=0.7, apply_to="update")
    before, after, initial, _ = train(tmp_path, callback, samples=12, max_steps=2, max_grad_norm=0.0)

    assert len(after.params_after) == 2
    for step in range(2):
        # In update mode the gradient (and AdamW's moments) stay whole: it is the step that is sparse.
        assert all(torch.equal(after.grads[step][n], g) for n, g in before.grads[step].items())
        expected = reference_masked(initial, before.grads[step], mask_ratio=0.7)
        for name, start in after.params_before[step].items():
            moved = after.params_after[step][name] != start
            assert torch.equal(moved, expected[name] != 0), (step, name)


def test_rmt_and_hft_run_through_the_callback(tmp_path):
    for method in ("rmt", "hft"):
        callback = GradientMaskCallback(method=method, mask_ratio=0.5, seed=3)
        before, after, initial, _ = train(tmp_path / method, callback, max_grad_norm=0.0)
        expected = reference_masked(initial, before.grads[0], method=method, mask_ratio=0.5, seed=3)
        for name, grad in expected.items():
            got = after.grads[0].get(name)  # hft leaves a frozen matrix with no gradient at all
            assert (got is None and grad is None) or torch.equal(got, grad), (method, name)


def test_wrong_options_fail_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match="mask_ratio must be a number in"):
        Trainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=dataset(6),
                callbacks=[GradientMaskCallback(mask_ratio=1.5)])
    with pytest.raises(ValueError, match="no trainable parameter matches"):
        Trainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=dataset(6),
                callbacks=[GradientMaskCallback(include=["nothing-is-called-this"])])


def test_deepspeed_is_refused_with_the_reason(tmp_path):
    args = training_args(tmp_path)
    args.deepspeed = {"zero_optimization": {"stage": 2}}  # DeepSpeed itself is not installed here
    with pytest.raises(ValueError, match="steps the optimizer inside backward"):
        GradientMaskCallback(mask_ratio=0.5).on_init_end(args, TrainerState(), TrainerControl(), model=tiny_llama())
