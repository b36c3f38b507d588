"""A sweep's runs: the parent run, and one nested child run per trial."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gmt_ray.tracking import models, views
from gmt_ray.tracking.outage import DEFAULT_RETRY_WINDOW_S, OutageWriter, TrackingUnavailable, log_batch_once
from gmt_ray.tracking.store import (
    artifact_root,
    client,
    flatten,
    git_commit,
    library_versions,
    log_params,
    on_conflict,
)
from gmt_ray.tracking.tags import BEST_ALIAS, EXPERIMENT_KIND, Tags

__all__ = ["SweepRuns"]


class SweepRuns:
    """A sweep's MLflow runs: the parent, and one nested child run per trial.

    Cheap to pickle (a URI, a run id, the retry window): Tune ships it to trial drivers and
    callbacks, each of which opens its own client. Step metrics and evaluation rows go
    through an ``OutageWriter`` (``notify``, ``retry_window_s`` and ``lost`` are its own).
    Safe to use from several threads.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, retry_window_s: float = DEFAULT_RETRY_WINDOW_S):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self._client = None
        self.writer = OutageWriter(lambda: self.client, tracking_uri, retry_window_s)

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id,
                "retry_window_s": self.retry_window_s}

    def __setstate__(self, state):
        self.__init__(state["tracking_uri"], state["parent_run_id"],
                      state.get("retry_window_s", DEFAULT_RETRY_WINDOW_S))

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    @property
    def retry_window_s(self) -> float:
        return self.writer.retry_window_s

    @retry_window_s.setter
    def retry_window_s(self, seconds: float) -> None:
        self.writer.retry_window_s = seconds

    @property
    def notify(self) -> Callable[..., None] | None:
        return self.writer.notify

    @notify.setter
    def notify(self, listener: Callable[..., None] | None) -> None:
        self.writer.notify = listener

    def lost(self, run_id: str | None = None) -> int:
        """How many points the server never took (of one run, or of all), in this process."""
        return self.writer.lost(run_id)

    # ------------------------------------------------------------------ the parent run

    @classmethod
    def start(cls, tracking_uri: str, experiment_name: str, sweep_name: str, config: Mapping[str, Any],
              config_yaml: str) -> SweepRuns:
        """Creates the sweep's parent run with the resolved config as params and artifact (the
        experiment too, where it is new: two sweeps creating it at once both find it)."""
        mlflow_client = client(tracking_uri)

        def find_or_create() -> str:
            experiment = mlflow_client.get_experiment_by_name(experiment_name)
            if experiment is not None:
                return experiment.experiment_id
            return mlflow_client.create_experiment(experiment_name, artifact_location=artifact_root(tracking_uri))

        experiment_id = on_conflict(find_or_create)
        # A training experiment, not a GenAI app's: MLflow 3 labels and files it by this tag.
        on_conflict(lambda: mlflow_client.set_experiment_tag(experiment_id, Tags.EXPERIMENT_KIND, EXPERIMENT_KIND))
        run = mlflow_client.create_run(
            experiment_id, run_name=sweep_name,
            tags={Tags.SWEEP: sweep_name, Tags.ROLE: "sweep", Tags.GIT_COMMIT: git_commit(), **library_versions()},
        )
        runs = cls(tracking_uri, run.info.run_id)
        log_params(mlflow_client, runs.parent_run_id, flatten(config))
        mlflow_client.log_text(runs.parent_run_id, config_yaml, "config.yaml")
        return runs

    @classmethod
    def reopen(cls, tracking_uri: str, parent_run_id: str) -> SweepRuns:
        """The parent run of an interrupted sweep, RUNNING again."""
        runs = cls(tracking_uri, parent_run_id)
        runs.client.update_run(parent_run_id, status="RUNNING")
        return runs

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.parent_run_id).info.experiment_id

    @property
    def sweep(self) -> str:
        """The sweep's name."""
        return self.client.get_run(self.parent_run_id).data.tags.get(Tags.SWEEP, "sweep")

    def save_comparison_view(self, metric: str, mode: str, params: Iterable[str]) -> str:
        """The sweep's saved view in MLflow's UI (``views.comparison_view``); returns its id."""
        view_id, value = views.comparison_view(self.sweep, metric, mode, params)
        on_conflict(lambda: self.client.set_experiment_tag(self.experiment_id, views.view_tag(view_id), value))
        return view_id

    def finish(self, *, interrupted: bool, metric: str, best: Mapping[str, Any] | None) -> None:
        """Closes every trial still running and the parent, recording the best trial."""
        self.close_running(status="KILLED")
        if best is not None:
            self.client.log_metric(self.parent_run_id, f"best_{metric}", best["objective"])
            self.client.set_tag(self.parent_run_id, Tags.BEST_TRIAL, best["trial"])
            self.client.set_tag(self.parent_run_id, Tags.BEST_RUN_ID, best.get("run_id") or "")
        self.client.set_terminated(self.parent_run_id, status="KILLED" if interrupted else "FINISHED")

    # ------------------------------------------------------------------ trial runs

    def trials(self, where: str = "") -> list:
        """The sweep's trial runs (active ones), optionally filtered further."""
        condition = f"tags.`{Tags.PARENT}` = '{self.parent_run_id}'" + (f" and {where}" if where else "")
        return self.client.search_runs([self.experiment_id], filter_string=condition, max_results=5000)

    def find_trial(self, trial_id: str):
        """The run already logged for this trial, or None."""
        found = self.trials(f"tags.`{Tags.TRIAL_ID}` = '{trial_id}'")
        return found[0] if found else None

    def open_trial(self, trial_id: str, name: str, params: Mapping[str, Any], datasets: Iterable = (),
                   stage: str = "search") -> str:
        """The run of a trial, RUNNING: reused if this trial already has one (a restarted trial).

        Args:
            datasets: what it trains, validates and is evaluated on (``gmt_ray.data.catalog.DatasetRef``),
                logged as the new run's dataset inputs.
            stage: ``search`` or ``confirm`` (the ``gmt_ray.stage`` tag).
        """
        existing = self.find_trial(trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            # The first attempt may have died between creating the run and logging what it is;
            # a parameter once logged cannot change, so only the missing ones are written.
            missing = {key: value for key, value in params.items() if key not in existing.data.params}
            log_params(self.client, run_id, missing)
            if not self.client.get_run(run_id).inputs.dataset_inputs:
                self.log_datasets(run_id, datasets)
            return run_id
        parent = self.client.get_run(self.parent_run_id)
        run = self.client.create_run(
            parent.info.experiment_id, run_name=name,
            tags={Tags.PARENT: self.parent_run_id, Tags.TRIAL_ID: trial_id, Tags.ROLE: "trial", Tags.STAGE: stage,
                  Tags.SWEEP: parent.data.tags.get(Tags.SWEEP, "")},
        )
        log_params(self.client, run.info.run_id, params)
        self.log_datasets(run.info.run_id, datasets)
        return run.info.run_id

    def log_datasets(self, run_id: str, datasets: Iterable) -> None:
        """Dataset inputs of a run (the runs table's Dataset column): name, digest, source and
        size of each ``DatasetRef``, with its context (train, validation, eval) as MLflow's tag.

        A dataset is one row of its experiment, created by the first run that logs it: runs
        starting at once may race to create it, and the loser links the winner's (``on_conflict``).
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for ref in datasets:
            schema = {"mlflow_colspec": [{"type": "string", "name": column} for column in ref.columns]}
            dataset = Dataset(name=ref.name, digest=ref.digest, source_type=ref.source_type,
                              source=json.dumps(ref.source), schema=json.dumps(schema) if ref.columns else None,
                              profile=json.dumps({"num_rows": ref.rows, "split": ref.split}))
            inputs.append(DatasetInput(dataset, tags=[InputTag(Tags.DATASET_CONTEXT, ref.context)]))
        if inputs:
            on_conflict(lambda: self.client.log_inputs(run_id, datasets=inputs))

    def log_step(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """One report's metrics at ``step``, retried through an outage (``outage``).

        Raises:
            TrackingUnavailable: the server did not take them within the retry window.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # once: every retry resends the same points, which the server keeps once
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics a batch
            chunk = batch[start : start + 1000]
            self.writer.write(run_id, f"step {step}", len(chunk),
                              lambda chunk=chunk: log_batch_once(self.client, self.tracking_uri, run_id, chunk))

    def last_logged_step(self, run_id: str, metric: str = "loss") -> int:
        """The highest step of ``metric`` already in the run (0: none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, metric)), default=0)

    def log_eval_rows(self, run_id: str, directory: str | Path) -> list[str]:
        """The per-sample evaluation rows in ``directory/eval/*.jsonl`` as artifacts of the
        run: the JSONL itself and an MLflow table of it for the UI's artifact view.

        Each upload is retried through an outage and replaces what an earlier attempt left
        (a retried table is not appended twice). Inside one attempt MLflow's own HTTP retries
        apply (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).

        Raises:
            TrackingUnavailable: some file did not reach the server within the retry window
                (every file is still tried; the error counts the rows of those that did not).
        """
        logged, failures = [], []
        for path in sorted((Path(directory) / "eval").glob("*.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            try:
                self.writer.write(run_id, f"eval/{path.name}", len(rows),
                                  lambda path=path: self.client.log_artifact(run_id, str(path), artifact_path="eval"))
                if rows:
                    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
                    self.writer.write(run_id, f"eval/{path.stem}.table.json", len(rows),
                                      lambda columns=columns, path=path:
                                      self._log_table(run_id, columns, f"eval/{path.stem}.table.json"))
            except TrackingUnavailable as e:
                failures.append(e)
                continue
            logged.append(f"eval/{path.name}")
        if failures:
            raise TrackingUnavailable(run_id, ", ".join(e.what for e in failures), sum(e.points for e in failures),
                                      max(e.seconds for e in failures), failures[-1].error)
        return logged

    def _log_table(self, run_id: str, columns: dict[str, list], artifact_file: str) -> None:
        """``MlflowClient.log_table`` that replaces the table rather than appending to one
        already there (a retried or repeated upload stays one copy)."""
        import pandas as pd
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            # The format log_table writes and the UI's table view reads.
            pd.DataFrame(columns).to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=directory or None)
        listed = json.loads(self.client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": artifact_file, "type": "table"} not in listed:
            listed.append({"path": artifact_file, "type": "table"})
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(listed))

    def finish_trial(self, run_id: str, *, objective: str, value: float | None, checkpoint: str | None,
                     model: str | None = None, method: str | None = None) -> None:
        """Records the trial's objective, its final checkpoint and exported model (as a logged
        model of the run, see ``log_model``; ``method``: its label); FINISHED."""
        self.client.set_tag(run_id, Tags.OBJECTIVE, f"{objective}={value}")
        if checkpoint is not None:
            self.client.set_tag(run_id, Tags.CHECKPOINT, checkpoint)
        if model is not None:
            self.client.set_tag(run_id, Tags.MODEL, model)
            self.log_model(run_id, model, method=method, objective=objective, value=value)
        self.client.set_terminated(run_id, status="FINISHED")

    def log_model(self, run_id: str, directory: str, *, method: str | None = None, objective: str | None = None,
                  value: float | None = None) -> str:
        """The trial's exported model as an external logged model of its run (``models.log_model``)."""
        return models.log_model(self.client, run_id, directory, method=method, objective=objective, value=value)

    def register_best(self, metric: str, mode: str, alias: str = BEST_ALIAS) -> dict[str, str]:
        """Each method's best finished trial in the model registry (``models.register_best``)."""
        return models.register_best(self.client, self.tracking_uri, self.sweep,
                                    self.trials("attributes.status = 'FINISHED'"), metric, mode, alias,
                                    base=self.client.get_run(self.parent_run_id).data.params)

    def fail_trial(self, run_id: str) -> None:
        """FAILED, unless the scheduler stopped it (the early-stop record came first)."""
        if Tags.EARLY_STOPPED not in self.client.get_run(run_id).data.tags:
            self.client.set_terminated(run_id, status="FAILED")

    def mark_early_stopped(self, trial_id: str, step: int | None) -> bool:
        """Closes the run of a trial the scheduler stopped before its final report.

        Whatever the dying trial managed to write (RUNNING, or FAILED as its fit() was cut
        short), a trial that ended without its objective tag was stopped early.
        """
        run = self.find_trial(trial_id)
        if run is None or Tags.OBJECTIVE in run.data.tags:
            return False
        self.client.set_tag(run.info.run_id, Tags.EARLY_STOPPED, f"step {step}")
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return True

    def close_running(self, status: str = "KILLED") -> int:
        """Marks every trial run still RUNNING with ``status``; returns how many."""
        running = self.trials("attributes.status = 'RUNNING'")
        for run in running:
            self.client.set_terminated(run.info.run_id, status=status)
        return len(running)

    def delete_unknown(self, known_trial_ids: Iterable[str]) -> int:
        """Soft-deletes the runs of trials outside ``known_trial_ids``; returns how many.

        A trial that started after Tune last saved the sweep's state (it saves once a second)
        and then lost its driver is unknown to the resumed sweep, which never continues it: its
        run would stay as a stray KILLED run beside the real ones. Deleted runs can be restored
        from the MLflow UI until ``mlflow gc`` purges them.
        """
        known = set(known_trial_ids)
        stray = [r for r in self.trials() if r.data.tags.get(Tags.TRIAL_ID) not in known]
        for run in stray:
            self.client.delete_run(run.info.run_id)
        return len(stray)
