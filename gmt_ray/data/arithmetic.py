"""GSM8K-style arithmetic word problems, generated: the embedded default's data.

A *domain* is a story world: its openers, its phrasings of +, - and x, its questions and
the first sentence of the solution. Each problem is a short story of 1..max_ops steps in
one of the chosen domains (or a bare expression, ``bare``: "What is 7 + 8 - 3?"); the
solution works step by step ("a + b = c.") and ends with ``#### <answer>``, as GSM8K does.
Splits are disjoint: problems are unique by question text before they are dealt out to
train, validation and test.

The quick start's pretrained base model learned the ``PRETRAINING_DOMAINS`` and bare
arithmetic (``experiments/arithmetic-base.yaml``); its fine-tuning task is the ``bus``
domain, which the base never saw: new nouns, new verbs for the same operations, a new
solution opener, so that fine-tuning has language to learn and a method's choice of
which weights move matters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gmt_ray import names

__all__ = ["BARE", "DOMAINS", "PRETRAINING_DOMAINS", "Domain", "generate_arithmetic", "preference_pairs"]


@dataclass(frozen=True)
class Domain:
    """One story world. Templates see {name}, {item}, {a} (start), {b} (operand)."""

    name: str
    agents: tuple[str, ...]
    items: tuple[str, ...]
    openers: tuple[str, ...]
    add: tuple[str, ...]
    sub: tuple[str, ...]
    mul: dict[int, tuple[str, ...]]  # factor -> phrasings
    questions: tuple[str, ...]
    start: str  # the solution's first sentence


_PEOPLE = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar")

DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain(  # the project's own generator's world
            name="collection",
            agents=_PEOPLE,
            items=("apple", "marble", "sticker", "book", "coin", "pencil", "shell", "card", "cookie", "stamp"),
            openers=("{name} has {a} {item}s.", "{name} starts the day with {a} {item}s.",
                     "There are {a} {item}s in {name}'s bag."),
            add=("Then {name} buys {b} more {item}s.", "Then {name} finds {b} more {item}s.",
                 "Then {name} gets {b} more {item}s from a friend.", "Then {name} wins {b} more {item}s."),
            sub=("Then {name} gives away {b} {item}s.", "Then {name} loses {b} {item}s.",
                 "Then {name} sells {b} {item}s.", "Then {name} uses {b} {item}s."),
            mul={2: ("Then {name} ends up with 2 times as many {item}s.", "Then {name} multiplies the {item}s by 2."),
                 3: ("Then {name} ends up with 3 times as many {item}s.", "Then {name} multiplies the {item}s by 3.")},
            questions=("How many {item}s does {name} have now?", "How many {item}s are left in the end?",
                       "What is the final number of {item}s?"),
            start="{name} starts with {a} {item}s.",
        ),
        Domain(
            name="money",
            agents=_PEOPLE,
            items=("dollar",),
            openers=("{name} has {a} dollars.", "{name} saved {a} dollars.", "{name}'s wallet holds {a} dollars."),
            add=("{name} earns {b} dollars.", "{name} is paid {b} dollars for chores.",
                 "A friend gives {name} {b} dollars.", "{name} gets {b} dollars as a gift."),
            sub=("{name} spends {b} dollars.", "{name} pays {b} dollars for lunch.",
                 "{name} lends {b} dollars to a friend.", "{name} buys a toy for {b} dollars."),
            mul={2: ("{name} ends up with twice as much money.", "{name}'s money grows 2 times."),
                 3: ("{name} ends up with three times as much money.", "{name}'s money grows 3 times.")},
            questions=("How many dollars does {name} have now?", "How much money does {name} have left?"),
            start="{name} starts with {a} dollars.",
        ),
        Domain(
            name="farm",
            agents=("the farm", "the ranch", "the barn"),
            items=("cow", "lamb", "goat", "hen", "duck", "pig", "horse"),
            openers=("{name} has {a} {item}s.", "There are {a} {item}s on {name}.", "{name} keeps {a} {item}s."),
            add=("Then {b} more {item}s are born.", "Then the farmer buys {b} more {item}s.",
                 "Then {b} {item}s arrive from a neighbour."),
            sub=("Then {b} {item}s are sold.", "Then {b} {item}s run away.", "Then the farmer trades {b} {item}s."),
            mul={2: ("Then the number of {item}s grows 2 times.", "Then the herd of {item}s is 2 times larger."),
                 3: ("Then the number of {item}s grows 3 times.", "Then the herd of {item}s is 3 times larger.")},
            questions=("How many {item}s are there now?", "How many {item}s does {name} have in the end?"),
            start="{name} starts with {a} {item}s.",
        ),
        Domain(
            name="reading",
            agents=_PEOPLE,
            items=("page",),
            openers=("{name} has read {a} pages.", "{name} is on page {a} of a novel.", "{name} read {a} pages."),
            add=("The next day {name} reads {b} more pages.", "Then {name} reads another {b} pages."),
            sub=("Then {name} skips back {b} pages.", "Then {name} rereads from {b} pages earlier."),
            mul={2: ("By the weekend {name} has read 2 times as many pages.",),
                 3: ("By the weekend {name} has read 3 times as many pages.",)},
            questions=("How many pages has {name} read now?", "On which page is {name} now?"),
            start="{name} starts at {a} pages.",
        ),
        Domain(  # the shifted task: a story world, verbs and solution opener unseen in pretraining
            name="bus",
            agents=("the red bus", "the school bus", "the night bus", "the tram", "the ferry"),
            items=("passenger",),
            openers=("{name} leaves the depot with {a} passengers.", "{name} carries {a} passengers.",
                     "There are {a} passengers aboard {name}."),
            add=("At the next stop {b} people get on.", "At the market {b} passengers board.",
                 "Near the park {b} riders climb aboard."),
            sub=("At the next stop {b} people get off.", "At the school {b} passengers leave.",
                 "Near the park {b} riders step down."),
            mul={2: ("At the stadium the crowd aboard doubles.", "After the concert the load doubles."),
                 3: ("At the stadium the crowd aboard triples.", "After the concert the load triples.")},
            questions=("How many passengers are aboard now?", "How many riders are on {name} at the end?"),
            start="{name} begins with {a} riders.",
        ),
    ]
}
if tuple(DOMAINS) != names.DOMAINS:  # every world the names list has, written here, in its order
    raise ImportError(f"gmt_ray.data.arithmetic writes the worlds {tuple(DOMAINS)}; gmt_ray.names lists {names.DOMAINS}")
PRETRAINING_DOMAINS, BARE = names.PRETRAINING_DOMAINS, names.BARE


def _operations(rng: random.Random, value: int, steps: int, max_number: int) -> list[tuple[str, int, int]]:
    """(kind, operand, result) per step; results stay within 1..3*max_number."""
    cap = 3 * max_number
    ops = []
    for _ in range(steps):
        kinds = []
        if value + 1 <= cap:
            kinds.append("add")
        if value > 1:
            kinds.append("sub")
        if 2 * value <= cap:
            kinds.append("mul")
        kind = rng.choice(kinds)
        if kind == "add":
            b = rng.randint(1, min(max_number, cap - value))
            value += b
        elif kind == "sub":
            b = rng.randint(1, min(max_number, value - 1))
            value -= b
        else:
            b = rng.choice([f for f in (2, 3) if f * value <= cap])
            value *= b
        ops.append((kind, b, value))
    return ops


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


def _story(rng: random.Random, domain: Domain, steps: int, max_number: int) -> dict[str, str]:
    name, item = rng.choice(domain.agents), rng.choice(domain.items)
    start = rng.randint(1, max_number)
    fill = dict(name=name, item=item)
    story = [_cap(rng.choice(domain.openers).format(a=start, **fill))]
    work = [_cap(domain.start.format(a=start, **fill))]
    value = start
    for kind, b, result in _operations(rng, start, steps, max_number):
        phrasings = domain.mul[b] if kind == "mul" else getattr(domain, kind)
        story.append(_cap(rng.choice(phrasings).format(b=b, **fill)))
        work.append(f"{value} {_SYMBOL[kind]} {b} = {result}.")
        value = result
    story.append(rng.choice(domain.questions).format(**fill))
    return {"prompt": " ".join(story), "response": " ".join(work) + f"\n#### {value}",
            "answer": str(value)}


_BARE_QUESTIONS = ("What is {expr}?", "Compute {expr}.", "Calculate {expr}.", "Work out {expr}.")


def _bare(rng: random.Random, steps: int, max_number: int) -> dict[str, str]:
    start = rng.randint(1, max_number)
    expr, work, value = str(start), [], start
    for kind, b, result in _operations(rng, start, steps, max_number):
        expr += f" {_SYMBOL[kind]} {b}"
        work.append(f"{value} {_SYMBOL[kind]} {b} = {result}.")
        value = result
    return {"prompt": rng.choice(_BARE_QUESTIONS).format(expr=expr), "response": " ".join(work) + f"\n#### {value}",
            "answer": str(value)}


def generate_arithmetic(
    train_size: int,
    validation_size: int,
    test_size: int,
    *,
    min_ops: int = 1,
    max_ops: int = 2,
    max_number: int = 20,
    seed: int = 0,
    domains: tuple[str, ...] | list[str] = ("collection",),
) -> dict[str, list[dict[str, str]]]:
    """Disjoint train/validation/test splits of prompt/response/answer records, each problem
    from one of ``domains`` (names in ``DOMAINS``, or ``bare``) drawn uniformly.

    Raises:
        ValueError: for an unknown domain, or settings that cannot produce that many
            distinct problems.
    """
    unknown = [d for d in domains if d not in DOMAINS and d != BARE]
    if unknown or not domains:
        raise ValueError(f"unknown arithmetic domain(s) {unknown}; choose from {sorted(DOMAINS)} or {BARE!r}")
    rng = random.Random(seed)
    wanted = train_size + validation_size + test_size
    unique: dict[str, dict[str, str]] = {}
    since_new = 0  # draws since the last new problem: a long run of repeats means the space is spent
    while len(unique) < wanted:
        if since_new > max(1000, 20 * len(unique)):
            raise ValueError(
                f"only {len(unique)} distinct problems exist with max_ops={max_ops}, max_number={max_number} in "
                f"{list(domains)}; {wanted} were asked for: raise data.arithmetic.max_number or max_ops, or ask for fewer"
            )
        domain, steps = rng.choice(list(domains)), rng.randint(min_ops, max_ops)
        problem = _bare(rng, steps, max_number) if domain == BARE else _story(rng, DOMAINS[domain], steps, max_number)
        since_new = since_new + 1 if problem["prompt"] in unique else 0
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
