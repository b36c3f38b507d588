"""What MLflow's UI shows of a sweep: a saved view comparing its trials, and the links to it."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable

from gmt_ray.tracking.tags import SAVED_VIEW_TAG_PREFIX, Tags

__all__ = ["comparison_view", "experiment_url", "view_tag"]


def comparison_view(sweep: str, metric: str, mode: str, params: Iterable[str]) -> tuple[str, str]:
    """``(view id, the experiment tag's value)`` of a saved view of a sweep's experiment (the
    UI's Views menu, or the link ``experiment_url(..., view=...)``): this sweep's trials,
    best first, with ``params`` and ``metric`` as columns, and in the chart view a
    parallel-coordinates chart of ``metric`` against ``params`` and a scatter of ``metric``
    against the learning rate (else the first numeric one). The id is the same for the same
    sweep: a resumed sweep rewrites its view.

    MLflow's UI keeps saved views as experiment tags ``mlflow.sharedViewState.<id>`` holding
    its own page state as JSON; this writes that state for the UI of MLflow 3.17
    (tests/test_mlflow_ui.py opens it in a browser).
    """
    params = list(dict.fromkeys(params))
    view_id = hashlib.sha256(f"gmt-ray:{sweep}".encode()).hexdigest()[:32]
    searched, model, system = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/{n}")) for n in ("s", "m", "y"))
    charts = [
        {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/parallel")), "type": "PARALLEL",
         "runsCountToCompare": 1000, "metricSectionId": searched, "deleted": False, "isGenerated": False,
         "selectedParams": params, "selectedMetrics": [metric], "showAllRuns": True},
    ]
    numeric = [p for p in params if p != "mask.method"]
    if numeric:
        x = "train.lr" if "train.lr" in numeric else numeric[0]
        charts.append({"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/scatter")), "type": "SCATTER",
                       "runsCountToCompare": 1000, "metricSectionId": searched, "deleted": False,
                       "isGenerated": False, "xaxis": {"key": x, "type": "PARAM"},
                       "yaxis": {"key": metric, "type": "METRIC"}})
    sections = [
        {"uuid": searched, "name": f"{metric} by {', '.join(params)}", "display": True, "isReordered": True,
         "deleted": False, "isGenerated": False},
        {"uuid": model, "name": "Model metrics", "display": True, "isReordered": False, "deleted": False,
         "isGenerated": True},
        {"uuid": system, "name": "System metrics", "display": True, "isReordered": False, "deleted": False,
         "isGenerated": True},
    ]
    state = {
        # The search's trials: the configurations compared (confirmation runs repeat the chosen ones).
        "searchFilter": f"tags.`{Tags.SWEEP}` = '{sweep}' AND tags.`{Tags.ROLE}` = 'trial' AND "
                        f"tags.`{Tags.STAGE}` = 'search'",
        "orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min", "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Dataset`", "attributes.`Models`",
                            *(f"params.`{p}`" for p in params), f"metrics.`{metric}`"],
        "runsHiddenMode": "SHOW_ALL", "compareRunCharts": charts, "compareRunSections": sections,
        "isAccordionReordered": True, "viewMaximized": False, "runListHidden": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
    }
    now = int(time.time() * 1000)
    envelope = {"name": f"{sweep}: trials by {metric}", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return view_id, json.dumps(envelope)


def view_tag(view_id: str) -> str:
    """The experiment tag that holds a saved view."""
    return f"{SAVED_VIEW_TAG_PREFIX}{view_id}"


def experiment_url(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000",
                   view: str | None = None) -> str:
    """The page of an experiment's training runs in MLflow's UI (``ui``: where ``mlflow ui``
    serves a local store; a tracking server's own address otherwise); with ``view`` (from
    ``SweepRuns.save_comparison_view``) that saved view, in the chart view.

    MLflow 3.17's UI opens an experiment in the view of its sidebar's workflow switch
    ("GenAI" by default, remembered per browser), whatever the experiment's kind tag says;
    ``workflowType=machine_learning`` in the address selects "Model training", whose
    experiment page is the runs table.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui.rstrip("/")
    shown = f"viewStateShareKey={view}&compareRunsMode=CHART&" if view else ""
    return f"{base}/#/experiments/{experiment_id}/runs?{shown}workflowType=machine_learning"
