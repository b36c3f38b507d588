"""What a sweep will cost before it starts: trials, per-trial resources, how many run at
once, and an estimate of its GPU-hours. Used by ``--dry-run``; starts nothing."""

from __future__ import annotations

import math
from typing import Any

import yaml

from gmt_ray.config import Experiment
from gmt_ray.sweep.search import groups_of

__all__ = ["ASSUMED_MEAN_TOKENS", "KNOWN_MODEL_PARAMS", "cluster_capacity", "cluster_file_capacity", "concurrency",
           "describe_plan", "dry_run", "no_test_scores", "estimate", "expected_tokens", "lognormal_lengths", "model_parameters"]

# Parameter counts of the paper's models (their model cards), for estimates without
# downloading a config.
KNOWN_MODEL_PARAMS = {
    "mistralai/Mistral-7B-v0.1": 7.24e9,
    "meta-llama/Meta-Llama-3-8B": 8.03e9,
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Llama-2-13b-hf": 13.0e9,
    "deepseek-ai/deepseek-coder-6.7b-base": 6.74e9,
    "smollm2": 1.35e8,
    "arithmetic-base": 9.10e5,
}
# Dense bf16 peak TFLOP/s per GPU, and the model-FLOPs utilisation a well-tuned FSDP run
# of a 7B model reaches (~40%); the estimate is only as good as these two numbers.
GPU_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0}
ASSUMED_MFU = 0.40

# Mean tokens a row before truncation, for the expected (not the bound) tokens of a trial when
# its training data is not loaded here (a hub data set). Assumptions, not measurements:
# MetaMathQA's is the one docs/scaling.md works with (264 a row under the 512 cap, from
# benchmarks/token_memory.py's MetaMathQA-like rows; 270 before it at this spread); the other
# two come from each data set's published size (255 MB of JSONL for 111K Magicoder rows,
# 1.24 GB for 326K Tulu v2 conversations) at ~3.5 and ~4 characters a token, plus the
# template. A loaded data set's own lengths replace them.
ASSUMED_MEAN_TOKENS = {
    "meta-math/MetaMathQA": 270,
    "ise-uiuc/Magicoder-Evol-Instruct-110K": 680,
    "allenai/tulu-v2-sft-mixture": 950,
}
ASSUMED_LENGTH_SIGMA = 0.45  # lengths lognormal with this spread (log-space standard deviation)
_SIMULATED_STEPS = 400  # per-rank steps drawn to estimate padding either way


def model_parameters(config: Experiment) -> float | None:
    """Parameters of the experiment's model: exact for ``tiny``, from the table otherwise."""
    if config.model.name == "tiny":
        t = config.model.tiny
        layer = 4 * t.hidden_size**2 + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size
        return float(t.num_layers * layer + 2 * t.vocab_size * t.hidden_size + t.hidden_size)
    return KNOWN_MODEL_PARAMS.get(config.model.name)


def estimate(config: Experiment, trials: int, lengths=None) -> dict[str, Any]:
    """Training FLOPs (6 x parameters x tokens, DPO: two sequences per pair plus the
    reference's forward) and GPU-hours at ``ASSUMED_MFU`` of the GPU's bf16 peak: an upper
    bound (every sequence at ``data.max_length``) and, under ``expected``, what the rows'
    lengths (``expected_tokens``) give padded and packed."""
    params = model_parameters(config)
    t, r = config.train, config.resources
    sequences = t.max_steps * t.micro_batch_size * t.grad_accum * r.num_workers
    tokens = sequences * config.data.max_length  # an upper bound: sequences are padded to at most this
    passes = 6.0
    if t.objective == "dpo":
        sequences, tokens, passes = 2 * sequences, 2 * tokens, 8.0  # chosen + rejected; reference forward
    out: dict[str, Any] = {"tokens_per_trial_max": tokens, "sequences_per_trial": sequences}
    if params is None:
        out["gpu_hours"] = f"unknown: add {config.model.name!r} to gmt_ray.sweep.plan.KNOWN_MODEL_PARAMS"
        return out
    flops = passes * params * tokens
    out.update(parameters=params, train_flops_per_trial=flops)
    gpu = r.accelerator_type or "H100"
    if r.use_gpu:
        hours = flops / (GPU_TFLOPS[gpu] * 1e12 * ASSUMED_MFU) / 3600
        out.update(gpu_type=gpu, assumed_mfu=ASSUMED_MFU, gpu_hours_per_trial=round(hours, 2),
                   gpu_hours_total=round(hours * trials, 1))
    expected = expected_tokens(config, lengths)
    if expected is not None:
        section: dict[str, Any] = {"lengths": expected["lengths"], "flops_per_token": f"6 x {params:.3g} parameters",
                                   "this_file": "packed" if config.data.packing else "padded"}
        for layout in ("padded", "packed"):
            layout_tokens = sequences * expected[f"{layout}_per_sequence"]
            row: dict[str, Any] = {"tokens_per_trial": round(layout_tokens),
                                   "padding": f"{expected['padding'][layout]:.1%}"}
            if r.use_gpu:
                hours = passes * params * layout_tokens / (GPU_TFLOPS[gpu] * 1e12 * ASSUMED_MFU) / 3600
                row.update(gpu_hours_per_trial=round(hours, 2), gpu_hours_total=round(hours * trials, 1))
            section[layout] = row
        out["expected"] = section
    return out


def lognormal_lengths(mean: float, cap: int, count: int, sigma: float = ASSUMED_LENGTH_SIGMA, seed: int = 0,
                      shortest: int = 16):
    """``count`` sequence lengths drawn lognormal with ``mean`` tokens (before truncation) and
    log-space spread ``sigma``, truncated to ``cap`` as tokenize_sft truncates (int64 array)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    median = mean / math.exp(sigma**2 / 2)
    return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(count))), shortest, cap).astype(np.int64)


def expected_tokens(config: Experiment, lengths=None, steps: int = _SIMULATED_STEPS) -> dict[str, Any] | None:
    """Tokens a trial computes per sequence, padded and packed, from its rows' lengths.

    ``lengths``: the training split's (None: drawn from ``ASSUMED_MEAN_TOKENS``). Each rank's
    steps are drawn from them (``micro_batch_size x grad_accum`` sequences) and laid out as the
    trainer lays them out (``gmt_ray.data.packing.token_slots``). None for DPO (never packed)
    and for data whose lengths are unknown.
    """
    import numpy as np

    from gmt_ray.data.packing import token_slots

    d, t = config.data, config.train
    if t.objective == "dpo":
        return None
    if lengths is not None:
        lengths = np.asarray(lengths, dtype=np.int64)
        source = f"the training split's own: {len(lengths)} rows, mean {lengths.mean():.0f} tokens"
    elif d.source == "hub" and d.path in ASSUMED_MEAN_TOKENS:
        lengths = lognormal_lengths(ASSUMED_MEAN_TOKENS[d.path], d.max_length, 200_000)
        source = (f"assumed for {d.path}: lognormal, mean {ASSUMED_MEAN_TOKENS[d.path]} tokens before truncation at "
                  f"{d.max_length} ({lengths.mean():.0f} after), sigma {ASSUMED_LENGTH_SIGMA} "
                  "(gmt_ray.sweep.plan.ASSUMED_MEAN_TOKENS)")
    else:
        return None
    flat = config.model.attn_implementation.startswith("flash_attention")
    per_step = t.micro_batch_size * t.grad_accum
    draws = np.random.default_rng(0).choice(lengths, size=(steps, per_step))
    useful = int(draws.sum())
    slots = {layout: sum(token_slots(step.tolist(), t.grad_accum, d.max_length, layout) for step in draws)
             for layout in ("padded", "flat" if flat else "rows")}
    padded, packed = slots["padded"], slots["flat" if flat else "rows"]
    return {"lengths": source, "useful_per_sequence": useful / draws.size,
            "padded_per_sequence": padded / draws.size, "packed_per_sequence": packed / draws.size,
            "padding": {"padded": 1 - useful / padded, "packed": 1 - useful / packed}}


def describe_plan(config: Experiment, lengths=None) -> dict[str, Any]:
    """What --dry-run prints: groups, space, per-trial resources and cost (``lengths``: the
    training rows' token counts where the data is loaded, for the expected tokens)."""
    from gmt_ray.eval.splits import validation_source
    from gmt_ray.sweep.search import sampler_used

    wanted = config.resources
    groups = groups_of(config)
    per_trial = {"CPU": wanted.num_workers * wanted.cpus_per_worker + 0.01}
    if wanted.use_gpu:
        per_trial["GPU"] = wanted.num_workers * wanted.gpus_per_worker
    if wanted.accelerator_type:
        per_trial[f"accelerator_type:{wanted.accelerator_type}"] = wanted.num_workers * 0.001  # as Ray Train asks for it
    confirm = config.confirm.most_seeds
    trials = len(groups) * (config.search.num_samples + confirm)
    chosen_on = config.chosen_on()
    return {
        "groups": [g.name for g in groups],
        "trials": trials,
        "search_trials": len(groups) * config.search.num_samples,
        "confirm_trials": len(groups) * confirm if confirm else 0,
        "sampler": sampler_used(config.search),
        "space": {k: v.model_dump(exclude_none=True) for k, v in config.search.space.items()},
        # Where the search's validation problems come from (only the benchmark it chooses on).
        "chosen_on": {"metric": config.search.metric,
                      "validation": validation_source(chosen_on, config.eval) if chosen_on else "no benchmark: "
                      "the validation loss on held-out training data"},
        "verdicts_on": config.verdict_benchmark() if config.confirm.seeds else None,
        "per_trial": per_trial,
        "estimate": estimate(config, trials, lengths),
    }


def concurrency(per_trial: dict[str, float], cluster: dict[str, float], cap: int) -> int:
    """How many trials fit at once in ``cluster`` resources, at most ``cap``."""
    fits = [math.floor(cluster.get(k, 0) / v) for k, v in per_trial.items() if v > 0]
    return max(0, min([cap, *fits]))


def cluster_capacity(path) -> dict[str, float]:
    """The most resources a Ray cluster launcher file can bring up: the head node plus
    every worker type at its ``max_workers``.

    Raises:
        ValueError: the file is not a cluster launcher config with explicit resources.
    """
    from pathlib import Path

    import yaml

    with open(Path(path)) as file:  # a file, not its text: YAML's errors then name it
        cluster = yaml.safe_load(file)
    if not isinstance(cluster, dict):
        raise ValueError(f"{path}: expected a mapping (a Ray cluster launcher file), not {type(cluster).__name__}")
    node_types = cluster.get("available_node_types")
    if not isinstance(node_types, dict):
        raise ValueError(f"{path}: no available_node_types (not a Ray cluster launcher file)")
    head = cluster.get("head_node_type")
    total: dict[str, float] = {}
    for name, node in node_types.items():
        resources = node.get("resources")
        if not isinstance(resources, dict):
            raise ValueError(f"{path}: node type {name!r} needs explicit resources")
        count = 1 if name == head else int(node.get("max_workers", 0))
        for key, value in resources.items():
            total[key] = total.get(key, 0.0) + count * float(value)
    return total


def cluster_file_capacity(path) -> tuple[dict[str, float], str]:
    """The most resources a cluster file can bring up, and how it was read: a Ray cluster
    launcher file (``cluster.yaml``) at its ``max_workers``, or a KubeRay RayJob or RayCluster
    (``cluster/kuberay/``) at its worker groups' ``maxReplicas`` (``replicas`` without autoscaling).

    Raises:
        ValueError: neither kind of file, or one without explicit resources.
    """
    from pathlib import Path

    from gmt_ray.sweep.kuberay import kuberay_capacity, kuberay_cluster_spec

    with open(Path(path)) as file:  # a file, not its text: YAML's errors then name it
        documents = list(yaml.safe_load_all(file))
    found = kuberay_cluster_spec(documents)
    if found is None and len(documents) > 1:
        raise ValueError(f"{path}: none of its {len(documents)} documents is a KubeRay RayJob or RayCluster "
                         "(kind: RayJob, apiVersion: ray.io/v1), and a Ray cluster launcher file is one document")
    if found is None:
        try:
            return cluster_capacity(path), f"{path} at max_workers"
        except ValueError as error:
            raise ValueError(f"{error}; nor a KubeRay RayJob or RayCluster (kind: RayJob, apiVersion: ray.io/v1)") \
                from None
    kind, spec = found
    try:
        capacity, replicas = kuberay_capacity(spec)
    except ValueError as error:
        raise ValueError(f"{path}: {kind}: {error}") from None
    return capacity, f"{path} ({kind}) at {replicas}"


def dry_run(config: Experiment, *, cluster_file: str | None = None, address: str | None = None) -> tuple[str, list[str]]:
    """What ``--dry-run`` prints (the resolved config and the plan as JSON) and its warnings.

    Checks what can be checked here; data, models and files that only a cluster can reach
    (a hub, shared storage) are listed under ``not_checked`` instead of failing.

    Raises:
        gmt_ray.errors.UsageError: a problem found with the input.
    """
    import json
    import os

    import numpy as np

    from gmt_ray.config import confirm_seed_clash, to_yaml
    from gmt_ray.errors import UsageError
    from gmt_ray.eval.datasets import check_eval_data
    from gmt_ray.hub import hub_names
    from gmt_ray.preflight import preflight

    if clash := confirm_seed_clash(config):
        raise UsageError(f"invalid configuration\n{clash}")
    unchecked: list[str] = []

    lengths = None
    if hub_names(config) or config.train.init_from:
        unchecked.append("data, model and init_from are loaded at run time (hub or cluster storage)")
        unchecked += [f"missing here: {problem}" for problem in check_eval_data(config)]
    else:
        train = preflight(config, sweep=True).prepared.train
        lengths = np.diff(train.offsets) if hasattr(train, "offsets") else None  # DPO pairs: not packed
    plan = describe_plan(config, lengths)
    address = address or os.environ.get("RAY_ADDRESS")
    if cluster_file:
        try:
            cluster, where = cluster_file_capacity(cluster_file)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise UsageError(f"--cluster: {error}") from None
    else:
        from gmt_ray.cluster import live_local_cluster, local_cpus, ray_session

        running = None if address else live_local_cluster()  # the cluster a sweep would use
        if address in (None, "local") and running is None:
            cluster, where = {"CPU": float(local_cpus())}, "this machine (a local Ray)"
        else:
            import ray

            with ray_session(address or running):
                cluster = ray.cluster_resources()
            where = f"cluster at {address}" if address else f"the local cluster running at {running}"
    at_once = concurrency(plan["per_trial"], cluster, config.search.max_concurrent_trials)
    text = to_yaml(config) + "\n" + json.dumps(
        {**plan, "cluster": {where: cluster}, "concurrent_trials": at_once, **({"not_checked": unchecked} if unchecked else {})},
        indent=2)
    warnings = [f"one trial needs {plan['per_trial']}, more than {where} has"] if at_once == 0 else []
    if untested := no_test_scores(config):
        warnings.append(untested)
    return text, warnings


def no_test_scores(config: Experiment) -> str | None:
    """What a sweep without a confirmation stage does not give (said by --dry-run and the console):
    search trials are scored on validation problems only."""
    if config.confirm.seeds or not config.eval.benchmarks:
        return None
    needs = []  # what a confirmation stage would also need here (the config's own checks)
    if config.verdict_benchmark() is None:
        names = config.eval.benchmarks
        needs.append(f"confirm.benchmark={names[0] if len(names) == 1 else '<' + '|'.join(names) + '>'}")
    if config.search.scheduler == "asha":
        needs.append("search.scheduler=none")
    return (f"confirm.seeds is 0: trials are scored on validation problems only, so {config.eval.benchmarks} get no "
            "test score and methods no verdict; --set confirm.seeds=K" + "".join(f" --set {n}" for n in needs) +
            " retrains each chosen configuration with K fresh seeds on the test problems")
