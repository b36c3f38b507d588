import torch

from gmt_ray.config import ModelConfig, TinyModel
from gmt_ray.data.arithmetic import generate_arithmetic
from gmt_ray.data.tokens import format_prompt, prompt_text, train_tiny_tokenizer
from gmt_ray.eval.generate import generate
from gmt_ray.models import build_model


def test_batched_greedy_generation_matches_one_by_one():
    records = generate_arithmetic(100, 1, 1, seed=0)["train"]
    tokenizer = train_tiny_tokenizer([format_prompt(r["prompt"], None, "alpaca") + r["response"] for r in records], 300)
    config = ModelConfig(tiny=TinyModel(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2))
    model = build_model(config, tokenizer, torch.float32, seed=0)
    prompts = [prompt_text(r["prompt"], tokenizer, "alpaca") for r in records[:3]]
    assert prompts[0].startswith("<|bos|>Below is an instruction")
    state = torch.random.get_rng_state()
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    single = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single and len(batched) == 3
    assert all(isinstance(t, str) for t in batched)
    sampled = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=1.0, seed=1)
    assert sampled == generate(model, tokenizer, prompts, max_new_tokens=8, temperature=1.0, seed=1)
