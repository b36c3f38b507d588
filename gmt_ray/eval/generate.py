"""Batched decoding with transformers: left padding, KV cache, stop strings."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["generate", "generate_samples"]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_strings: list[str] | None = None,
    synced_gpus: bool = False,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Completions for ``prompts`` (greedy when ``temperature`` is 0; else sampled, from the
    smallest set of tokens whose probability reaches ``top_p``).

    Args:
        synced_gpus: keep generating until every rank is done (needed under FSDP, where
            every forward is a collective).
        on_batch: called after each batch with the number of prompts it completed.
    """
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    was_training = model.training
    model.eval()
    completions = []
    # Sampling must not disturb the caller's random streams (a resumed run replays them).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            options = dict(
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, use_cache=True, synced_gpus=synced_gpus,
            )
            if temperature > 0:
                options.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                options.update(do_sample=False)
            if stop_strings:
                options.update(stop_strings=stop_strings, tokenizer=tokenizer)
            output = model.generate(**batch, **options)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                for stop in stop_strings or []:
                    text = text.split(stop)[0]
                completions.append(text)
            if on_batch is not None:
                on_batch(len(new_tokens))
    tokenizer.padding_side = padding_side
    model.train(was_training)
    return completions


def generate_samples(model, tokenizer, benchmark, items, *, n: int = 1, temperature: float = 0.0,
                     top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 16, template: str = "auto",
                     code_prompt: str = "continue", seed: int = 0, synced_gpus: bool = False,
                     on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """``n`` completions per item of a ``Benchmark`` (greedy when ``temperature`` is 0), as
    ``{"task_id", "completion"}`` sample records (``"solution"`` where the prompt asks for a
    whole program: ``code_prompt="evalplus"``); ``on_batch`` as in ``generate`` (``n`` x the
    items in all)."""
    prompts = benchmark.prompts(items, tokenizer, template, code_prompt=code_prompt)
    stops = list(benchmark.stops(code_prompt) or []) or None
    field = benchmark.sample_field(code_prompt)
    samples = []
    for draw in range(n):
        completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               temperature=temperature, top_p=top_p, stop_strings=stops, seed=seed + draw,
                               synced_gpus=synced_gpus, on_batch=on_batch)
        samples += [{"task_id": item.task_id, field: c} for item, c in zip(items, completions, strict=True)]
    return samples
