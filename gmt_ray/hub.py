"""Whether the models and data sets an experiment names on the Hugging Face hub can be
loaded here: cached locally, or the hub answers (with a short timeout)."""

from __future__ import annotations

import os
from pathlib import Path

from gmt_ray.config import Experiment

__all__ = ["hub_problems", "hub_references"]

_TIMEOUT_S = 10.0


def hub_references(config: Experiment) -> list[tuple[str, str]]:
    """(``model`` | ``dataset``, name) of everything the experiment loads from the hub."""
    references = []
    name = config.model.name
    if name not in ("tiny", "smollm2") and not name.endswith(".gguf") and not Path(name).exists():
        references.append(("model", name))
    if config.data.source == "hub":
        references.append(("dataset", config.data.path))
    return references


def hub_problems(config: Experiment) -> list[str]:
    """One line per hub model or data set that can be neither found in the local cache nor
    reached on the hub (empty: everything can be loaded)."""
    return [problem for kind, name in hub_references(config) if (problem := _problem(kind, name))]


def _problem(kind: str, name: str) -> str | None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(name, repo_type=kind, local_files_only=True)
        return None  # in the local cache: no hub needed
    except (LocalEntryNotFoundError, ValueError, OSError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or (
            kind == "dataset" and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")):
        return f"{kind} {name!r} is not in the local cache and the hub is switched off (HF_HUB_OFFLINE)"
    try:
        info = HfApi().dataset_info if kind == "dataset" else HfApi().model_info
        info(name, timeout=_TIMEOUT_S)
        return None
    except RepositoryNotFoundError:
        return f"{kind} {name!r} does not exist on the hub (or needs a login: huggingface-cli login)"
    except Exception as error:  # requests' and httpx's connection errors, timeouts, proxies
        return f"{kind} {name!r}: the hub could not be reached ({type(error).__name__})"
