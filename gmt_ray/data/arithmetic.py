"""GSM8K-style arithmetic word problems, generated: the embedded default's data.

Each problem is a short story with 1..max_ops arithmetic steps; the solution works step
by step and ends with ``#### <answer>``, as GSM8K does. Splits are disjoint: problems are
unique by question text before they are dealt out to train, validation and test.
"""

from __future__ import annotations

import random

__all__ = ["generate_arithmetic", "preference_pairs"]

_NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar"]
_ITEMS = ["apple", "marble", "sticker", "book", "coin", "pencil", "shell", "card", "cookie", "stamp"]
_ADD = ["buys {b} more {item}s", "finds {b} more {item}s", "gets {b} more {item}s from a friend",
        "wins {b} more {item}s"]
_SUB = ["gives away {b} {item}s", "loses {b} {item}s", "sells {b} {item}s", "uses {b} {item}s"]
_MUL = ["ends up with {b} times as many {item}s", "multiplies the {item}s by {b}"]
_OPENERS = ["{name} has {a} {item}s.", "{name} starts the day with {a} {item}s.",
            "There are {a} {item}s in {name}'s bag."]
_QUESTIONS = ["How many {item}s does {name} have now?", "How many {item}s are left in the end?",
              "What is the final number of {item}s?"]


def _problem(rng: random.Random, min_ops: int, max_ops: int, max_number: int) -> dict[str, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(1, max_number)
    story = [rng.choice(_OPENERS).format(name=name, a=value, item=item)]
    steps = [f"{name} starts with {value} {item}s."]
    for _ in range(rng.randint(min_ops, max_ops)):
        kinds = ["add", "mul"] if value <= 1 else ["add", "sub", "mul"]
        if value > max_number * 3:
            kinds = ["sub"]  # keep numbers small enough to learn
        kind = rng.choice(kinds)
        if kind == "add":
            b = rng.randint(1, max_number)
            story.append(f"Then {name} " + rng.choice(_ADD).format(b=b, item=item) + ".")
            steps.append(f"{value} + {b} = {value + b}.")
            value += b
        elif kind == "sub":
            b = rng.randint(1, value - 1) if value > 1 else 0
            story.append(f"Then {name} " + rng.choice(_SUB).format(b=b, item=item) + ".")
            steps.append(f"{value} - {b} = {value - b}.")
            value -= b
        else:
            b = rng.randint(2, 3)
            story.append(f"Then {name} " + rng.choice(_MUL).format(b=b, item=item) + ".")
            steps.append(f"{value} * {b} = {value * b}.")
            value *= b
    story.append(rng.choice(_QUESTIONS).format(name=name, item=item))
    return {
        "prompt": " ".join(story),
        "response": " ".join(steps) + f"\n#### {value}",
        "answer": str(value),
    }


def generate_arithmetic(
    train_size: int,
    validation_size: int,
    test_size: int,
    *,
    min_ops: int = 1,
    max_ops: int = 2,
    max_number: int = 20,
    seed: int = 0,
) -> dict[str, list[dict[str, str]]]:
    """Disjoint train/validation/test splits of prompt/response/answer records.

    Raises:
        ValueError: if the settings cannot produce that many distinct problems.
    """
    rng = random.Random(seed)
    wanted = train_size + validation_size + test_size
    unique: dict[str, dict[str, str]] = {}
    attempts = 0
    while len(unique) < wanted:
        attempts += 1
        if attempts > 50 * wanted + 1000:
            raise ValueError(
                f"only {len(unique)} distinct problems exist with max_ops={max_ops}, max_number={max_number}; "
                f"{wanted} were asked for: raise data.arithmetic.max_number or max_ops, or ask for fewer"
            )
        problem = _problem(rng, min_ops, max_ops, max_number)
        unique.setdefault(problem["prompt"], problem)
    problems = list(unique.values())
    return {
        "train": problems[:train_size],
        "validation": problems[train_size : train_size + validation_size],
        "test": problems[train_size + validation_size :],
    }


def preference_pairs(records: list[dict[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Chosen: the correct solution; rejected: the same one with an arithmetic slip.

    The slip changes the last step's result by a small amount, so the rejected answer
    is wrong but reads like a solution.
    """
    rng = random.Random(seed)
    pairs = []
    for record in records:
        answer = int(record["answer"])
        wrong = answer + rng.choice([1, 2]) * (1 if answer < 2 or rng.random() < 0.5 else -1)
        work, _ = record["response"].rsplit("\n#### ", 1)
        head, _, _ = work.rpartition(f"= {answer}.")
        rejected = f"{head}= {wrong}.\n#### {wrong}"
        pairs.append({"prompt": record["prompt"], "chosen": record["response"], "rejected": rejected})
    return pairs
