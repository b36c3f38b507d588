"""Where a sweep's Optuna studies live: the journal beside Tune's state (safe on NFS), the
database ``search.storage`` names. (A sweep an older version began in SQLite is refused on
resume: tests/sweep/test_main.py.)"""

import subprocess
import sys
import textwrap

import optuna
import pytest

from gmt_ray.config import load_experiment
from gmt_ray.sweep.search import GroupedOptunaSearch
from gmt_ray.sweep.study_storage import JOURNAL_FILE, SQLITE_FILE, open_study_storage


def config(**overrides):
    base = {"name": "s", "search.methods": ["sft", "gmt"], "search.num_samples": 3,
            "search.space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}
    return load_experiment(None, {**base, **overrides})


def test_a_sweep_keeps_its_studies_in_a_journal_in_its_directory(tmp_path):
    storage = open_study_storage(config(), tmp_path)
    assert isinstance(storage, optuna.storages.JournalStorage)
    GroupedOptunaSearch(config(), storage=storage).suggest("a")
    assert (tmp_path / JOURNAL_FILE).stat().st_size > 0
    assert not (tmp_path / SQLITE_FILE).exists()


def test_search_storage_names_a_database_instead(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    storage = open_study_storage(config(**{"search.storage": url}), tmp_path / "sweep")
    assert isinstance(storage, optuna.storages.RDBStorage)
    GroupedOptunaSearch(config(**{"search.storage": url}), storage=storage).suggest("a")
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s/method=sft,mask_ratio=0.0",
                                                                          "s/method=gmt"]


_WRITER = textwrap.dedent("""
    import sys
    import optuna
    from pathlib import Path
    from gmt_ray.sweep.study_storage import journal_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="shared", storage=journal_storage(Path(sys.argv[1])), load_if_exists=True)
    for i in range(int(sys.argv[2])):
        trial = study.ask()
        study.tell(trial, float(sys.argv[3]) + i)
""")


@pytest.mark.integration
def test_writers_in_several_processes_share_one_journal_without_losing_a_trial(tmp_path):
    """Several processes write one study through the journal's lock at once: no trial is lost or
    numbered twice, and no lock is left behind. On a local disk appends are atomic even without
    a lock, so this cannot show the NFS safety itself (no NFS server runs here): that rests on
    Optuna's symbolic-link lock, which NFS makes atomic."""
    journal = tmp_path / JOURNAL_FILE
    optuna.create_study(study_name="shared", storage=open_study_storage(config(), tmp_path))
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(journal), "25", str(1000 * k)])
               for k in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    trials = optuna.load_study(study_name="shared", storage=open_study_storage(config(), tmp_path)).trials
    assert sorted(t.number for t in trials) == list(range(75))
    assert sorted(t.value for t in trials) == sorted(float(1000 * k + i) for k in range(3) for i in range(25))
    assert not (tmp_path / f"{JOURNAL_FILE}.lock").exists()
