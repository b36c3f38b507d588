"""Where a sweep's Optuna studies live: the journal beside Tune's state (safe on NFS), the
database ``search.storage`` names, and a SQLite file of an older sweep adopted on resume."""

import hashlib
import subprocess
import sys
import textwrap

import optuna
import pytest

from gmt_ray.cli import UsageError
from gmt_ray.config import load_experiment
from gmt_ray.sweep.search import GroupedOptunaSearch
from gmt_ray.sweep.study_storage import JOURNAL_FILE, SQLITE_FILE, adopt_sqlite_studies, open_study_storage

TrialState = optuna.trial.TrialState


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


def _sqlite_sweep(root):
    """Studies as a sweep of the SQLite days left them: a finished, a running and a failed trial."""
    root.mkdir(parents=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{root / SQLITE_FILE}")
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}), storage=storage)
    for trial_id in "abc":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"val_loss": 0.5})
    searcher.on_trial_complete("c", None, error=True)
    return searcher


def test_resume_adopts_the_studies_of_a_sqlite_sweep_and_leaves_the_file_as_it_was(tmp_path):
    root = tmp_path / "s"
    old = _sqlite_sweep(root)
    digest = hashlib.sha256((root / SQLITE_FILE).read_bytes()).hexdigest()

    assert adopt_sqlite_studies(config(**{"search.methods": ["gmt"]}), root) == 1
    assert hashlib.sha256((root / SQLITE_FILE).read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in root.iterdir()) == sorted([JOURNAL_FILE, SQLITE_FILE])  # no partial file or lock left
    resumed = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}),
                                  storage=open_study_storage(config(), root))
    before, after = old.studies[0].get_trials(), resumed.studies[0].get_trials()
    assert [(t.number, t.state, t.value, t.params) for t in after] == \
        [(t.number, t.state, t.value, t.params) for t in before]
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL]
    # The running trial, known by its number to the restored searcher, can still be told.
    resumed.owner, resumed.issued = old.owner, old.issued
    resumed.on_trial_complete("b", {"val_loss": 0.4})
    assert [t.value for t in resumed.studies[0].get_trials()][:2] == [0.5, 0.4]
    assert adopt_sqlite_studies(config(), root) == 0  # the journal exists: adopted once


def test_a_sqlite_study_that_cannot_be_read_is_refused_with_what_to_do(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / SQLITE_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(UsageError) as error:
        adopt_sqlite_studies(config(), root)
    message = str(error.value)
    assert str(root / SQLITE_FILE) in message and f"--set search.storage=sqlite:///{root / SQLITE_FILE}" in message
    assert sorted(p.name for p in root.iterdir()) == [SQLITE_FILE]  # nothing half-written


def test_nothing_is_adopted_with_search_storage_or_without_a_sqlite_file(tmp_path):
    root = tmp_path / "s"
    _sqlite_sweep(root)
    assert adopt_sqlite_studies(config(**{"search.storage": f"sqlite:///{root / SQLITE_FILE}"}), root) == 0
    assert adopt_sqlite_studies(config(), tmp_path / "other") == 0
    assert not (root / JOURNAL_FILE).exists()


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
