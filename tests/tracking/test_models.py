"""Logged models and the registry (gmt_ray.tracking.models) in a real SQLite store."""

import pytest

from gmt_ray import tracking
from gmt_ray.tracking import Tags
from tests.helpers import model_dir


def test_every_finished_trial_has_an_external_logged_model_of_its_run(sweep_with_models):
    _, runs, run_ids, tmp_path = sweep_with_models
    run = runs.client.get_run(run_ids["b"])
    model_id = run.data.tags[Tags.MODEL_ID]
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    model = runs.client.get_logged_model(model_id)
    assert model.source_run_id == run_ids["b"] and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.tags[Tags.MODEL] == str(tmp_path / "models" / "b") and model.tags[Tags.MODEL_IS_EXTERNAL] == "true"
    assert model.name == "ui-sweep-gmt-b" and model.params["mask.method"] == "gmt"
    # Only the MLmodel stub went to the artifact store, not the weights.
    stored = [a.path for a in runs.client.list_logged_model_artifacts(model_id)]
    assert stored == ["MLmodel"]
    assert runs.log_model(run_ids["b"], "/elsewhere") == model_id  # once per run


def test_the_best_trial_of_each_method_is_registered_with_an_alias(sweep_with_models):
    uri, runs, run_ids, tmp_path = sweep_with_models
    assert runs.register_best("val_loss", "min") == {"gmt": "models:/ui-sweep-gmt@best",
                                                     "sft": "models:/ui-sweep-sft@best"}
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-gmt@best") == str(tmp_path / "models" / "b")
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-sft@best") == str(tmp_path / "models" / "c")
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-sft/1") == str(tmp_path / "models" / "c")
    model_id = runs.client.get_run(run_ids["c"]).data.tags[Tags.MODEL_ID]
    assert tracking.resolve_model_uri(uri, f"models:/{model_id}") == str(tmp_path / "models" / "c")
    # Registering again adds no version; a better trial moves the alias to a new version.
    runs.register_best("val_loss", "min")
    assert len(runs.client.search_model_versions("name = 'ui-sweep-gmt'")) == 1
    better = runs.open_trial("e", "gmt lr=2.0e-03 s1", {"mask.method": "gmt"})
    runs.log_step(better, {"val_loss": 0.2}, step=6)
    runs.finish_trial(better, objective="val_loss", value=0.2, checkpoint=None,
                      model=model_dir(tmp_path / "models" / "e"))
    runs.register_best("val_loss", "min")
    assert str(runs.client.get_model_version_by_alias("ui-sweep-gmt", "best").version) == "2"
    assert tracking.resolve_init_from(uri, "models:/ui-sweep-gmt@best") == str(tmp_path / "models" / "e")


def finished_trial(runs, tmp_path, trial_id: str, params: dict, loss: float, stage: str = "search") -> None:
    """A trial run finished with its val_loss and an exported model in tmp_path/models/<trial_id>."""
    run_id = runs.open_trial(trial_id, trial_id, params, stage=stage)
    runs.log_step(run_id, {"val_loss": loss}, step=6)
    runs.finish_trial(run_id, objective="val_loss", value=loss, checkpoint=f"/ckpt/{trial_id}",
                      model=model_dir(tmp_path / "models" / trial_id))


def test_confirmation_runs_and_sparse_update_trials_do_not_take_a_method_s_best(sweep_with_models):
    uri, runs, run_ids, tmp_path = sweep_with_models
    for trial_id, params, stage in [("f", {"mask.method": "gmt", "mask.apply_to": "update"}, "search"),
                                    ("g", {"mask.method": "gmt"}, "confirm")]:
        finished_trial(runs, tmp_path, trial_id, params, 0.01, stage=stage)  # better than any search trial of gmt
    assert runs.register_best("val_loss", "min") == {"gmt": "models:/ui-sweep-gmt@best",
                                                     "gmt-update": "models:/ui-sweep-gmt-update@best",
                                                     "sft": "models:/ui-sweep-sft@best"}
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-gmt@best") == str(tmp_path / "models" / "b")
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-gmt-update@best") == str(tmp_path / "models" / "f")
    assert tracking.resolve_init_from(uri, "mlflow:best:ui-sweep:gmt") == str(tmp_path / "models" / "b")
    assert tracking.resolve_init_from(uri, "mlflow:best:ui-sweep:gmt-update") == str(tmp_path / "models" / "f")


def test_labels_take_the_sweep_s_own_settings_and_a_bare_method_finds_its_variants(tmp_path):
    from gmt_ray.tracking import SweepRuns

    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    # The sparse update set in the experiment file: the trials' own params do not say it.
    runs = SweepRuns.start(uri, "exp", "update-sweep", {"mask": {"method": "gmt", "apply_to": "update"}},
                           "name: update-sweep\n")
    trials = [("a", {"mask.method": "gmt"}, 0.5), ("b", {"mask.method": "drop", "mask.drop_strategy": "trivial"}, 0.4),
              ("c", {"mask.method": "drop", "mask.drop_strategy": "random"}, 0.3)]
    for trial_id, params, loss in trials:
        finished_trial(runs, tmp_path, trial_id, params, loss)
    assert runs.register_best("val_loss", "min") == {"drop-random": "models:/update-sweep-drop-random@best",
                                                     "drop-trivial": "models:/update-sweep-drop-trivial@best",
                                                     "gmt-update": "models:/update-sweep-gmt-update@best"}
    assert tracking.resolve_init_from(uri, "mlflow:best:update-sweep:gmt-update") == str(tmp_path / "models" / "a")
    # No trial is labelled plain gmt or drop: the bare method finds its trials (drop: the best strategy).
    assert tracking.resolve_init_from(uri, "mlflow:best:update-sweep:gmt") == str(tmp_path / "models" / "a")
    assert tracking.resolve_init_from(uri, "mlflow:best:update-sweep:drop") == str(tmp_path / "models" / "c")
    assert tracking.resolve_init_from(uri, "mlflow:best:update-sweep:drop-trivial") == str(tmp_path / "models" / "b")


def test_an_experiment_with_a_registered_model_gets_its_directory(sweep_with_models):
    from gmt_ray.config import load_experiment

    uri, runs, _, tmp_path = sweep_with_models
    runs.register_best("val_loss", "min")
    config = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=models:/ui-sweep-sft@best"])
    assert tracking.init_from_by_method(config) == {"gmt": str(tmp_path / "models" / "c")}


@pytest.mark.parametrize("uri, message", [
    ("models:/nope@best", "no such registered model version"),
    ("models:/ui-sweep-gmt@worst", "no such registered model version"),
    ("models:/m-0000", "no logged model 'm-0000'"),
])
def test_unknown_models_are_named(sweep_with_models, uri, message):
    store, runs, _, _ = sweep_with_models
    runs.register_best("val_loss", "min")
    with pytest.raises(ValueError, match=message):
        tracking.resolve_model_uri(store, uri)
