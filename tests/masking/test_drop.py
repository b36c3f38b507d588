"""drop_delta: each strategy against a brute-force reference."""

import pytest
import torch

from gmt_ray import drop_delta
from gmt_ray.masking import keep_count


@pytest.fixture
def weights():
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(40, 30, generator=g), "b": torch.randn(500, generator=g), "step": torch.tensor(3)}
    tuned = {
        "a": base["a"] + torch.randn(40, 30, generator=g) * 0.1,
        "b": base["b"] + torch.randn(500, generator=g) * 5.0,
        "step": torch.tensor(7),
    }
    tuned["a"][0, :4] = base["a"][0, :4]  # some deltas are exactly zero
    return base, tuned


def kept_deltas(base, out, name):
    return out[name] != base[name]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_trivial_drops_the_smallest_deltas(weights, ratio):
    base, tuned = weights
    out = drop_delta(base, tuned, ratio, strategy="trivial")
    for name in ("a", "b"):
        delta = (tuned[name] - base[name]).abs().reshape(-1)
        k = keep_count(delta.numel(), ratio)
        threshold = delta.sort(descending=True).values[k - 1]
        expected = torch.where((delta >= threshold).view_as(tuned[name]), tuned[name], base[name])
        assert torch.equal(out[name], expected)
    assert out["step"].item() == 7  # non-float entries are copied


def test_salient_drops_the_largest_deltas(weights):
    base, tuned = weights
    out = drop_delta(base, tuned, 0.3, strategy="salient")
    for name in ("a", "b"):
        delta = (tuned[name] - base[name]).abs()
        kept = (out[name] != base[name]) | (delta == 0)  # zero deltas rank smallest: kept
        dropped = ~kept
        # every kept delta is no larger than every dropped nonzero delta
        assert delta[kept].max() <= delta[dropped].min()
        assert int(kept.sum()) == keep_count(delta.numel(), 0.3)


@pytest.mark.parametrize("rescale", [True, False])
def test_random_drops_an_exact_random_subset_and_rescales(weights, rescale):
    base, tuned = weights
    out = drop_delta(base, tuned, 0.75, strategy="random", rescale=rescale, seed=1)
    delta = tuned["b"] - base["b"]
    kept = out["b"] != base["b"]
    assert int(kept.sum()) == keep_count(500, 0.75)
    scale = 4.0 if rescale else 1.0
    assert torch.allclose(out["b"][kept], base["b"][kept] + delta[kept] * scale)
    again = drop_delta(base, tuned, 0.75, strategy="random", rescale=rescale, seed=1)
    assert torch.equal(again["b"], out["b"])
    other = drop_delta(base, tuned, 0.75, strategy="random", rescale=rescale, seed=2)
    assert not torch.equal(other["b"], out["b"])


def test_global_scope_ranks_all_tensors_together(weights):
    base, tuned = weights
    out = drop_delta(base, tuned, 0.5, strategy="trivial", scope="global")
    deltas = {n: (tuned[n] - base[n]).abs() for n in ("a", "b")}
    flat = torch.cat([d.reshape(-1) for d in deltas.values()])
    threshold = flat.sort(descending=True).values[keep_count(flat.numel(), 0.5) - 1]
    for name, delta in deltas.items():
        assert torch.equal(out[name], torch.where(delta >= threshold, tuned[name], base[name]))
    # b's deltas are 50x larger: it keeps far more than the per-tensor half
    assert int(kept_deltas(base, out, "b").sum()) > 450


def test_inputs_are_not_modified(weights):
    base, tuned = weights
    copy = {n: t.clone() for n, t in tuned.items()}
    drop_delta(base, tuned, 0.5, strategy="random")
    assert all(torch.equal(copy[n], tuned[n]) for n in tuned)


def test_bf16_weights_keep_their_dtype():
    base = {"w": torch.randn(100).bfloat16()}
    tuned = {"w": (base["w"].float() + torch.randn(100)).bfloat16()}
    assert drop_delta(base, tuned, 0.5)["w"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop_ratio": 1.0}, "drop_ratio=1.0"),
        ({"drop_ratio": 0.5, "strategy": "magnitude"}, "strategy='magnitude'"),
        ({"drop_ratio": 0.5, "scope": "row"}, "scope='row'"),
    ],
)
def test_bad_arguments(weights, kwargs, message):
    base, tuned = weights
    with pytest.raises(ValueError, match=message):
        drop_delta(base, tuned, **kwargs)


def test_mismatched_state_dicts(weights):
    base, tuned = weights
    with pytest.raises(ValueError, match="keys"):
        drop_delta(base, {"a": tuned["a"]}, 0.5)
    with pytest.raises(ValueError, match="b: base shape"):
        drop_delta(base, {**tuned, "b": torch.zeros(3)}, 0.5)


# ---------------------------------------------------------------- sharded weights (FSDP)


def _sharded_drop_worker(rank, port, out_dir, strategy, scope):
    import torch.distributed as dist

    from gmt_ray.masking import ProcessGroupReducer
    from tests.helpers import init_process_group

    init_process_group(rank, port)
    base, tuned = _full_weights()
    # Row shards, as FSDP2 cuts dim 0 (the last rank's may be shorter or empty).
    mine = {n: torch.tensor_split(t, 2)[rank] for n, t in base.items()}, \
        {n: torch.tensor_split(t, 2)[rank] for n, t in tuned.items()}
    out = drop_delta(*mine, 0.7, strategy=strategy, scope=scope, seed=3, reducer=ProcessGroupReducer(),
                     full_numels={n: t.numel() for n, t in tuned.items()}, shard=rank)
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _full_weights():
    g = torch.Generator().manual_seed(11)
    base = {"w": torch.randn(301, 257, generator=g), "norm": torch.randn(3, generator=g)}
    tuned = {n: t + torch.randn(t.shape, generator=g) * 0.1 for n, t in base.items()}
    return base, tuned


@pytest.mark.parametrize("strategy, scope", [("trivial", "tensor"), ("salient", "tensor"), ("trivial", "global")])
def test_sharded_drop_is_the_drop_of_the_full_tensors(tmp_path, strategy, scope, spawn):
    
    shards = spawn(_sharded_drop_worker, tmp_path, strategy, scope)
    base, tuned = _full_weights()
    expected = drop_delta(base, tuned, 0.7, strategy=strategy, scope=scope, seed=3)
    for name in base:
        assert torch.equal(torch.cat([shard[name] for shard in shards]), expected[name]), name


def test_random_drop_of_shards_keeps_an_exact_count_with_draws_that_differ_by_shard(tmp_path, spawn):
    
    shards = spawn(_sharded_drop_worker, tmp_path, "random", "tensor")
    base, _ = _full_weights()
    kept = [(shard["w"] != half) for shard, half in zip(shards, torch.tensor_split(base["w"], 2))]
    assert sum(int(k.sum()) for k in kept) == keep_count(base["w"].numel(), 0.7)
    rows = min(k.shape[0] for k in kept)
    assert not torch.equal(kept[0][:rows], kept[1][:rows])  # not one pattern repeated shard after shard
