"""DPO's pieces on a tiny model, against the formula computed by hand."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gmt_ray.data.tokens import IGNORE_INDEX, collate_pairs, tokenize_preference, train_tiny_tokenizer
from gmt_ray.train.dpo import FrozenReference, PrecomputedReference, dpo_batch_loss, dpo_loss, sequence_logps

PAIRS = [
    {"prompt": "Ava has 3 apples and buys 4 more. How many?", "chosen": "3 + 4 = 7.\n#### 7",
     "rejected": "3 + 4 = 8.\n#### 8"},
    {"prompt": "Ben has 9 cards and loses 2. How many?", "chosen": "9 - 2 = 7.\n#### 7",
     "rejected": "9 - 2 = 6.\n#### 6"},
    {"prompt": "Iris has 2 coins and triples them. How many?", "chosen": "2 * 3 = 6.\n#### 6",
     "rejected": "2 * 3 = 5. So the answer is\n#### 5"},
]


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_tiny_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS] * 10, 160)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id))
    split = tokenize_preference(PAIRS, tokenizer, 128, "alpaca")
    batch = collate_pairs([split[i] for i in range(len(split))], tokenizer.pad_token_id)
    return model, tokenizer, split, batch


def _by_hand(model, ids: list[int], start: int) -> float:
    """log p(response | prompt), one token at a time with a fresh forward each."""
    total = 0.0
    for position in range(start, len(ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids[:position], dtype=torch.long)[None]).logits[0, -1]
        total += torch.log_softmax(logits.double(), -1)[ids[position]].item()
    return total


def test_sequence_logps_sum_over_response_tokens_only(setup):
    model, _, split, batch = setup
    with torch.no_grad():
        logps = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    expected = [_by_hand(model, *split.chosen[i]) for i in range(3)] + [_by_hand(model, *split.rejected[i]) for i in range(3)]
    assert logps.tolist() == pytest.approx(expected, abs=1e-3)
    assert (batch["labels"][:3] != IGNORE_INDEX).sum() > 0


def test_dpo_loss_is_the_formula(setup):
    model, _, split, batch = setup
    reference_model = LlamaForCausalLM(model.config)  # a different random model as reference
    beta = 0.3
    losses, stats = dpo_batch_loss(model, FrozenReference(reference_model), batch, beta)
    expected, correct = 0.0, 0
    for i in range(3):
        pc, pr = _by_hand(model, *split.chosen[i]), _by_hand(model, *split.rejected[i])
        rc, rr = _by_hand(reference_model, *split.chosen[i]), _by_hand(reference_model, *split.rejected[i])
        margin = beta * ((pc - rc) - (pr - rr))
        expected += -math.log(1 / (1 + math.exp(-margin)))
        correct += margin > 0
    assert losses.item() == pytest.approx(expected, abs=1e-3)
    assert stats["reward_accuracy"] == correct


def test_identical_policy_and_reference_give_log_2():
    logps = torch.tensor([-3.0, -7.5])
    losses, chosen, rejected = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert chosen.tolist() == [0, 0] and rejected.tolist() == [0, 0]


def test_the_loss_gradient_raises_chosen_over_rejected(setup):
    model, _, _, batch = setup
    policy = LlamaForCausalLM(model.config)
    policy.load_state_dict(model.state_dict())
    reference = FrozenReference(model)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    first = None
    for _ in range(5):
        losses, stats = dpo_batch_loss(policy, reference, batch, beta=0.5)
        first = first if first is not None else losses.item()
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    assert losses.item() < first and stats["reward_margin"] > 0


def test_precomputed_reference_equals_the_frozen_model(setup):
    model, tokenizer, split, batch = setup
    table = PrecomputedReference(lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                 {"train": split}, batch_size=2, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    frozen = FrozenReference(model)
    reordered = collate_pairs([split[2], split[0]], tokenizer.pad_token_id)
    for a, b in zip(table.logps(reordered), frozen.logps(reordered)):
        assert a.tolist() == pytest.approx(b.tolist(), abs=1e-4)
