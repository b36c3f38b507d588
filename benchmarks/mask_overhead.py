"""Cost of GradientMask.apply() next to a training step, measured side by side.

    python benchmarks/mask_overhead.py [--steps 6] [--micro-batches 4] [--batch 4] [--seq 256]
    python benchmarks/mask_overhead.py --model smollm2 --dtype bf16 --device cuda   # on a GPU

Prints, for the same model, data and initial weights:
1. the full optimizer-step time (N micro-batches of forward+backward, apply(), clip,
   AdamW) of every method, scope and apply_to, as a ratio to sft; methods run
   round-robin so that machine noise hits all of them alike;
2. threshold selection alone over the model's gradients: gmt_ray's selection against
   per-tensor torch.topk, torch.kthvalue and a full sort;
3. the extra peak memory of apply(), against the largest single gradient tensor; for
   apply_to="update" also what apply() leaves held until the step, and the peak of the
   masked step next to a plain AdamW step's.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gmt_ray import GradientMask
from gmt_ray.masking import keep_count, kth_largest
from gmt_ray.masking.scores import GradientScores

CONFIGS = [  # (method, scope, apply_to)
    ("sft", "tensor", "grad"),
    ("gmt", "tensor", "grad"),
    ("gmt", "global", "grad"),
    ("rmt", "tensor", "grad"),
    ("rmt", "global", "grad"),
    ("hft", "tensor", "grad"),
    ("gmt", "tensor", "update"),
    ("gmt", "global", "update"),
    ("rmt", "tensor", "update"),
    ("hft", "tensor", "update"),
]


def build_model(name: str, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "tiny":
        config = LlamaConfig(
            vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        )
    elif name == "smollm2":  # SmolLM2-135M's shape, random init: no download needed
        config = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
        )
    elif name == "1b":  # Llama-3.2-1B's shape
        config = LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048, tie_word_embeddings=True,
        )
    else:
        raise SystemExit(f"--model must be tiny, smollm2 or 1b, but got {name!r}")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype), config.vocab_size


class PeakNewTensorBytes(TorchDispatchMode):
    """Tracks bytes of tensors created (not views or in-place results) inside the mode."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._owned: set[int] = set()

    def _free(self, ptr: int, nbytes: int) -> None:
        self._owned.discard(ptr)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in inputs or ptr in self._owned or ptr == 0:
                continue
            self._owned.add(ptr)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, ptr, storage.nbytes())
        return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per method")
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--mask-ratio", type=float, default=0.7)
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = args.device

    model, vocab = build_model(args.model, dtype, device)
    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    tokens = args.micro_batches * args.batch * args.seq
    print(f"model={args.model} params={params / 1e6:.1f}M dtype={args.dtype} device={device} "
          f"threads={torch.get_num_threads()} tokens/optimizer-step={tokens} "
          f"({args.micro_batches} micro-batches x {args.batch} x {args.seq}) mask_ratio={args.mask_ratio}")
    data = torch.Generator().manual_seed(0)
    batches = [torch.randint(vocab, (args.batch, args.seq), generator=data).to(device) for _ in range(args.micro_batches)]

    optimizers, masks = {}, {}
    for method, scope, apply_to in CONFIGS:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        optimizers[(method, scope, apply_to)] = optimizer
        masks[(method, scope, apply_to)] = GradientMask(
            model, method=method, mask_ratio=args.mask_ratio, scope=scope, apply_to=apply_to,
            optimizer=optimizer if apply_to == "update" else None,
        )

    step_times = {c: [] for c in CONFIGS}
    apply_times = {c: [] for c in CONFIGS}
    for round_ in range(args.steps + 1):  # round 0 warms up every method
        for config in CONFIGS:
            model.load_state_dict(initial)  # same weights and batches for every method
            optimizer = optimizers[config]
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                model(batch, labels=batch).loss.div(len(batches)).backward()
            stats = masks[config].apply()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if round_ > 0:
                step_times[config].append(time.perf_counter() - start)
                apply_times[config].append(stats.seconds)

    print("\n1. optimizer step (forward+backward x N, apply, clip, AdamW), median over steps")
    base = statistics.median(step_times[CONFIGS[0]])
    print(f"{'method':<6}{'scope':<8}{'apply_to':<9}{'step s':>9}{'ratio to sft':>14}{'apply() s':>11}{'apply/step':>12}")
    for config in CONFIGS:
        step = statistics.median(step_times[config])
        apply = statistics.median(apply_times[config])
        print(f"{config[0]:<6}{config[1]:<8}{config[2]:<9}{step:>9.3f}{step / base:>14.3f}{apply:>11.4f}"
              f"{apply / step:>12.2%}")

    # Gradients of one real step for the selection and memory measurements.
    model.load_state_dict(initial)
    for batch in batches:
        model(batch, labels=batch).loss.div(len(batches)).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]

    def ours():
        return [kth_largest([GradientScores(g)], keep_count(g.numel(), args.mask_ratio)) for g in grads]

    def topk():
        return [g.abs().reshape(-1).topk(keep_count(g.numel(), args.mask_ratio)).values[-1] for g in grads]

    def kthvalue():
        return [g.abs().reshape(-1).float().kthvalue(g.numel() - keep_count(g.numel(), args.mask_ratio) + 1).values
                for g in grads]

    def full_sort():
        return [g.abs().reshape(-1).sort(descending=True).values[keep_count(g.numel(), args.mask_ratio) - 1]
                for g in grads]

    print(f"\n2. threshold selection alone, per tensor over {sum(g.numel() for g in grads) / 1e6:.1f}M gradients")
    results = {}
    for name, fn in [("gmt_ray", ours), ("torch.topk", topk), ("torch.kthvalue", kthvalue), ("sort", full_sort)]:
        fn()
        times = []
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            results[name] = fn()
            sync(device)
            times.append(time.perf_counter() - start)
        results[name + "_s"] = statistics.median(times)
    assert all(float(a) == float(b) for a, b in zip(results["gmt_ray"], results["sort"])), "selection mismatch"
    for name in ("gmt_ray", "torch.topk", "torch.kthvalue", "sort"):
        t = results[name + "_s"]
        print(f"{name:<16}{t:>9.4f} s   {t / results['gmt_ray_s']:>6.2f} x gmt_ray")
    print("(gmt_ray's thresholds equal the full sort's on every tensor)")

    print("\n3. extra peak memory of apply() (bytes of new tensors alive at once)")
    largest = max(g.numel() for g in grads)
    print(f"largest gradient tensor: {largest / 1e6:.2f}M entries; all gradients: "
          f"{sum(g.numel() * g.element_size() for g in grads) / 2**20:.1f} MiB")
    saved = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    entries = sum(g.numel() for g in saved.values())

    def restore_grads():  # every method masks the same gradients
        for n, p in model.named_parameters():
            if n in saved:
                p.grad = saved[n].clone()

    def measure(fn) -> tuple[int, int]:
        """(peak, still held at the end) of what fn allocates; CPU: bytes of new tensors."""
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before, torch.cuda.memory_allocated() - before
        with PeakNewTensorBytes() as tracker:
            fn()
        return tracker.peak, tracker.live

    def per_entry(nbytes: int) -> str:
        return f"{nbytes / 2**20:>9.1f} MiB = {nbytes / largest:>5.2f} bytes per entry of the largest tensor"

    for method, scope, apply_to in CONFIGS:
        restore_grads()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        mask = GradientMask(model, method=method, mask_ratio=args.mask_ratio, scope=scope, apply_to=apply_to,
                            optimizer=optimizer if apply_to == "update" else None)
        peak, held = measure(mask.apply)
        print(f"{method:<6}{scope:<8}{apply_to:<9}{per_entry(peak)}")
        if apply_to == "update":
            print(f"{'':<23}held from apply() to step(): {held / 2**20:.2f} MiB = "
                  f"{held * 8 / entries:.2f} bits per governed entry")
        mask.remove()

    # The update-mode step next to a plain AdamW step, moments already allocated.
    print("\n   peak of optimizer.step() after apply() and clip, AdamW state already allocated")
    for method, scope, apply_to in [("sft", "tensor", "grad")] + [c for c in CONFIGS if c[2] == "update"]:
        restore_grads()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        optimizer.step()  # allocates the moments outside the measurement
        restore_grads()
        mask = GradientMask(model, method=method, mask_ratio=args.mask_ratio, scope=scope, apply_to=apply_to,
                            optimizer=optimizer if apply_to == "update" else None)
        mask.apply()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        peak, _ = measure(optimizer.step)
        print(f"{method:<6}{scope:<8}{apply_to:<9}{per_entry(peak)}")
        mask.remove()

if __name__ == "__main__":
    main()
