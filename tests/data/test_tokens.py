
from gmt_ray.data.arithmetic import generate_arithmetic
from gmt_ray.data.tokens import IGNORE_INDEX, collate, format_prompt, tokenize_sft, train_tiny_tokenizer


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
        assert batch["attention_mask"][row].sum() == len(split.input_ids[row])
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_truncation_keeps_response_tokens():
    tokenizer, records = tokenizer_and_records()
    split = tokenize_sft(records[:20], tokenizer, max_length=40, template="alpaca")
    for ids, start in zip(split.input_ids, split.response_start):
        assert len(ids) <= 40 and len(ids) - start >= 1
        assert start >= 1 and ids[0] == tokenizer.bos_token_id


def test_chat_template_is_used_when_the_tokenizer_has_one():
    tokenizer, _ = tokenizer_and_records()
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert format_prompt("2+2?", tokenizer) == "<user>2+2?<assistant>"
    assert format_prompt("2+2?", tokenizer, "alpaca").startswith("Below is an instruction")
