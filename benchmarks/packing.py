"""Useful (non-padding) tokens per second of training steps, padded against packed
micro-batches, side by side in one run.

    python benchmarks/packing.py [--steps 10] [--mean 270] [--sigma 0.45]
    python benchmarks/packing.py --device cuda --dtype bf16 --hidden-size 576 --layers 30   # on a GPU

The data: sequences whose lengths are drawn like MetaMathQA's under experiments/math.yaml's
cap (lognormal with the mean and spread gmt_ray.sweep.plan assumes for it: 264 tokens a row
after truncation at 512), random ids, prompts a third of each. The steps: math.yaml's
micro-batch and accumulation (4 x 4 sequences per rank and step). Each optimizer step is
the recipe's: forward and backward of every micro-batch (loss over the step's response
tokens, ``use_cache=False``), GMT's mask at ratio 0.6, clipping, AdamW. The padded and the
packed model start from the same weights and see the same sequences in the same steps,
alternating step by step so that machine noise hits both alike; the first step of each is a
warm-up and not timed.

Prints each layout's useful tokens/s, the tokens it computed (padding included) and its
padding fraction; the ratio of the two layouts' times step by step (the same sequences: the
ratio of their useful tokens/s; its median is the figure, robust to bursts of load on a
shared machine); the ratio padding alone would give (computed padded / computed packed);
the largest relative difference between the two runs' step losses (exactness, in passing);
and last:

    packing: X.XXx useful tokens/s (padding A% -> B%)
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from gmt_ray import GradientMask
from gmt_ray.config import load_experiment
from gmt_ray.data.batches import ShardBatches
from gmt_ray.data.packing import PackedSteps
from gmt_ray.data.tokens import IGNORE_INDEX, TokenizedSplit
from gmt_ray.sweep.plan import ASSUMED_LENGTH_SIGMA, ASSUMED_MEAN_TOKENS, lognormal_lengths

MATH = Path(__file__).resolve().parent.parent / "experiments" / "math.yaml"


def parse_args() -> argparse.Namespace:
    math = load_experiment(MATH)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per layout (after one warm-up)")
    parser.add_argument("--mean", type=float, default=ASSUMED_MEAN_TOKENS["meta-math/MetaMathQA"],
                        help="mean tokens a row before truncation")
    parser.add_argument("--sigma", type=float, default=ASSUMED_LENGTH_SIGMA, help="lognormal spread of the lengths")
    parser.add_argument("--max-length", type=int, default=math.data.max_length)
    parser.add_argument("--micro-batch", type=int, default=math.train.micro_batch_size)
    parser.add_argument("--grad-accum", type=int, default=math.train.grad_accum)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attn", default="sdpa", help="sdpa, eager, or flash_attention_2 (GPU, flash-attn installed)")
    parser.add_argument("--flat", action="store_true",
                        help="pack each micro-batch into one row (flash attention's layout) whatever the attention")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default: 8/3 of the hidden size")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    return parser.parse_args()


def build_split(args: argparse.Namespace, count: int) -> TokenizedSplit:
    lengths = lognormal_lengths(args.mean, args.max_length, count, sigma=args.sigma, seed=1)
    rng = np.random.default_rng(2)
    ids = [rng.integers(3, args.vocab, int(length)).tolist() for length in lengths]
    return TokenizedSplit.from_lists(ids, [max(1, int(length) // 3) for length in lengths])


def build_model(args: argparse.Namespace):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    intermediate = args.intermediate_size or 8 * args.hidden_size // 3
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden_size, intermediate_size=intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=max(args.max_length, 512), attn_implementation=args.attn)
    return LlamaForCausalLM(config).to(args.device)


class Run:
    """One layout's model, optimizer, mask and batches, and what its timed steps did."""

    def __init__(self, model, split, args, packing):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        self.mask = GradientMask(model, method="gmt", mask_ratio=0.6)
        self.batches = ShardBatches(split, args.micro_batch, 0, 1, 0, pad_id=0, packing=packing)
        self.args = args
        self.seconds = 0.0
        self.useful = self.computed = 0
        self.losses: list[float] = []
        self.step_seconds: list[float] = []

    def step(self, timed: bool) -> None:
        args, device = self.args, torch.device(self.args.device)
        step = self.batches.next_step(args.grad_accum)
        batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                   for b in step.micro_batches]
        step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                    else torch.autocast(device.type, enabled=False))
        _synchronize(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for batch in batches:
            with autocast:
                loss = self.model(**batch, use_cache=False, num_items_in_batch=step_tokens).loss
            loss.backward()
            total += loss.detach()
        self.mask.apply()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
        if timed:
            self.step_seconds.append(time.perf_counter() - start)
            self.seconds += self.step_seconds[-1]
            self.useful += step.tokens
            self.computed += sum(b["input_ids"].numel() for b in batches)
        self.losses.append(float(total))

    @property
    def padding(self) -> float:
        return 1 - self.useful / self.computed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_step = args.micro_batch * args.grad_accum
    split = build_split(args, per_step * (args.steps + 1))
    lengths = np.diff(split.offsets)
    print(f"lengths: {len(lengths)} sequences, mean {lengths.mean():.0f} tokens (median {np.median(lengths):.0f}, "
          f"90th percentile {np.percentile(lengths, 90):.0f}, {np.mean(lengths == args.max_length):.1%} at the "
          f"{args.max_length} cap); lognormal, mean {args.mean:g} before truncation, sigma {args.sigma:g}")
    model = build_model(args)
    print(f"model: Llama, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters (hidden {args.hidden_size}, "
          f"{args.layers} layers, vocab {args.vocab}), {args.attn} attention, {args.dtype} on {args.device}, "
          f"{torch.get_num_threads()} threads; steps of {args.grad_accum} micro-batches x {args.micro_batch} sequences; "
          f"packed: {'one flattened row' if args.flat or args.attn.startswith('flash') else 'rows'} per micro-batch")
    flat = args.flat or args.attn.startswith("flash_attention")
    runs = {"padded": Run(copy.deepcopy(model), split, args, None),
            "packed": Run(model, split, args, PackedSteps(args.max_length, flatten=flat))}
    for index in range(args.steps + 1):  # alternating, so that machine noise hits both alike
        for run in runs.values():
            run.step(timed=index > 0)
    for name, run in runs.items():
        print(f"{name:7s} {run.useful / run.seconds:9.0f} useful tokens/s  {run.seconds:6.1f} s  computed "
              f"{run.computed} tokens for {run.useful} useful (padding {run.padding:.1%})")
    padded, packed = runs["padded"], runs["packed"]
    difference = max(abs(a - b) / abs(a) for a, b in zip(padded.losses, packed.losses))
    # Each step's two layouts hold the same sequences: the ratio of their times is the ratio of their
    # useful tokens/s. The median over steps shrugs off a burst of load on a shared machine.
    pairs = sorted(a / b for a, b in zip(padded.step_seconds, packed.step_seconds))
    ratio = float(np.median(pairs))
    print(f"per step, padded time / packed time: median {ratio:.2f}, range {pairs[0]:.2f}-{pairs[-1]:.2f}; "
          f"totals: {(packed.useful / packed.seconds) / (padded.useful / padded.seconds):.2f}")
    print(f"padding alone would give {padded.computed / packed.computed:.2f}x (computed tokens, padded / packed); "
          f"step losses agree to {difference:.1e} (relative)")
    print(f"packing: {ratio:.2f}x useful tokens/s (padding {padded.padding:.0%} -> {packed.padding:.0%})")


if __name__ == "__main__":
    main()
