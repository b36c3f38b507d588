"""Peak host memory of each rank while an FSDP model loads: built on the meta device and
streamed from rank 0 layer by layer, against building the whole model on every rank first.

    python benchmarks/fsdp_load_memory.py [--layers 12] [--hidden 768] [--intermediate 2048] [--vocab 8000]

Saves a random Llama (safetensors; ~100M parameters by default) and loads it with FSDP over
2 gloo processes through the recipe's own functions, both ways, each in fresh processes:

* new: ``build_model(meta=True)``, ``parallelize`` (``fully_shard`` per decoder layer and
  the root), ``load_sharded_weights_``;
* old: ``build_model`` (``from_pretrained``: the whole model in fp32), then ``parallelize``.

For each rank it prints the peak RSS increase during loading (Linux VmHWM, reset just
before) and the RSS left once loaded, both as ratios to the model's size in bytes, and a
checksum of the loaded shards (the same both ways: the weights are identical). Goal: each
rank near 0.5 + one layer with the new path; the old path is at least 1.0.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def load(model_dir: str, path: str) -> torch.nn.Module:
    """The model's FSDP module on this rank, loaded the ``new`` or the ``old`` way."""
    from gmt_ray.config import ModelConfig
    from gmt_ray.models import build_model
    from gmt_ray.train.parallel import load_sharded_weights_, parallelize

    config, cpu = ModelConfig(name=model_dir), torch.device("cpu")
    if path == "new":
        _, module = parallelize(build_model(config, None, torch.float32, meta=True), "fsdp", cpu, None)
        load_sharded_weights_(module, model_dir, cpu)
    else:
        _, module = parallelize(build_model(config, None, torch.float32), "fsdp", cpu, None)
    return module


def worker(rank: int, port: int, model_dir: str, path: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    quiet_transformers()
    # A tiny model first, the same way: imports (Ray Train, transformers' modeling code) and
    # one-off set-up cost ~200 MB that is no part of the model's footprint.
    load(f"{out_dir}/warm-up", path)
    dist.barrier()
    reset_peak()
    before, _ = rss_bytes()
    start = time.perf_counter()
    module = load(model_dir, path)
    seconds = time.perf_counter() - start
    after, peak = rss_bytes()
    checksum = torch.stack([p.to_local().double().sum() for p in module.parameters()]).sum()
    dist.all_reduce(checksum)
    torch.save({"peak": peak - before, "resident": after - before, "seconds": seconds, "checksum": checksum.item()},
               f"{out_dir}/{path}-rank{rank}.pt")
    dist.destroy_process_group()


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8000)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="fsdp-load-memory-") as tmp:
        config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                             num_key_value_heads=args.hidden // 64, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
        model.save_pretrained(f"{tmp}/model")
        LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=1, num_key_value_heads=1)).save_pretrained(f"{tmp}/warm-up")
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        layer = sum(t.numel() * t.element_size() for t in model.model.layers[0].state_dict().values())
        params = sum(p.numel() for p in model.parameters())
        del model
        print(f"random Llama: {params / 1e6:.0f}M parameters, {size / 2**20:.0f} MiB in fp32 (safetensors), "
              f"{args.layers} layers of {layer / size:.3f} each; FSDP over {WORLD} gloo processes")
        print(f"{'path':<6}{'rank':>5}{'peak RSS increase':>19}{'resident after':>16}{'seconds':>9}  checksum")
        for path in ("new", "old"):
            mp.start_processes(worker, args=(free_port(), f"{tmp}/model", path, tmp), nprocs=WORLD,
                               start_method="spawn")
            for rank in range(WORLD):
                r = torch.load(f"{tmp}/{path}-rank{rank}.pt")
                print(f"{path:<6}{rank:>5}{r['peak'] / size:>18.2f}x{r['resident'] / size:>15.2f}x"
                      f"{r['seconds']:>9.1f}  {r['checksum']:.6f}")
        print(f"(ratios to the full model's {size / 2**20:.0f} MiB; the ideal new-path peak is "
              f"0.5 + one layer = {0.5 + layer / size:.2f}x)")


if __name__ == "__main__":
    main()
