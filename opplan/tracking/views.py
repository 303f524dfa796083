"""Links into the MLflow UI that open on what a user compares (docs/operations.md, "The MLflow UI").

MLflow 3's UI keeps the runs table's filter in the page URL (``searchFilter``) but its
columns only in the browser or in a *shared view*: an experiment tag
``mlflow.sharedViewState.<key>`` holding the filter and the table's state as JSON, opened
by ``?viewStateShareKey=<key>`` (what the UI's own "Share" button writes). So
:func:`planning_links` writes one such view per planning run and links to it; the view
is a tag on the experiment, which reading the store never needs. ``workflowType`` in every
link opens the training view, not the GenAI one a fresh browser defaults to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from opplan import names as n

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's UI: the prefix of a shared view's experiment tag
TRAINING_VIEW = "workflowType=machine_learning"  # MLflow's UI: the "Model training" view

TRANSITION_COLUMNS = (
    ("tags", n.TAG_ON_PATH), ("metrics", n.M_SCORE), ("metrics", n.M_SCORE_SE), ("metrics", n.M_CHOSEN_EPOCH),
    ("metrics", n.M_DP_MARGIN_SE), ("tags", n.TAG_DP_VERSUS), ("metrics", n.M_EPOCHS_TRAINED),
    ("metrics", n.M_COMPUTE_SECONDS), ("params", "clip_length"), ("params", "lr"), ("params", "sampling"),
)
"""The runs table's columns for a planning's transitions, in order."""


def column_id(section: str, key: str) -> str:
    """MLflow's UI name of a runs-table column, e.g. ``metrics.`V```."""
    return f"{section}.`{key}`"


def transitions_filter(planning_run_id: str) -> str:
    """The search filter of one planning's transitions (MLflow's search syntax)."""
    return (f"tags.`{n.TAG_KIND}` = '{n.KIND_TRANSITION}' and "
            f"tags.`{n.TAG_PARENT_RUN}` = '{planning_run_id}'")


def view_state(search_filter: str, columns: Sequence[tuple[str, str]], order_by: tuple[str, str]) -> dict:
    """A shared view's JSON: the filter, the sort (always descending: the best V first) and the
    selected columns (keys of MLflow's UI state). Sorted by start time, the UI nests child runs under their parent, closed (and a
    shared view cannot open them), so a planning's transitions would hide under one row; sorted
    by a column, the table lists them flat."""
    ids = [column_id(section, key) for section, key in columns]
    return {"searchFilter": search_filter, "orderByKey": column_id(*order_by), "orderByAsc": False,
            "selectedColumns": ids, "columnOrder": [], "runListHidden": False, "viewMaximized": False}


def view_key(planning_run_id: str) -> str:
    return f"opplan-{planning_run_id}"


def runs_table_url(base_url: str, experiment_id: str, share_key: str | None = None) -> str:
    query = TRAINING_VIEW + (f"&viewStateShareKey={quote(share_key)}" if share_key else "")
    return f"{n.runs_page_url(base_url, experiment_id)}?{query}"


def compare_url(base_url: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare page of ``run_ids`` (its route: ``/compare-runs?runs=[..]&experiments=[..]``)."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")))
    experiments = quote(json.dumps([experiment_id], separators=(",", ":")))
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING_VIEW}"


@dataclass(frozen=True)
class Link:
    label: str
    url: str


log = logging.getLogger(__name__)


def planning_links(uri: str, experiment: str, base_url: str) -> list[Link]:
    """The links ``opplan ui`` prints: the newest planning's transitions table (a shared view
    written into the experiment), the compare page of its chosen path, and the runs table of
    each experiment (the baselines' too). None when the store cannot be read."""
    from opplan.errors import OpplanError
    from opplan.tracking.client import open_store

    try:
        readers = open_store(uri, retry_seconds=5.0)
    except OpplanError as exc:
        log.warning("%s", exc)
        return []
    links: list[Link] = []
    store = readers.get(experiment)
    if store is not None:
        plannings = store.search({n.TAG_KIND: n.KIND_PLANNING})
        if plannings:
            planning = plannings[-1]
            pid = planning.info.run_id
            key = view_key(pid)
            state = view_state(transitions_filter(pid), TRANSITION_COLUMNS, order_by=("metrics", n.M_SCORE))
            store.set_experiment_tag(SHARED_VIEW_TAG + key, json.dumps(state))
            links.append(Link(f"transitions of planning {planning.info.run_name}",
                              runs_table_url(base_url, store.experiment_id, key)))
            path = [r for r in store.search({n.TAG_KIND: n.KIND_TRANSITION, n.TAG_ON_PATH: "true"}, parent_id=pid)]
            if path:
                links.append(Link(f"chosen path ({len(path)} transitions) side by side",
                                  compare_url(base_url, store.experiment_id, [r.info.run_id for r in path])))
    for name in (experiment, experiment + n.BASELINES_SUFFIX):
        if name in readers:
            links.append(Link(f"all runs of {name}", runs_table_url(base_url, readers[name].experiment_id)))
    return links
