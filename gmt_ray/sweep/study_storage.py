"""Where a sweep's Optuna studies live: a journal file in the sweep's directory, safe on the
shared file systems a cluster's storage is (NFS, EFS, Lustre), or the database that
``search.storage`` names.

SQLite, the sweep's store before, relies on ``fcntl()`` locks that many NFS implementations
break; Optuna's journal appends operations to one file under a lock taken by creating a
symbolic link, which NFS (v2 and later) makes atomic. A sweep that an older version began with
the SQLite file (``optuna.db``) is not resumed by this one (``gmt_ray.sweep.check_sweep_name``).
"""

from __future__ import annotations

from pathlib import Path

import optuna

from gmt_ray.config import Experiment

__all__ = ["JOURNAL_FILE", "SQLITE_FILE", "journal_storage", "open_study_storage"]

JOURNAL_FILE = "optuna.journal"
SQLITE_FILE = "optuna.db"  # where older versions kept a sweep's studies


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
