"""Where a sweep's Optuna studies live: a journal file in the sweep's directory, safe on the
shared file systems a cluster's storage is (NFS, EFS, Lustre), or the database that
``search.storage`` names.

SQLite, the sweep's store before, relies on ``fcntl()`` locks that many NFS implementations
break; Optuna's journal appends operations to one file under a lock taken by creating a
symbolic link, which NFS (v2 and later) makes atomic. A sweep that began with the SQLite file
(``optuna.db``) is moved into the journal when it is resumed; the SQLite file stays as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from gmt_ray.config import Experiment

__all__ = ["JOURNAL_FILE", "SQLITE_FILE", "adopt_sqlite_studies", "journal_storage", "open_study_storage"]

JOURNAL_FILE = "optuna.journal"
SQLITE_FILE = "optuna.db"  # where sweeps kept their studies before the journal


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's journal storage in ``path``, locked with the symbolic-link lock (NFSv2 and later;
    a lock left by a killed writer is taken over after 30 s without a write to the journal)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    backend = JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path)))
    return optuna.storages.JournalStorage(backend)


def open_study_storage(config: Experiment, root: Path) -> optuna.storages.BaseStorage:
    """The storage of the sweep's studies: ``search.storage`` (an RDB URL) when set, else the
    journal in the sweep's directory ``root``."""
    if config.search.storage:
        return optuna.storages.RDBStorage(config.search.storage)
    return journal_storage(root / JOURNAL_FILE)


def adopt_sqlite_studies(config: Experiment, root: Path) -> int:
    """Moves the studies of a sweep begun with the SQLite file into its journal, before a resume.

    Every study of ``root/optuna.db`` is copied whole (trials, their numbers and states, the
    study's attributes) into a new journal, written beside it and renamed into place only once
    complete; the SQLite file is left unchanged. Nothing happens when ``search.storage`` is set,
    when the journal exists already, or when there is no SQLite file.

    Returns:
        How many studies were copied.

    Raises:
        gmt_ray.cli.UsageError: the SQLite file cannot be read, naming it and what to do.
    """
    from gmt_ray.cli import UsageError

    sqlite, journal = root / SQLITE_FILE, root / JOURNAL_FILE
    if config.search.storage or journal.exists() or not sqlite.exists():
        return 0
    url = f"sqlite:///{sqlite}"
    partial = journal.with_name(f"{JOURNAL_FILE}.partial-{os.getpid()}")
    try:
        summaries = optuna.get_all_study_summaries(url, include_best_trial=False)
        names = [summary.study_name for summary in summaries]
        target = journal_storage(partial)
        for name in names:
            optuna.copy_study(from_study_name=name, from_storage=url, to_storage=target)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy, Optuna's schema checks, a damaged file
        partial.unlink(missing_ok=True)
        Path(f"{partial}.lock").unlink(missing_ok=True)
        raise UsageError(
            f"--resume: cannot read this sweep's Optuna studies from {sqlite} "
            f"({type(error).__name__}: {error}). Sweeps now keep them in {journal.name}, beside it, which is "
            f"safe on shared file systems; to resume with the SQLite file as it is, add "
            f"--set search.storage={url}") from None
    partial.replace(journal)
    return len(names)
