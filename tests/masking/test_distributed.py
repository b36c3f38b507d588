"""Masks under torch.distributed (gloo, 2 CPU processes): DDP replicas and FSDP2 shards."""


import pytest
import torch
import torch.distributed as dist
from torch import nn

from gmt_ray import GradientMask
from gmt_ray.masking import ProcessGroupReducer, keep_count, kth_largest, selection
from gmt_ray.masking.scores import GradientScores
from tests.helpers import init_process_group

WORLD = 2


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 300))  # 60K+ entries each


# ---------------------------------------------------------------- DDP


def _ddp_worker(rank, port, out_dir, method, scope):
    init_process_group(rank, port)
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mask = GradientMask(model.module, method=method, mask_ratio=0.7, scope=scope, seed=5)
    masks = []
    data = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for _ in range(4):
        for micro in range(2):
            x = torch.randn(8, 300, generator=data)
            if micro == 0:
                with model.no_sync():  # accumulate locally, all-reduce with the last micro-batch
                    model(x).square().mean().backward()
            else:
                model(x).square().mean().backward()
        mask.apply()
        masks.append([p.grad != 0 for p in model.parameters()])
        optimizer.step()
        optimizer.zero_grad()
    torch.save({"masks": masks, "params": [p.detach() for p in model.parameters()]}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method, scope", [("gmt", "tensor"), ("gmt", "global"), ("rmt", "tensor"), ("rmt", "global")])
def test_ddp_ranks_select_identical_masks_and_stay_bit_identical(tmp_path, method, scope, spawn):
    rank0, rank1 = spawn(_ddp_worker, tmp_path, method, scope)
    for step0, step1 in zip(rank0["masks"], rank1["masks"]):
        assert all(torch.equal(a, b) for a, b in zip(step0, step1))
    assert all(torch.equal(a, b) for a, b in zip(rank0["params"], rank1["params"]))
    # and the masks really are sparse and change between steps
    assert 0.2 < rank0["masks"][0][0].float().mean() < 0.4
    assert not torch.equal(rank0["masks"][0][0], rank0["masks"][1][0])


# ---------------------------------------------------------------- sharded selection


def _sharded_selection_worker(rank, port, out_dir, force_bracket):
    init_process_group(rank, port)
    if force_bracket:
        selection._SAMPLE_MIN_NUMEL = 0
    g = torch.Generator().manual_seed(7)  # every rank builds the same full tensors...
    full = [torch.randn(90_001, generator=g), torch.randn(5, generator=g) * 100, torch.zeros(40_000)]
    full[0][::3] = 0
    # ...and keeps an uneven shard of each; rank 1 holds nothing of the second tensor.
    shards = [torch.tensor_split(full[0], [60_000])[rank], full[1] if rank == 0 else full[1][:0],
              torch.tensor_split(full[2], [10_000])[rank]]
    reducer = ProcessGroupReducer()
    results = {}
    total = sum(t.numel() for t in full)
    for fraction in (1e-5, 0.01, 0.3, 0.5, 0.9, 1.0):
        k = max(1, int(fraction * total))
        results[("global", k)] = kth_largest(
            [GradientScores(s) for s in shards], k, total_numel=total, reducer=reducer
        ).item()
        k0 = max(1, int(fraction * full[0].numel()))
        results[("tensor", k0)] = kth_largest(
            [GradientScores(shards[0])], k0, total_numel=full[0].numel(), reducer=reducer
        ).item()
    torch.save({"results": results, "full": full}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("force_bracket", [False, True], ids=["default", "bracket-always"])
def test_sharded_thresholds_equal_the_single_process_ones(tmp_path, force_bracket, spawn):
    rank0, rank1 = spawn(_sharded_selection_worker, tmp_path, force_bracket)
    assert rank0["results"] == rank1["results"]
    full = rank0["full"]
    for (scope, k), got in rank0["results"].items():
        values = torch.cat([t.abs() for t in full]) if scope == "global" else full[0].abs()
        assert got == values.sort(descending=True).values[k - 1].item(), (scope, k)


# ---------------------------------------------------------------- FSDP2


def _fsdp_worker(rank, port, out_dir, method, scope):
    init_process_group(rank, port)
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    mask = GradientMask(model, method=method, mask_ratio=0.7, scope=scope, seed=3)
    x = torch.randn(8, 300, generator=torch.Generator().manual_seed(rank))
    model(x).square().mean().backward()
    before = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    stats = mask.apply()
    after = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    torch.save({"before": before, "after": after, "kept": stats.kept, "thresholds": stats.thresholds},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_fsdp_gmt_masks_equal_the_full_gradient_masks(tmp_path, scope, spawn):
    rank0, rank1 = spawn(_fsdp_worker, tmp_path, "gmt", scope)
    assert rank0["thresholds"] == rank1["thresholds"] and rank0["kept"] == rank1["kept"]
    before, after = rank0["before"], rank0["after"]
    if scope == "global":
        flat = torch.cat([g.reshape(-1) for g in before.values()]).abs()
        thresholds = dict.fromkeys(before, flat.sort(descending=True).values[keep_count(flat.numel(), 0.7) - 1])
    else:
        thresholds = {
            n: g.abs().reshape(-1).sort(descending=True).values[keep_count(g.numel(), 0.7) - 1]
            for n, g in before.items()
        }
    for name, grad in before.items():
        keep = (grad.abs() >= thresholds[name]) & (grad != 0)
        assert torch.equal(after[name], grad * keep), name
    assert rank0["kept"] == sum(int(torch.count_nonzero(g)) for g in after.values())


def test_fsdp_rmt_keeps_exactly_k_across_shards(tmp_path, spawn):
    rank0, _ = spawn(_fsdp_worker, tmp_path, "rmt", "tensor")
    sizes = [g.numel() for g in rank0["before"].values()]
    assert rank0["kept"] == sum(keep_count(n, 0.7) for n in sizes)


# ---------------------------------------------------------------- update mode after clip or rescale


def _update_worker(rank, port, out_dir, parallelism):
    init_process_group(rank, port)
    results = {}
    for scope in ("tensor", "global"):
        for change in ("clip", "rescale"):
            model = _model()
            if parallelism == "fsdp":
                from torch.distributed.fsdp import fully_shard

                for layer in (model[0], model[2]):
                    fully_shard(layer)
                wrapped = fully_shard(model)
                full = lambda t: t.full_tensor()  # noqa: E731
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                wrapped = DDP(model)
                full = lambda t: t.clone()  # noqa: E731
            optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0)
            mask = GradientMask(model, method="gmt", mask_ratio=0.6, scope=scope, apply_to="update",
                                optimizer=optimizer)
            x = torch.randn(8, 300, generator=torch.Generator().manual_seed(rank))  # different data per rank
            wrapped(x).square().sum().backward()  # sum: a gradient norm far above the clip
            grads = {n: full(p.grad) for n, p in model.named_parameters()}
            before = {n: full(p.detach()) for n, p in model.named_parameters()}
            stats = mask.apply()
            if change == "clip":
                norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 1e-2)
                assert float(norm) > 1
            else:
                for p in wrapped.parameters():
                    p.grad.mul_(1e-3)
            optimizer.step()
            results[(scope, change)] = {
                "grads": grads, "kept": stats.kept,
                "moved": {n: full(p.detach()) != before[n] for n, p in model.named_parameters()},
                "params": {n: full(p.detach()) for n, p in model.named_parameters()},
            }
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_update_mode_moves_exactly_the_kept_set_after_clip_or_rescale(tmp_path, parallelism, spawn):
    rank0, rank1 = spawn(_update_worker, tmp_path, parallelism)
    for (scope, change), result in rank0.items():
        grads, moved = result["grads"], result["moved"]
        # Single-process reference: the kept set of the whole (reduced) gradient by a full sort.
        if scope == "global":
            flat = torch.cat([g.reshape(-1) for g in grads.values()]).abs()
            threshold = flat.sort(descending=True).values[keep_count(flat.numel(), 0.6) - 1]
            thresholds = dict.fromkeys(grads, threshold)
        else:
            thresholds = {
                n: g.abs().reshape(-1).sort(descending=True).values[keep_count(g.numel(), 0.6) - 1]
                for n, g in grads.items()
            }
        for name, grad in grads.items():
            keep = (grad.abs() >= thresholds[name]) & (grad != 0)
            assert torch.equal(moved[name], keep), (scope, change, name)
        assert result["kept"] == sum(int(m.sum()) for m in moved.values()) == rank1[(scope, change)]["kept"]
        assert all(torch.equal(p, rank1[(scope, change)]["params"][n]) for n, p in result["params"].items())
