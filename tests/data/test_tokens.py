
import pickle

import numpy as np
import pytest
import torch

from gmt_ray.data.arithmetic import generate_arithmetic, preference_pairs
from gmt_ray.data.tokens import (
    IGNORE_INDEX,
    TokenizedSplit,
    collate,
    collate_pairs,
    format_prompt,
    install_chat_format,
    tokenize_preference,
    tokenize_sft,
    train_tiny_tokenizer,
)


def tokenizer_and_records():
    records = generate_arithmetic(200, 1, 1, seed=0)["train"]
    texts = [format_prompt(r["prompt"], None, "alpaca") + r["response"] for r in records]
    return train_tiny_tokenizer(texts, 300), records


def test_tiny_tokenizer_round_trips_and_splits_digits():
    tokenizer, records = tokenizer_and_records()
    text = records[0]["prompt"]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert all(len(tokenizer.decode([t]).strip()) <= 1 or not any(c.isdigit() for c in tokenizer.decode([t]))
               for t in tokenizer("12345 678")["input_ids"])


def test_labels_cover_the_response_only():
    tokenizer, records = tokenizer_and_records()
    split = tokenize_sft(records[:4], tokenizer, max_length=512, template="alpaca")
    batch = collate([split[i] for i in range(4)], tokenizer.pad_token_id)
    for row, record in enumerate(records[:4]):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == record["response"] + "<|eos|>"
        assert batch["attention_mask"][row].sum() == len(split[row][0])
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_truncation_keeps_response_tokens():
    tokenizer, records = tokenizer_and_records()
    split = tokenize_sft(records[:20], tokenizer, max_length=40, template="alpaca")
    for ids, start in (split[i] for i in range(len(split))):
        assert len(ids) <= 40 and len(ids) - start >= 1
        assert start >= 1 and ids[0] == tokenizer.bos_token_id


def test_chat_template_is_used_when_the_tokenizer_has_one():
    tokenizer, _ = tokenizer_and_records()
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert format_prompt("2+2?", tokenizer) == "<user>2+2?<assistant>"
    assert format_prompt("2+2?", tokenizer, "alpaca").startswith("Below is an instruction")


# ---- the list-of-lists implementation that the flat arrays replaced, as the reference


def _tokenize_sft_lists(records, tokenizer, max_length, template="auto"):
    prompts = [format_prompt(r["prompt"], tokenizer, template) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and template != "chat" else []
    input_ids, starts = [], []
    for p, r in zip(prompt_ids, response_ids):
        r = r + [tokenizer.eos_token_id]
        p = bos + p
        if len(p) + len(r) > max_length:
            keep_prompt = max(max_length - len(r), max_length // 2)
            p = bos + p[len(p) - keep_prompt + len(bos) :] if keep_prompt > len(bos) else p[:keep_prompt]
            r = r[: max_length - len(p)]
        input_ids.append(p + r)
        starts.append(len(p))
    return input_ids, starts


def _collate_lists(examples, pad_id):
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:], dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def test_flat_arrays_hold_the_same_ids_as_the_lists_did_across_chunks_and_truncation():
    tokenizer, records = tokenizer_and_records()
    for max_length in (512, 40):
        expected_ids, expected_starts = _tokenize_sft_lists(records, tokenizer, max_length, "alpaca")
        split = tokenize_sft(records, tokenizer, max_length, "alpaca", chunk_size=7)  # chunks of uneven sizes
        assert split.ids.dtype == np.int32 and split.offsets.dtype == np.int64
        assert len(split) == len(records) and split.num_tokens() == sum(map(len, expected_ids))
        for i in range(len(records)):
            ids, start = split[i]
            assert ids.tolist() == expected_ids[i] and start == expected_starts[i]


def test_collate_gives_the_same_batches_as_before():
    tokenizer, records = tokenizer_and_records()
    split = tokenize_sft(records[:16], tokenizer, 64, "alpaca")
    lists, starts = _tokenize_sft_lists(records[:16], tokenizer, 64, "alpaca")
    for rows in ([0, 1, 2, 3], [5, 9, 15]):
        batch = collate([split[i] for i in rows], tokenizer.pad_token_id)
        expected = _collate_lists([(lists[i], starts[i]) for i in rows], tokenizer.pad_token_id)
        assert batch.keys() == expected.keys()
        for key in batch:
            assert batch[key].dtype == torch.long and torch.equal(batch[key], expected[key]), key
    # Lists still collate too (hand-built examples in tests and tools).
    assert torch.equal(collate([(lists[0], starts[0])], 0)["input_ids"], collate([split[0]], 0)["input_ids"])


def test_preference_pairs_keep_their_order_and_collate():
    tokenizer, records = tokenizer_and_records()
    pairs = preference_pairs(records[:6])
    split = tokenize_preference(pairs, tokenizer, 128, "alpaca")
    chosen, _ = _tokenize_sft_lists([{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs], tokenizer, 128,
                                    "alpaca")
    rejected, _ = _tokenize_sft_lists([{"prompt": p["prompt"], "response": p["rejected"]} for p in pairs], tokenizer,
                                      128, "alpaca")
    assert [split[i][0][0].tolist() for i in range(6)] == chosen
    assert [split[i][1][0].tolist() for i in range(6)] == rejected
    batch = collate_pairs([split[i] for i in (4, 1)], tokenizer.pad_token_id)
    assert batch["pair_index"].tolist() == [4, 1] and batch["input_ids"].shape[0] == 4


def test_a_split_pickles_in_a_few_bytes_a_token():
    tokenizer, records = tokenizer_and_records()
    split = tokenize_sft(records, tokenizer, 512, "alpaca")
    data = pickle.dumps(split, protocol=5)
    # 4 bytes of int32 id, 12 of offset and start spread over a ~200-token example, a fixed header.
    # (Pickled lists are small too; unpickled, every id above 256 is a 28-byte int object
    # plus an 8-byte pointer: benchmarks/token_memory.py measures that side.)
    assert len(data) / split.num_tokens() < 4.5, len(data) / split.num_tokens()
    back = pickle.loads(data)
    assert np.array_equal(back.ids, split.ids) and np.array_equal(back.offsets, split.offsets)


def test_an_empty_split_is_fine():
    split = TokenizedSplit.concatenate([])
    assert len(split) == 0 and split.num_tokens() == 0



# ---- conversations: Tulu v2's format, every assistant turn trained

CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one line."},
     {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "It is 5."},
     {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "It is 8."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue. "}],
    [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1, 2, 3"},
     {"role": "user", "content": "Backwards?"}, {"role": "assistant", "content": "3, 2, 1"},
     {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You're welcome."}],
]


def conversation_tokenizer():
    texts = [m["content"] for c in CONVERSATIONS for m in c] * 5 + ["<|user|>\n<|assistant|>\n<|system|>\n"] * 5
    return train_tiny_tokenizer(texts, 300)


def as_records(conversations):
    return [{"prompt": c[:-1], "response": c[-1]["content"]} for c in conversations]


def labelled_runs(labels):
    """The label ids as their contiguous runs."""
    runs, current = [], []
    for label in labels.tolist():
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def test_tulu_format_is_open_instructs_and_is_kept_by_the_tokenizer():
    tokenizer = install_chat_format(conversation_tokenizer(), "tulu")
    assert tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False) == (
        "<|bos|><|system|>\nYou answer in one line.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\nIt is 5.<|eos|>\n"
        "<|user|>\nAnd 4 + 4?\n<|assistant|>\nIt is 8.<|eos|>")
    assert format_prompt("Hi", tokenizer, "tulu") == "<|bos|><|user|>\nHi\n<|assistant|>\n"
    own = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    other = conversation_tokenizer()
    other.chat_template = own
    assert install_chat_format(other, "tulu").chat_template == own  # the tokenizer's own template wins


def test_labels_cover_exactly_the_assistant_turns_of_a_tulu_conversation():
    tokenizer = install_chat_format(conversation_tokenizer(), "tulu")
    split = tokenize_sft(as_records(CONVERSATIONS), tokenizer, max_length=512, template="tulu")
    batch = collate([split[i] for i in range(len(split))], tokenizer.pad_token_id)
    for row, conversation in enumerate(CONVERSATIONS):
        answers = [m["content"].strip() + "<|eos|>" for m in conversation if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in labelled_runs(batch["labels"][row])] == answers
        # What is not labelled is exactly the rest: BOS, system and user turns, role lines.
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1]
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
        unlabelled = tokenizer.decode(ids[batch["labels"][row][: len(ids)] == IGNORE_INDEX])
        rest = rendered
        for answer in answers:
            rest = rest.replace(answer, "", 1)
        assert unlabelled == rest


def test_labels_follow_the_tokenizers_own_chat_template():
    tokenizer = conversation_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    split = tokenize_sft(as_records(CONVERSATIONS[2:]), tokenizer, max_length=512, template="chat")
    labels = collate([split[0]], tokenizer.pad_token_id)["labels"][0]
    assert [tokenizer.decode(run) for run in labelled_runs(labels)] == [
        "1, 2, 3<|im_end|>\n", "3, 2, 1<|im_end|>\n", "You're welcome.<|im_end|>\n"]


def test_a_long_conversation_keeps_trained_tokens_and_its_bos():
    tokenizer = install_chat_format(conversation_tokenizer(), "tulu")
    long = [{"role": "user", "content": "Count to three. " * 20}, *CONVERSATIONS[2][1:]]
    split = tokenize_sft(as_records([long, CONVERSATIONS[0]]), tokenizer, max_length=48, template="tulu")
    for i in range(2):
        ids, start, holes = split[i]
        assert len(ids) <= 48 and ids[0] == tokenizer.bos_token_id and start < len(ids)
        labels = collate([split[i]], tokenizer.pad_token_id)["labels"][0]
        assert (labels != IGNORE_INDEX).sum() > 0


def test_preference_conversations_train_only_the_final_response():
    tokenizer = install_chat_format(conversation_tokenizer(), "tulu")
    pairs = [{"prompt": CONVERSATIONS[0][:-1], "chosen": "It is 8.", "rejected": "It is 9."}]
    split = tokenize_preference(pairs, tokenizer, 512, "tulu")
    batch = collate_pairs([split[0]], tokenizer.pad_token_id)
    assert [tokenizer.decode(run) for row in batch["labels"] for run in labelled_runs(row)] == [
        "It is 8.<|eos|>", "It is 9.<|eos|>"]


def test_alpaca_refuses_a_multi_turn_conversation_but_takes_a_single_turn_one():
    tokenizer = conversation_tokenizer()
    with pytest.raises(ValueError, match="record 0: a conversation of several assistant turns needs a chat format"):
        tokenize_sft(as_records(CONVERSATIONS[:1]), tokenizer, 512, "alpaca")
    split = tokenize_sft(as_records(CONVERSATIONS[1:2]), tokenizer, 512, "alpaca")
    assert split.holes is None and tokenizer.decode(split[0][0][split[0][1]:]) == "Blue. <|eos|>"
    with pytest.raises(ValueError, match="needs a chat template"):
        tokenize_sft(as_records(CONVERSATIONS[1:2]), tokenizer, 512, "chat")


def test_splits_of_conversations_and_single_turns_concatenate_and_pickle():
    tokenizer = install_chat_format(conversation_tokenizer(), "tulu")
    mixed = as_records(CONVERSATIONS) + [{"prompt": "Say hi", "response": "hi"}]
    split = tokenize_sft(mixed, tokenizer, 512, "tulu", chunk_size=2)
    whole = tokenize_sft(mixed, tokenizer, 512, "tulu")
    back = pickle.loads(pickle.dumps(split))
    for i in range(len(mixed)):
        for a, b in zip(split[i], back[i]):
            assert np.array_equal(a, b)
        assert all(np.array_equal(a, b) for a, b in zip(split[i], whole[i]))
    assert split[3][2].shape == (0, 2)  # the single turn has no holes
