"""The sweep: Ray Tune + Optuna over TorchTrainer trials, logged to MLflow.

From a shell: ``python -m gmt_ray.sweep EXPERIMENT.yaml`` (or ``gmt-sweep``). From Python::

    import gmt_ray.sweep

    result = gmt_ray.sweep.run("experiments/quickstart.yaml", overrides=["search.num_samples=1"])
    print(result.best)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run"]


def run(experiment, overrides: dict[str, Any] | list[str] | None = None, *, resume: bool = False,
        address: str | None = None, console=None, verbose: bool = False):
    """Runs (or resumes) a sweep and returns its ``SweepResult`` (a row per trial, the best).

    Everything is checked before anything starts; Ray is started for the sweep (or the
    running one used) and the process is left as it was found: no Ray it started, no
    signal handler, no environment variable.

    Args:
        experiment: an experiment file, or an ``Experiment``.
        overrides: ``{"train.lr": 3e-4}`` or ``["train.lr=3e-4"]``, applied to a file.
        resume: continue the interrupted sweep of the same name.
        address: a Ray cluster (default: RAY_ADDRESS, else the running local cluster Ray's
            bootstrap file names, else a fresh local Ray; ``local``: a fresh local Ray).
        console: a ``gmt_ray.sweep.console.SweepConsole`` to show progress on (None: silent).

    Raises:
        gmt_ray.errors.UsageError: bad input (config, data, an existing sweep without ``resume``), a
            model or data set on a hub that cannot be reached, a cluster that cannot be reached.
    """
    from gmt_ray.cluster import ray_session
    from gmt_ray.config import (
        ConfigError,
        Experiment,
        confirm_seed_clash,
        load_experiment,
        parse_overrides,
        with_overrides,
    )
    from gmt_ray.errors import UsageError
    from gmt_ray.preflight import preflight
    from gmt_ray.sweep.driver import run_sweep

    try:
        if not isinstance(experiment, Experiment):
            experiment = load_experiment(Path(experiment), overrides)
        elif overrides:
            experiment = with_overrides(experiment, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    except ConfigError as error:
        raise UsageError(f"invalid configuration\n{error}") from None
    if clash := confirm_seed_clash(experiment):
        raise UsageError(f"invalid configuration\n{clash}")
    check_sweep_name(experiment, resume=resume)
    checked = preflight(experiment, sweep=True)
    with ray_session(address, verbose=verbose, say=console.note if console is not None else None):
        return run_sweep(checked.config, checked.prepared, resume=resume, console=console,
                         init_from=checked.init_from)


def check_sweep_name(config, *, resume: bool) -> None:
    """A new sweep needs a new name; ``resume`` needs an interrupted sweep of that name, begun
    with the same trials in mind (``FIXED_ON_RESUME``: model, data, mask, train, search, confirm
    and eval as they were).

    Raises:
        gmt_ray.errors.UsageError: naming the sweep, its directory and, for a changed config, each
            setting that differs.
    """
    import json

    from gmt_ray.errors import UsageError
    from gmt_ray.sweep.driver import fixed_settings, sweep_paths

    paths = sweep_paths(config)
    if resume and not paths.state.exists():
        raise UsageError(f"--resume: no sweep named {config.name!r} at {paths.root}")
    if not resume and paths.root.exists():
        raise UsageError(f"a sweep named {config.name!r} already exists at {paths.root}: add --resume to continue "
                         "it, or give this one another name with --set name=...")
    if not resume:
        return
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--resume: cannot read {paths.state} ({error}); the sweep cannot be resumed") from None
    if not isinstance(state, dict):
        raise UsageError(f"--resume: {paths.state} holds a JSON {type(state).__name__}, not a sweep's state (an "
                         "object); the sweep cannot be resumed")
    recorded = state.get("settings")
    if recorded is None:
        # Older versions did not record the sweep's settings, kept Optuna's studies in SQLite
        # (optuna.db) and saved a searcher without the confirmation stage: resuming one with this
        # version could repeat or skip trials without a word.
        raise UsageError(f"--resume: the sweep at {paths.root} was begun by an older gmt-ray, which records "
                         "neither its settings nor its studies in the form this version resumes; resume it "
                         "with the version that began it, or start a new sweep with --set name=...")
    now = fixed_settings(config)
    changed = [f"{key}: {was!r} -> {new!r}" for key, was, new in _differences(recorded, now)]
    if changed:
        raise UsageError(f"--resume: sweep {config.name!r} was begun with other settings, and its trials would "
                         "answer two questions under one name:\n  " + "\n  ".join(changed) +
                         "\nresume with the settings it began with, or start a new sweep with --set name=...")


def _differences(was: dict, now: dict, prefix: str = ""):
    """``(dotted key, old, new)`` for every leaf that differs between two nested dicts."""
    for key in sorted(set(was) | set(now)):
        old, new = was.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            yield f"{prefix}{key}", old, new
