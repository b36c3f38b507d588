"""Training throughput of sft, gmt and rmt side by side, through the real recipe on Ray Train.

    python benchmarks/train_throughput.py [--steps 40] [--rounds 2] [--set key=value ...]

Each method trains the same tiny Llama on the same generated data from the same seed;
methods alternate over rounds so that machine noise hits them alike. tokens/s and
samples/s are the recipe's own per-report figures (forward+backward, mask, optimizer;
Ray start-up excluded), medians over reports after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import ray

from gmt_ray.cluster import init_ray
from gmt_ray.config import load_experiment
from gmt_ray.data.prepare import prepare
from gmt_ray.train.launch import make_trainer

METHODS = [("sft", 0.0), ("gmt", 0.7), ("rmt", 0.7)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    base = {
        "model.tiny.hidden_size": 256, "model.tiny.intermediate_size": 688, "model.tiny.num_layers": 4,
        "model.tiny.vocab_size": 1024, "data.arithmetic.train_size": 4000, "train.micro_batch_size": 16,
        "train.grad_accum": 4, "train.max_steps": args.steps, "train.log_every": 5, "train.eval_every": 10_000,
        "train.checkpoint_every": 10_000,
    }
    init_ray()
    config = load_experiment(None, {**base, **dict(o.split("=", 1) for o in args.overrides)})
    prepared = ray.put(prepare(config))
    figures = {m: {"tokens_per_s": [], "samples_per_s": [], "time_mask_s": [], "step_s": []} for m, _ in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for method, ratio in METHODS:
                run = load_experiment(None, {**base, **dict(o.split("=", 1) for o in args.overrides),
                                             "mask.method": method, "mask.mask_ratio": ratio, "storage_path": tmp})
                path = Path(tmp) / f"{method}-{round_}.jsonl"
                make_trainer(run, run_name=f"{method}-{round_}", prepared=prepared, metrics_path=str(path)).fit()
                reports = [json.loads(line) for line in path.read_text().splitlines()][1:]
                for report in reports:
                    figures[method]["tokens_per_s"].append(report["tokens_per_s"])
                    figures[method]["samples_per_s"].append(report["samples_per_s"])
                    figures[method]["time_mask_s"].append(report["time_mask_s"])
                    figures[method]["step_s"].append(
                        report["time_fwd_bwd_s"] + report["time_mask_s"] + report["time_optim_s"])
    from gmt_ray.sweep.plan import model_parameters

    tokens_per_step = config.train.micro_batch_size * config.train.grad_accum
    params = model_parameters(config)
    peak = _peak_flops() if config.resources.use_gpu else None
    print(f"tiny Llama hidden={config.model.tiny.hidden_size} layers={config.model.tiny.num_layers} "
          f"vocab={config.model.tiny.vocab_size}; {tokens_per_step} sequences per optimizer step; "
          f"{args.rounds} rounds x {args.steps} steps per method")
    sft = statistics.median(figures["sft"]["tokens_per_s"])
    print(f"{'method':<8}{'tokens/s':>10}{'samples/s':>11}{'ratio to sft':>14}{'mask s/step':>13}{'mask share':>12}"
          + (f"{'MFU':>8}" if peak else ""))
    for method, _ in METHODS:
        f = figures[method]
        tokens = statistics.median(f["tokens_per_s"])
        mask = statistics.median(f["time_mask_s"])
        # Model FLOPs utilisation: 6 x parameters x tokens/s (padding counted as tokens) over the bf16 peak.
        mfu = f"{6 * params * tokens / peak:>8.1%}" if peak else ""
        print(f"{method:<8}{tokens:>10.0f}{statistics.median(f['samples_per_s']):>11.1f}{tokens / sft:>14.3f}"
              f"{mask:>13.4f}{mask / statistics.median(f['step_s']):>12.2%}{mfu}")
    ray.shutdown()


def _peak_flops() -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, by its name (None: not one the plan knows)."""
    import torch

    from gmt_ray.sweep.plan import GPU_TFLOPS

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return next((tflops * 1e12 for gpu, tflops in GPU_TFLOPS.items() if gpu in name), None)


if __name__ == "__main__":
    main()
