"""Can this machine get the experiment's model and data set from the Hugging Face hub?

Checked before anything starts (``gmt_ray.preflight.check_hub``, called by ``preflight``), so
that a machine without hub access ends with one message instead of a traceback from
transformers or datasets minutes later. Nothing is downloaded: a model or data set in the
local cache is fine (both libraries fall back to it offline); otherwise one metadata
request per name, bounded by ``HUB_TIMEOUT_S``, tells whether the hub answers.
"""

from __future__ import annotations

from pathlib import Path

from gmt_ray.config import Experiment
from gmt_ray.models import BUILT_IN_MODELS

__all__ = ["HUB_TIMEOUT_S", "hub_names", "hub_problems"]

# One metadata request (model_info / dataset_info); a missing network fails at once.
HUB_TIMEOUT_S = 10.0


def hub_names(config: Experiment) -> dict[str, str]:
    """``{"model.name": repo id, "data.path": dataset id}`` for what would come from the hub."""
    names = {}
    model = config.model.name
    if model not in BUILT_IN_MODELS and not model.endswith(".gguf") and not _looks_local(model):
        names["model.name"] = model
    if config.data.source == "hub" and config.data.path and not _looks_local(config.data.path):
        names["data.path"] = config.data.path
    return names


def hub_problems(config: Experiment) -> list[str]:
    """What the run could not load from the hub, as messages (empty: all reachable or cached)."""
    problems, unreachable = [], []
    hub_down: str | None = None  # why the first request failed: no second wait on a dead hub
    for key, name in hub_names(config).items():
        kind = "model" if key == "model.name" else "dataset"
        try:
            if _cached(kind, name):
                continue
        except ValueError as error:  # not a valid repo id (HFValidationError)
            problems.append(f"{key}={name!r}: neither a local path nor a hub {kind} id ({error})")
            continue
        offline = _offline(kind)
        if offline:
            unreachable.append((key, name, offline))
            continue
        if hub_down is not None:
            unreachable.append((key, name, hub_down))
            continue
        answered, reason = _ask_hub(kind, name)
        if answered:
            if reason:
                problems.append(f"{key}={name!r}: {reason}")
            continue
        hub_down = reason
        unreachable.append((key, name, reason))
    if unreachable:
        problems.insert(0, _unreachable_message(unreachable))
    return problems


def _looks_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith(("/", "./", "../", "~"))


def _cached(kind: str, name: str) -> bool:
    """In the local cache, so that transformers / datasets load it without the hub."""
    if kind == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    # datasets keeps a prepared copy of each hub dataset it loaded and falls back to it
    # (its CachedDatasetModuleFactory) when the hub cannot be reached.
    try:
        from datasets.load import CachedDatasetModuleFactory

        CachedDatasetModuleFactory(name).get_module()
        return True
    except (ImportError, FileNotFoundError, AssertionError):
        return False


def _offline(kind: str) -> str | None:
    """Why the library will not ask the hub (its offline setting), or None."""
    if kind == "dataset":
        import datasets.config

        offline = datasets.config.HF_HUB_OFFLINE
    else:
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
    return "offline mode is on: HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE" if offline else None


def _ask_hub(kind: str, name: str) -> tuple[bool, str]:
    """(whether the hub answered, and then what is wrong with ``name`` or "" / else why not)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    api = HfApi()
    try:
        if kind == "model":
            api.model_info(name, timeout=HUB_TIMEOUT_S)
        else:
            api.dataset_info(name, timeout=HUB_TIMEOUT_S)
        return True, ""
    except GatedRepoError:
        return True, ""  # it exists; loading it needs access (HF_TOKEN), which the library will say
    except RepositoryNotFoundError:
        return True, f"no such {kind} on the hub (a private one needs HF_TOKEN)"
    except HFValidationError as error:
        return True, f"neither a local path nor a hub {kind} id ({error})"
    except Exception as error:  # noqa: BLE001 - no network, DNS, timeout, proxy, 5xx: the hub did not answer
        text = str(error).splitlines()[0] if str(error) else ""
        return False, f"{type(error).__name__}: {text}"[:200]


def _unreachable_message(unreachable: list[tuple[str, str, str]]) -> str:
    from huggingface_hub import constants

    names = " and ".join(f"{key}={name!r}" for key, name, _ in unreachable)
    reasons = "; ".join(dict.fromkeys(reason for _, _, reason in unreachable))
    return (
        f"{names} {'come' if len(unreachable) > 1 else 'comes'} from the Hugging Face hub ({constants.ENDPOINT}), "
        f"which could not be reached ({reasons}), and {'are' if len(unreachable) > 1 else 'is'} not in the local "
        "cache. Run on a machine with hub access, point model.name / data.path at local copies (a directory saved "
        "with save_pretrained or a .gguf file; data.source: file with a .jsonl/.parquet/.csv file), or rehearse "
        "the run offline with --rehearse"
    )
