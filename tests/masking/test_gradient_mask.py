"""GradientMask: the contract every method keeps, and each method's own rule."""


import pytest
import torch
from torch import nn

from gmt_ray import GradientMask
from gmt_ray.masking import MASK_METHODS, keep_count


def tiny_llama(layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def model_with_grads(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20)).to(dtype)
    loss = model(torch.randn(8, 40, dtype=dtype)).square().mean()
    loss.backward()
    model[2].bias.grad[:5] = 0  # exact zeros are never salient
    return model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def reference_keep(scores, mask_ratio):
    k = keep_count(scores.numel(), mask_ratio)
    threshold = scores.reshape(-1).sort(descending=True).values[k - 1]
    return (scores >= threshold) & (scores > 0)


# ---------------------------------------------------------------- contract, every method


@pytest.mark.parametrize("method", tuple(MASK_METHODS))
@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_every_method_only_removes_gradient_and_reports_truthfully(method, scope):
    model = model_with_grads()
    before = grads(model)
    stats = GradientMask(model, method=method, mask_ratio=0.6, scope=scope).apply()
    kept = 0
    for name, p in model.named_parameters():
        if p.grad is None:  # hft frees frozen gradients entirely
            continue
        # every entry is either untouched or zeroed: masking never rescales
        assert bool(((p.grad == before[name]) | (p.grad == 0)).all())
        kept += int(torch.count_nonzero(p.grad)) if method == "gmt" else p.grad.numel()
    if method == "rmt":  # a random subset may include zero gradients: count the subset
        sizes = [p.numel() for p in model.parameters()]
        kept = keep_count(sum(sizes), 0.6) if scope == "global" else sum(keep_count(n, 0.6) for n in sizes)
    assert stats.eligible == sum(p.numel() for p in model.parameters())
    assert stats.kept == kept
    assert stats.kept_fraction == pytest.approx(kept / stats.eligible)
    assert stats.seconds >= 0


@pytest.mark.parametrize("method", ["gmt", "rmt"])
def test_mask_ratio_zero_leaves_gradients_untouched(method):
    model = model_with_grads()
    before = grads(model)
    stats = GradientMask(model, method=method, mask_ratio=0.0).apply()
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    assert stats.kept_fraction == 1.0


def test_sft_is_the_identity():
    model = model_with_grads()
    before = grads(model)
    GradientMask(model, method="sft", mask_ratio=0.9).apply()
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


# ---------------------------------------------------------------- gmt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_ratio", [0.3, 0.5, 0.99])
def test_gmt_tensor_scope_keeps_exactly_the_top_entries(dtype, mask_ratio):
    model = model_with_grads(dtype=dtype)
    before = grads(model)
    GradientMask(model, method="gmt", mask_ratio=mask_ratio).apply()
    for name, p in model.named_parameters():
        keep = reference_keep(before[name].abs().float(), mask_ratio)
        assert torch.equal(p.grad, before[name] * keep), name


def test_gmt_global_scope_uses_one_threshold():
    model = model_with_grads()
    before = grads(model)
    stats = GradientMask(model, method="gmt", mask_ratio=0.7, scope="global").apply()
    flat = torch.cat([g.reshape(-1) for g in before.values()]).abs()
    keep = reference_keep(flat, 0.7)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(got != 0, keep)
    assert set(stats.thresholds) == {"global"}
    k = keep_count(flat.numel(), 0.7)
    assert stats.thresholds["global"] == flat.sort(descending=True).values[k - 1].item()


def test_gmt_ties_at_threshold_are_all_kept():
    layer = nn.Linear(10, 1, bias=False)
    layer.weight.grad = torch.tensor([[5.0, 3, 3, 3, 3, 1, 1, 0, 0, -3]])
    stats = GradientMask(layer, method="gmt", mask_ratio=0.7).apply()  # k = 3
    assert layer.weight.grad.tolist() == [[5.0, 3, 3, 3, 3, 0, 0, 0, 0, -3]]
    assert stats.kept == 6


def test_gmt_never_keeps_zero_gradients():
    layer = nn.Linear(10, 1, bias=False)
    layer.weight.grad = torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 0, 2, -1]])
    stats = GradientMask(layer, method="gmt", mask_ratio=0.5).apply()  # k = 5 > 2 nonzero
    assert stats.kept == 2 and stats.thresholds["weight"] > 0


def test_single_element_tensor():
    layer = nn.Linear(1, 1, bias=False)
    layer.weight.grad = torch.tensor([[-0.25]])
    GradientMask(layer, method="gmt", mask_ratio=0.99).apply()
    assert layer.weight.grad.item() == -0.25  # ceil(0.01 * 1) = 1 entry kept


def test_keep_count_is_exact_in_decimal():
    assert keep_count(10, 0.7) == 3  # float (1 - 0.7) * 10 = 3.0000000000000004
    assert keep_count(100, 0.99) == 1
    assert keep_count(7, 0.5) == 4
    assert keep_count(1, 0.0) == 1


# ---------------------------------------------------------------- rmt


def test_rmt_keeps_exactly_k_random_entries_redrawn_each_step():
    layer = nn.Linear(1000, 100, bias=False)
    mask = GradientMask(layer, method="rmt", mask_ratio=0.9, seed=3)
    masks = []
    for _ in range(3):
        layer.weight.grad = torch.randn(100, 1000).abs() + 1  # no zeros
        mask.apply()
        assert int(torch.count_nonzero(layer.weight.grad)) == keep_count(100_000, 0.9)
        masks.append(layer.weight.grad != 0)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    # Independent of the gradient's values: a uniformly random subset.
    overlap = (masks[0] & masks[1]).float().sum() / masks[0].float().sum()
    assert 0.05 < overlap < 0.15


def test_rmt_is_identical_across_ranks_and_independent_of_global_rng():
    chosen = []
    for rank in range(2):
        torch.manual_seed(rank)  # each "rank" has a different global RNG state
        model = model_with_grads(seed=0)
        mask = GradientMask(model, method="rmt", mask_ratio=0.8, seed=11)
        steps = []
        for _ in range(2):
            mask.apply()
            steps.append([p.grad != 0 for p in model.parameters()])
            for p in model.parameters():
                p.grad = torch.ones_like(p)
        chosen.append(steps)
    for step_a, step_b in zip(*chosen):
        assert all(torch.equal(a, b) for a, b in zip(step_a, step_b))


# ---------------------------------------------------------------- hft


def test_hft_freezes_half_of_each_layer_and_spares_embeddings():
    model = tiny_llama(layers=4)
    mask = GradientMask(model, method="hft", seed=0)
    frozen_modules = {n.rsplit(".", 1)[0] for n in mask.frozen}
    for layer in range(4):
        mine = {m for m in frozen_modules if f"layers.{layer}." in m}
        assert sum("self_attn" in m for m in mine) == 2  # of q, k, v, o
        assert sum("layernorm" in m for m in mine) == 1  # of 2 norms
    ffn = [sum("mlp" in m and f"layers.{i}." in m for m in frozen_modules) for i in range(4)]
    assert sorted(ffn) == [1, 1, 2, 2]  # 2 of 3 in half the layers, 1 of 3 in the others
    assert not any("embed" in n or "lm_head" in n or n == "model.norm.weight" for n in mask.frozen)
    assert "model.embed_tokens" in mask.trainable_modules


def test_hft_choice_is_deterministic_by_seed_and_applies_as_freezing():
    assert GradientMask(tiny_llama(), method="hft", seed=1).frozen == GradientMask(tiny_llama(), method="hft", seed=1).frozen
    assert GradientMask(tiny_llama(), method="hft", seed=1).frozen != GradientMask(tiny_llama(), method="hft", seed=2).frozen
    model = tiny_llama()
    model(torch.randint(64, (2, 8)), labels=torch.randint(64, (2, 8))).loss.backward()
    mask = GradientMask(model, method="hft", seed=1)
    stats = mask.apply()
    params = dict(model.named_parameters())
    assert all(params[n].grad is None for n in mask.frozen)
    trainable = sum(p.numel() for n, p in params.items() if n not in mask.frozen)
    assert stats.kept == trainable
    assert 0.3 < stats.kept_fraction < 0.8


# ---------------------------------------------------------------- apply_to="update"


@pytest.mark.parametrize("method", ["gmt", "rmt", "hft"])
def test_update_mode_moves_only_selected_entries_even_with_momentum(method):
    torch.manual_seed(0)
    model = tiny_llama(layers=2)
    twin = tiny_llama(layers=2)  # plain AdamW fed the same gradients
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    mask = GradientMask(model, method=method, mask_ratio=0.7, apply_to="update", optimizer=opt)
    for step in range(3):
        batch = torch.randint(64, (2, 8), generator=torch.Generator().manual_seed(step))
        model.zero_grad()
        model(batch, labels=batch).loss.backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads_before = grads(model)
        keep = {}
        mask.apply()
        for n, p in model.named_parameters():
            # gradients stay whole in update mode
            assert torch.equal(p.grad, grads_before[n])
            keep[n] = mask._keep_for(n, p)
        opt.step()
        twin_opt.step()
        for n, p in model.named_parameters():
            moved = p.detach() != before[n]
            if keep[n] is None:
                assert moved.any(), n
            else:
                assert not (moved & ~keep[n]).any(), f"{n} moved outside the mask at step {step}"
        assert all(p.grad is not None for p in model.parameters())  # visible again after step
    # Moments saw the full gradients, exactly as a plain AdamW's would.
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], twin_opt.state[q]["exp_avg"]), n
        assert torch.equal(opt.state[p]["exp_avg_sq"], twin_opt.state[q]["exp_avg_sq"]), n


def test_grad_mode_masked_entries_still_move_through_momentum():
    # The documented difference: in grad mode AdamW momentum moves masked entries.
    torch.manual_seed(0)
    layer = nn.Linear(50, 50, bias=False)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0)
    mask = GradientMask(layer, method="gmt", mask_ratio=0.9)
    layer.weight.grad = torch.randn(50, 50)
    mask.apply()
    opt.step()
    layer.weight.grad = torch.randn(50, 50)
    mask.apply()
    masked = layer.weight.grad == 0
    before = layer.weight.detach().clone()
    opt.step()
    assert ((layer.weight.detach() != before) & masked).any()


# ---------------------------------------------------------------- the kept set is fixed at apply()


def layers_with_dense_grads(seed=0):
    """Two layers whose gradient has no zero, norm ~75: every kept entry can move."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(60, 50), nn.Linear(50, 40))  # a bias of 50: not a multiple of 8
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def change_gradient_(model, change):
    """What the recipe or a loss scaler may do to the gradient between apply() and step()."""
    if change == "clip":
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-2)
        assert norm > 1  # really clipped, by a large factor
    else:
        for p in model.parameters():
            p.grad.mul_(1e-3)


def moved_since(model, before):
    return {n: p.detach() != before[n] for n, p in model.named_parameters()}


def kept_set(model, method, scope, mask_ratio, seed=0):
    """The kept set by grad mode on a copy of the gradient (gmt: also by a full sort)."""
    twin = nn.Sequential(nn.Linear(60, 50), nn.Linear(50, 40))
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    GradientMask(twin, method=method, mask_ratio=mask_ratio, scope=scope, seed=seed).apply()
    keep = {n: q.grad != 0 for n, q in twin.named_parameters()}
    if method == "gmt":
        scores = {n: p.grad.abs() for n, p in model.named_parameters()}
        if scope == "global":
            flat = reference_keep(torch.cat([s.reshape(-1) for s in scores.values()]), mask_ratio)
            sort_keep = dict(zip(scores, flat.split([s.numel() for s in scores.values()])))
        else:
            sort_keep = {n: reference_keep(s, mask_ratio) for n, s in scores.items()}
        assert all(torch.equal(keep[n], sort_keep[n].view_as(keep[n])) for n in keep)
    return keep


@pytest.mark.parametrize("change", ["clip", "rescale"])
@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("method", ["gmt", "rmt"])
def test_update_mode_moves_exactly_the_kept_set_whatever_happens_to_the_gradient(method, scope, change):
    # Issue 14: thresholds from the unclipped gradient against the clipped one moved
    # nothing of 53,386 entries reported kept.
    model = layers_with_dense_grads()
    keep = kept_set(model, method, scope, 0.6, seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0)
    mask = GradientMask(model, method=method, mask_ratio=0.6, scope=scope, apply_to="update",
                        optimizer=optimizer, seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = mask.apply()
    change_gradient_(model, change)
    optimizer.step()
    moved = moved_since(model, before)
    for name in moved:
        assert torch.equal(moved[name], keep[name]), name
    assert sum(int(m.sum()) for m in moved.values()) == stats.kept


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_grad_mode_kept_set_survives_clipping(scope):
    # Masked entries are zeros and clipping keeps them zeros; plain SGD (no momentum, no
    # weight decay) then moves exactly the entries whose masked gradient is nonzero.
    model = layers_with_dense_grads()
    keep = kept_set(model, "gmt", scope, 0.6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = GradientMask(model, method="gmt", mask_ratio=0.6, scope=scope)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = mask.apply()
    change_gradient_(model, "clip")
    optimizer.step()
    moved = moved_since(model, before)
    for name in moved:
        assert torch.equal(moved[name], keep[name]), name
    assert sum(int(m.sum()) for m in moved.values()) == stats.kept


@pytest.mark.parametrize("method", ["gmt", "sft"])
def test_update_mode_step_without_apply_raises(method):
    model = layers_with_dense_grads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mask = GradientMask(model, method=method, mask_ratio=0.6, apply_to="update", optimizer=optimizer)
    with pytest.raises(RuntimeError, match="apply"):
        optimizer.step()
    mask.apply()
    optimizer.step()
    with pytest.raises(RuntimeError, match="apply"):  # the kept set served one step only
        optimizer.step()
    mask.remove()
    optimizer.step()  # a detached mask no longer guards the optimizer


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 23, 64])
def test_keep_bits_round_trip(numel):
    from gmt_ray.masking.gradient_mask import _pack_bits, _unpack_bits

    keep = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = _pack_bits(keep.view(1, numel))
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // 8)
    assert torch.equal(_unpack_bits(packed, numel), keep)


# ---------------------------------------------------------------- arguments and state


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "dare"}, "method='dare'"),
        ({"mask_ratio": 1.0}, "mask_ratio=1.0"),
        ({"mask_ratio": -0.1}, "mask_ratio=-0.1"),
        ({"mask_ratio": float("nan")}, "mask_ratio=nan"),
        ({"mask_ratio": True}, "mask_ratio=True"),
        ({"mask_ratio": "0.3"}, "mask_ratio='0.3'"),
        ({"scope": "layer"}, "scope='layer'"),
        ({"apply_to": "weights"}, "apply_to='weights'"),
        ({"apply_to": "update"}, "optimizer"),
        ({"include": ["("]}, "include pattern '\\('"),
        ({"exclude": [".*"]}, "no trainable parameter"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradientMask(nn.Linear(2, 2), **kwargs)


def test_include_and_exclude_select_parameters():
    model = tiny_llama(layers=1)
    mask = GradientMask(model, include=[r"layers\."], exclude=[r"norm"])
    assert mask.parameters and all("layers." in n and "norm" not in n for n in mask.parameters)


def test_state_dict_round_trip_continues_rmt_draws():
    model = model_with_grads()
    a = GradientMask(model, method="rmt", mask_ratio=0.5, seed=4)
    a.apply()
    b = GradientMask(model, method="rmt", mask_ratio=0.5, seed=4)
    b.load_state_dict(a.state_dict())
    assert b.step == a.step == 1
    with pytest.raises(ValueError, match="seed=9"):
        GradientMask(model, method="rmt", mask_ratio=0.5, seed=9).load_state_dict(a.state_dict())


def test_update_mode_takes_a_step_with_no_closure_and_refuses_a_closure():
    model = torch.nn.Linear(20, 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    mask = GradientMask(model, method="gmt", mask_ratio=0.5, apply_to="update", optimizer=optimizer)
    model(torch.randn(4, 20)).square().sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    stats = mask.apply()
    optimizer.step(None)  # how accelerate's optimizer wrapper calls it
    assert sum(int((p != b).sum()) for p, b in zip(model.parameters(), before)) == stats.kept
    mask.apply()
    with pytest.raises(ValueError, match="does not support optimizer.step"):
        optimizer.step(lambda: model(torch.randn(4, 20)).sum())
