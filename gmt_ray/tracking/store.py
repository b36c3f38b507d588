"""Where runs go: the tracking URI every process shares, its client, and writes that two
processes may make at once (``on_conflict``).

Every process gets the same absolute tracking URI: Tune changes each trial's working
directory, and a relative ``sqlite:///mlflow.db`` would scatter runs across trial dirs.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["artifact_root", "client", "flatten", "git_commit", "is_conflict", "library_versions", "local_store_path",
           "log_params", "on_conflict", "resolve_tracking_uri", "store_problem"]

T = TypeVar("T")


def resolve_tracking_uri(uri: str | None, base: Path | None = None) -> str:
    """An absolute tracking URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store
    in the working directory."""
    base = (base or Path.cwd()).resolve()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:  # a plain directory or file path
        return str((base / uri).resolve())
    return uri


# How long a check waits on a tracking server before it says that none answers (MLflow's own
# client retries for minutes before it gives up).
SERVER_PROBE_TIMEOUT_S = 5.0


def store_problem(tracking_uri: str, *, timeout_s: float = SERVER_PROBE_TIMEOUT_S) -> str | None:
    """Why runs cannot go to (or come from) the store at an absolute ``tracking_uri``, found
    within ``timeout_s``; None where nothing is wrong that can be seen without using it: a
    file store that MLflow 3 refuses, a SQLite file whose directory is not one, a tracking
    server that does not answer (any HTTP answer counts: a server that wants a password
    answers too). Other stores (a database URI, Databricks) are not checked."""
    from urllib.error import HTTPError, URLError
    from urllib.parse import urlparse
    from urllib.request import urlopen

    scheme = urlparse(tracking_uri).scheme
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1"):
            return None
        return ("MLflow 3 refuses its file store (it is in maintenance mode; MLFLOW_ALLOW_FILE_STORE=true allows "
                "it): use sqlite:///PATH/mlflow.db, or a tracking server's http(s):// address")
    if scheme == "sqlite":
        directory = local_store_path(tracking_uri).parent
        existing = next(p for p in (directory, *directory.parents) if p.exists())
        if not existing.is_dir():
            return f"{existing} is not a directory"
        return None
    if scheme in ("http", "https"):
        try:
            with urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
                return None
        except HTTPError:
            return None
        except (URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            return f"no MLflow server answers there within {timeout_s:g} s ({reason})"
    return None


def local_store_path(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store (None: any other store)."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store, as an absolute file URI (None: server's default)."""
    store = local_store_path(tracking_uri)
    return store.with_name("mlartifacts").as_uri() if store is not None else None


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# What SQL stores answer when two writers insert the same unique row (a dataset, an
# experiment, a registered model): SQLite's and PostgreSQL's own words, as MLflow passes
# them on (directly, or through a tracking server's error message).
_CONFLICT_WORDS = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "IntegrityError",
                   "UniqueViolation", "already exists")


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` says another writer created the same row first."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException) and error.error_code == "RESOURCE_ALREADY_EXISTS":
        return True
    text = f"{error} {error.__cause__ or ''}"
    return any(words in text for words in _CONFLICT_WORDS)


def on_conflict(attempt: Callable[[], T], *, tries: int = 6) -> T:
    """``attempt()``, again (after a short random pause) when it lost an insert race to another
    writer: a get-or-create then finds the other's row. Other errors are raised at once.

    MLflow's SQL store checks whether a dataset (or experiment, registered model) exists and
    then inserts it, in two steps: two trials starting at once both see none and one insert
    fails on the unique key (seen: ``UNIQUE constraint failed: datasets.experiment_id, ...``).
    """
    for remaining in range(tries - 1, -1, -1):
        try:
            return attempt()
        except Exception as error:
            if remaining == 0 or not is_conflict(error):
                raise
            time.sleep(random.uniform(0.05, 0.3))
    raise AssertionError("unreachable")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (an empty mapping stays a value)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit() -> str:
    """The commit of the gmt-ray checkout this runs from ("unknown" outside one)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """``version.<package>`` of the libraries a result depends on."""
    import importlib.metadata as metadata

    versions = {}
    for package in ("ray", "torch", "transformers", "optuna", "mlflow", "gmt-ray"):
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"version.{package}"] = "not installed"
    return versions


def log_params(mlflow_client, run_id: str, params: Mapping[str, Any]) -> None:
    """Params of a run, in batches of MLflow's maximum (100), values cut to its 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start : start + 100])
