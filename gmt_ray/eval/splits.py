"""Which problems an evaluation uses: validation problems (what a sweep's search chooses on)
or test problems (what it reports), never the same ones; or, outside a sweep (``all``), every
problem of the test file.

The benchmark the search chooses on (``Experiment.chosen_on``) is split (``eval.split``,
docs/verdicts.md); every other benchmark is scored on its whole test file:

    generated (arithmetic)      validation: the generator's validation split; test: its test split
    eval.validation_data.<name> validation: that file (a dev split of the benchmark's own)
    any other file benchmark    validation: eval.validation_size problems of the test file, a fixed
                                choice (by a hash of each problem's id: its task_id, else its row);
                                test: the rest of the file, so a reported score never includes them
"""

from __future__ import annotations

import hashlib

from gmt_ray.config import EvalConfig
from gmt_ray.eval.benchmarks import EvalItem, get_benchmark

__all__ = ["check_validation_split", "evaluation_items", "held_out_ids", "score_name", "validation_source"]


def held_out_ids(items: list[EvalItem], size: int) -> set[str]:
    """The ids of the ``size`` problems held out for validation: those whose id hashes lowest.

    Raises:
        ValueError: the file does not have more problems than that (nothing would be left to report).
    """
    if size >= len(items):
        raise ValueError(f"eval.validation_size={size} holds out every problem of {len(items)}: give it fewer "
                         "(or a validation file of the benchmark's own in eval.validation_data)")
    ranked = sorted(items, key=lambda item: hashlib.blake2b(item.task_id.encode(), digest_size=8).digest())
    return {item.task_id for item in ranked[:size]}


def evaluation_items(name: str, config: EvalConfig, *, test_records: list[dict] | None = None,
                     validation_records: list[dict] | None = None, held_out: bool = False) -> list[EvalItem]:
    """The problems of benchmark ``name`` on ``config.split``, the first ``config.max_samples``.

    Args:
        held_out: the search chooses on this benchmark, so its test file gives up its validation
            problems (unless it has a validation file of its own): they are never test problems.

    Raises:
        ValueError / FileNotFoundError: naming the file and row that are wrong.
    """
    benchmark = get_benchmark(name)
    validation = config.split == "validation"
    if benchmark.generated:
        items = benchmark.load_items(records=validation_records if validation else test_records)
    elif validation and name in config.validation_data:
        items = benchmark.load_items(config.validation_data[name])
    else:
        items = benchmark.load_items(config.data.get(name))
        if held_out and config.split != "all" and name not in config.validation_data:
            chosen = held_out_ids(items, config.validation_size)
            items = [item for item in items if (item.task_id in chosen) == validation]
    return items[: config.max_samples] if config.max_samples else items


def score_name(metric: str, config: EvalConfig) -> str:
    """A benchmark metric as this evaluation reports it: ``val_`` before it on the validation problems."""
    return f"val_{metric}" if config.split == "validation" else metric


def check_validation_split(config: EvalConfig, chosen_on: str | None) -> list[str]:
    """That the benchmark the search chooses on can give validation problems and still keep
    test problems; returns the problems (empty: all fine)."""
    if chosen_on is None or get_benchmark(chosen_on).generated or chosen_on in config.validation_data:
        return []
    try:
        held_out_ids(get_benchmark(chosen_on).load_items(config.data.get(chosen_on)), config.validation_size)
    except (ValueError, FileNotFoundError) as error:
        return [f"eval.data.{chosen_on}: {error}"]
    return []


def validation_source(name: str, config: EvalConfig) -> str:
    """Where benchmark ``name``'s validation problems come from, in words (for --dry-run)."""
    capped = f", at most {config.max_samples} of them (eval.max_samples)" if config.max_samples else ""
    if get_benchmark(name).generated:
        return f"the generator's validation split (data.arithmetic.validation_size problems{capped})"
    if name in config.validation_data:
        return f"its own validation file {config.validation_data[name]}{capped}"
    if config.max_samples and config.max_samples < config.validation_size:
        capped = f"; the search scores the first {config.max_samples} of them (eval.max_samples)"
    else:
        capped = ""
    return (f"{config.validation_size} problems of its test file held out (a fixed choice), never in its test "
            f"score{capped}")
