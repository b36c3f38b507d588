"""Packed steps under DDP and FSDP2 (gloo, 2 CPU processes): each rank's packed step gives the
padded step's reduced gradient and the same GMT kept set, at tensor and global scope."""

import copy

import pytest
import torch

from tests.data.test_packing import assert_kept_sets_match, split_like_metamath, tiny_llama
from tests.helpers import init_process_group

WORLD = 2



def _worker(rank, port, out_dir, parallelism):
    init_process_group(rank, port)
    import torch.distributed as dist

    from gmt_ray import GradientMask
    from gmt_ray.data.batches import ShardBatches
    from gmt_ray.data.packing import PackedSteps
    from gmt_ray.data.tokens import IGNORE_INDEX
    from gmt_ray.train.parallel import local_tensor, no_sync

    split = split_like_metamath(160)
    reference = tiny_llama("sdpa")  # the same initial weights on every rank
    results = {}
    for layout, packing in (("padded", None), ("packed", PackedSteps(64))):
        module = copy.deepcopy(reference)
        if parallelism == "fsdp":
            from gmt_ray.train.parallel import parallelize

            model, module = parallelize(module, "fsdp", torch.device("cpu"), None)  # the recipe's FSDP2 sharding
            full = lambda t: t.full_tensor()  # noqa: E731
        else:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(module)
            full = lambda t: t.clone()  # noqa: E731
        # Each rank its own shard of the data, as the recipe's ShardBatches gives it.
        step = ShardBatches(split, 4, rank, WORLD, seed=0, pad_id=0, packing=packing).next_step(4)
        step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in step.micro_batches)
        loss_sum = 0.0
        for index, batch in enumerate(step.micro_batches):
            with no_sync(model, parallelism, last=index == len(step.micro_batches) - 1):
                loss = model(**batch, use_cache=False, num_items_in_batch=step_tokens).loss
                loss.backward()
            loss_sum += float(loss)
        grads = {n: full(p.grad) for n, p in module.named_parameters()}
        saved = {n: local_tensor(p.grad).clone() for n, p in module.named_parameters()}
        kept = {}
        for scope in ("tensor", "global"):
            for n, p in module.named_parameters():
                local_tensor(p.grad).copy_(saved[n])
            GradientMask(module, method="gmt", mask_ratio=0.7, scope=scope).apply()
            kept[scope] = {n: full(p.grad) != 0 for n, p in module.named_parameters()}
        results[layout] = {"loss": loss_sum, "grads": grads, "kept": kept,
                           "computed": sum(b["input_ids"].numel() for b in step.micro_batches)}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_packed_steps_reduce_to_the_padded_gradient_and_gmt_mask(tmp_path, parallelism, spawn):
    ranks = spawn(_worker, tmp_path, parallelism)
    for rank in ranks:
        padded, packed = rank["padded"], rank["packed"]
        assert packed["computed"] < padded["computed"]
        assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)  # this rank's own sequences
        for name, grad in padded["grads"].items():  # reduced over both ranks' sequences
            torch.testing.assert_close(packed["grads"][name], grad, rtol=1e-4, atol=1e-7)
        for scope in ("tensor", "global"):
            assert_kept_sets_match(padded["grads"], padded["kept"][scope], packed["kept"][scope], scope)
            assert sum(int(k.sum()) for k in packed["kept"][scope].values()) == \
                sum(int(k.sum()) for k in padded["kept"][scope].values())
    # The ranks hold different data but agree on the reduced gradient and its mask.
    for scope in ("tensor", "global"):
        assert all(torch.equal(ranks[0]["packed"]["kept"][scope][n], ranks[1]["packed"]["kept"][scope][n])
                   for n in ranks[0]["packed"]["kept"][scope])
    assert ranks[0]["packed"]["loss"] != ranks[1]["packed"]["loss"]
