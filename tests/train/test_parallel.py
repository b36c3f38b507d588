"""FSDP from the meta device (gloo, 2 CPU processes): weights streamed from rank 0 layer by
layer come out exactly as saved, and no rank holds the whole model while loading."""


import pytest
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from gmt_ray.config import ModelConfig
from gmt_ray.models import build_model
from gmt_ray.train.parallel import load_sharded_weights_, parallelize
from tests.helpers import init_process_group

WORLD = 2


def _llama(tied: bool, layers: int = 3, hidden: int = 64, intermediate: int = 160, vocab: int = 301, seed: int = 0):
    torch.manual_seed(seed)
    # Odd sizes: FSDP pads uneven shards, which the loader must not trip over.
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=tied, rope_theta=5000.0))


def _peak_rss_since_reset() -> int:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    return int(status["VmHWM"].split()[0]) * 1024


def _load_worker(rank, port, out_dir, model_dir, weights, measure):
    init_process_group(rank, port)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = build_model(ModelConfig(name=model_dir), None, dtype=torch.float32, meta=True)
    model, module = parallelize(model, "fsdp", torch.device("cpu"), None)
    dist.barrier()
    if measure:  # VmHWM back to the current RSS: what follows is the load's own peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    before = _peak_rss_since_reset()
    load_sharded_weights_(module, weights, torch.device("cpu"))
    peak = _peak_rss_since_reset() - before
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    tied = module.lm_head.weight is module.model.embed_tokens.weight
    model.train()
    batch = torch.arange(24).reshape(2, 12) % 50
    loss = model(input_ids=batch, labels=batch).loss  # both ranks, whole batch: same loss
    loss.backward()
    torch.save({"state": state, "buffers": buffers, "tied": tied, "loss": loss.item(), "peak": peak},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("tied", [False, True])
def test_fsdp_load_from_a_model_directory_gives_the_saved_weights(tmp_path, tied, spawn):
    saved = _llama(tied)
    saved.save_pretrained(tmp_path / "model")  # safetensors; a tied head is stored once
    rank0, rank1 = spawn(_load_worker, tmp_path, str(tmp_path / "model"), str(tmp_path / "model"), False)
    expected = saved.state_dict()
    assert rank0["state"].keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(rank0["state"][name], value), name
    # inv_freq is no file's tensor: it must have been computed again, identically, on every rank
    for rank in (rank0, rank1):
        assert rank["buffers"].keys() == dict(saved.named_buffers()).keys()
        for name, value in saved.named_buffers():
            assert torch.equal(rank["buffers"][name], value), name
        assert rank["tied"] == tied
    with torch.no_grad():
        batch = torch.arange(24).reshape(2, 12) % 50
        whole = saved(input_ids=batch, labels=batch).loss.item()
    assert rank0["loss"] == pytest.approx(whole, rel=1e-5) and rank1["loss"] == rank0["loss"]


def test_fsdp_load_from_a_checkpoint_model_pt(tmp_path, spawn):
    # train.init_from: a DDP checkpoint's model.pt (with its optimizer state), into the
    # architecture of model.name
    _llama(False, seed=1).save_pretrained(tmp_path / "model")
    saved = _llama(False, seed=2)
    (tmp_path / "checkpoint").mkdir()
    torch.save({"model": saved.state_dict(), "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "checkpoint" / "model.pt")
    rank0, _ = spawn(_load_worker, tmp_path, str(tmp_path / "model"), str(tmp_path / "checkpoint"), False)
    for name, value in saved.state_dict().items():
        assert torch.equal(rank0["state"][name], value), name


def _refusing_worker(rank, port, out_dir, model_dir, weights):
    init_process_group(rank, port)
    _, module = parallelize(build_model(ModelConfig(name=model_dir), None, torch.float32, meta=True), "fsdp",
                            torch.device("cpu"), None)
    try:
        load_sharded_weights_(module, weights, torch.device("cpu"))
        message = None
    except ValueError as error:
        message = str(error)
    torch.save({"message": message}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_weights_that_do_not_fit_are_refused_on_every_rank(tmp_path, spawn):
    _llama(False).save_pretrained(tmp_path / "model")
    _llama(False, layers=2, hidden=32).save_pretrained(tmp_path / "other")
    ranks = spawn(_refusing_worker, tmp_path, str(tmp_path / "model"), str(tmp_path / "other"))
    for rank in ranks:
        assert "do not fit model 'llama'" in rank["message"]
        assert "missing: model.layers.2." in rank["message"] and "wrong shape: model.embed_tokens.weight" in rank["message"]


def test_no_rank_holds_the_whole_model_while_loading(tmp_path, spawn):
    # ~22M parameters (88 MB), 12 layers of 7% each: a rank's half plus a layer or two is
    # ~0.65 of the model; building it whole first costs at least 1.0.
    saved = _llama(False, layers=12, hidden=384, intermediate=1024, vocab=1000)
    saved.save_pretrained(tmp_path / "model")
    size = sum(t.numel() * t.element_size() for t in saved.state_dict().values())
    del saved
    ranks = spawn(_load_worker, tmp_path, str(tmp_path / "model"), str(tmp_path / "model"), True)
    ratios = [rank["peak"] / size for rank in ranks]
    assert all(ratio < 0.8 for ratio in ratios), ratios
