"""Every MLflow tag gmt-ray writes or reads, and the fixed values it gives them."""

from __future__ import annotations

__all__ = ["BEST_ALIAS", "EXPERIMENT_KIND", "SAVED_VIEW_TAG_PREFIX", "Tags"]

# The experiment kind MLflow's UI offers for model training ("Machine learning"; the other is
# "GenAI apps & agents"), and maps to its "Model training" workflow. See views.experiment_url.
EXPERIMENT_KIND = "custom_model_development"
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI's saved views: experiment tags (see views)
BEST_ALIAS = "best"  # the registry alias of each method's best trial: models:/<sweep>-<method>@best


class Tags:
    """Every MLflow tag gmt-ray writes or reads."""

    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this parent
    EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own, on the experiment: what it is for
    DATASET_CONTEXT = "mlflow.data.context"  # MLflow's own, on a dataset input: train, validation, eval
    MODEL_IS_EXTERNAL = "mlflow.model.isExternal"  # MLflow's own: a logged model whose files live elsewhere
    GIT_COMMIT = "mlflow.source.git.commit"
    ROLE = "gmt_ray.role"  # "sweep" (a parent run) or "trial"
    SWEEP = "gmt_ray.sweep"  # the sweep's name, on the parent and every trial
    TRIAL_ID = "gmt_ray.trial_id"  # Tune's trial id
    STAGE = "gmt_ray.stage"  # on a trial run: "search" (validation problems) or "confirm" (fresh seeds, test problems)
    CHECKPOINT = "gmt_ray.checkpoint"  # a finished trial's final checkpoint directory
    MODEL = "gmt_ray.model"  # a finished trial's exported model (Hugging Face directory)
    MODEL_ID = "gmt_ray.model_id"  # on a trial run: the id of its logged model (models:/<id>)
    METHOD = "gmt_ray.method"  # on logged and registered models: the trial's method
    OBJECTIVE = "gmt_ray.objective"  # "<metric>=<value>": written by the trial's last report
    EARLY_STOPPED = "gmt_ray.early_stopped"  # "step N": stopped by the scheduler
    SAMPLER_USED = "gmt_ray.sampler_used"  # on the parent: what really proposed the trials (search.sampler, honestly)
    BEST_TRIAL = "gmt_ray.best_trial"
    BEST_RUN_ID = "gmt_ray.best_run_id"
    TRACKING_LOST = "gmt_ray.tracking_lost"  # what the tracking server never took (see outage.TrackingUnavailable)
