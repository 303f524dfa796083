"""Stage ``evaluate``: score the final model on the held-out split, which planning never
sees (:mod:`opplan.stages.scoring`). Logged to the final MLflow run and written as DVC
metrics, with a confusion-matrix PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from opplan import names as n
from opplan.config import Params
from opplan.documents import FinalRecord
from opplan.errors import OpplanError
from opplan.fileio import atomic_savefig, atomic_write_json, file_digest
from opplan.predictions import log_predictions
from opplan.stages.common import FINAL_RECORD, final_state, require_current, require_file, require_shards
from opplan.stages.scoring import score_model
from opplan.tracking.client import Tracker, open_store, resolve_uri
from opplan.train.checkpoint import MODEL_FILE
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)


def literal_label(text: str) -> str:
    """``text`` shown as written in a matplotlib figure: a ``$`` would start math text, whose
    parser fails on names the importer accepts (e.g. ``$\\x$``); ``\\$`` is a plain dollar."""
    return text.replace("$", r"\$")


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="held-out videos")
    labels = [literal_label(name) for name in classes]
    ax.set_xticks(range(len(classes)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), labels, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                    color="white" if value > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("held-out confusion matrix")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def run_evaluate(params: Params, *, final_dir: Path = Path("final"), metrics_path: Path = Path("metrics.json"),
                 out_dir: Path = Path("evaluation")) -> dict[str, float]:
    shards = require_shards(params)
    record_path = final_dir / FINAL_RECORD
    record = FinalRecord.read(record_path)
    require_current(record, record_path, params, shards)
    model = require_file(final_dir / MODEL_FILE, "final")
    if record.model_sha256 != file_digest(model):
        raise OpplanError(f"{model} is not the model {record_path} describes (another run's, or replaced since): "
                          f"run `dvc repro final` (or `opplan final`) again")
    tracker = final_run_tracker(params, record.run_id, record_path)  # before scoring: minutes of work
    setup = TrainSetup(params, shards)
    metrics, matrix, predictions = score_model(setup, model, final_state(record, params))
    classes = (shards / "classes.txt").read_text().split("\n")[: setup.num_classes]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(matrix, classes, out_dir / "confusion.png")
    tracker.log_metrics(record.run_id, metrics, step=record.epochs)
    tracker.log_artifact(record.run_id, out_dir / "confusion.png", n.ARTIFACT_PLOTS_DIR)
    log_predictions(tracker, record.run_id, predictions)
    publish_model(tracker, params, record, model, classes, metrics)
    document = {**{k: round(v, 6) for k, v in metrics.items()}, "epochs": record.epochs,
                "compute_seconds": round(record.compute_seconds, 2), "final_state": record.final_state}
    atomic_write_json(metrics_path, document)
    log.info("held-out: top-1 %.4f, top-5 %.4f, mean class %.4f (single view %.4f)", metrics[n.M_TOP1],
             metrics[n.M_TOP5], metrics[n.M_MEAN_CLASS_ACC], metrics[n.M_SINGLE_VIEW_TOP1])
    return metrics


def publish_model(tracker: Tracker, params: Params, record: FinalRecord, model: Path, classes: list[str],
                  metrics: dict[str, float]) -> str:
    """The tested model as the final run's MLflow model (``runs:/<run>/model``), with the view
    settings it was tested with; registered as ``final.register_as`` when set (docs/design.md §5)."""
    from opplan.inference import view_settings
    from opplan.tracking.model import log_final_model, register_final_model

    state = final_state(record, params)
    info = {"run_id": record.run_id, "planning_run_id": record.planning_run_id,
            "final_state": record.final_state, "model_sha256": record.model_sha256}
    uri = log_final_model(tracker, record.run_id, model, classes,
                          view_settings(params, state.clip_length, state.sampling), info)
    name = params.final.register_as
    if name:
        path = " → ".join(row.state for row in record.path_steps())
        tags = {"planning_run_id": record.planning_run_id, "path": path, "final_state": record.final_state,
                **{f"heldout_{k}": f"{v:.6f}" for k, v in metrics.items()}}
        description = (f"opplan final model of planning run {record.planning_run_id}, path {path}; held-out "
                       f"top-1 {metrics[n.M_TOP1]:.4f}, top-5 {metrics[n.M_TOP5]:.4f} "
                       f"({params.evaluate.clips} clips x {params.evaluate.crops} crops)")
        version = register_final_model(tracker, record.run_id, name, tags, description)
        log.info("final model: %s, registered as models:/%s/%d", uri, name, version)
    return uri


def final_run_tracker(params: Params, run_id: str, record_path: Path) -> Tracker:
    """The tracker that logs the evaluation, once the store is known to hold the final run
    (evaluate never creates a store: the run it logs to would not be in it)."""
    uri = resolve_uri(params.tracking.uri)
    readers = open_store(uri, retry_seconds=params.tracking.retry_seconds)
    reader = readers.get(params.tracking.experiment)
    run = None
    if reader is not None:
        run = reader.find_run(run_id)
    if run is None or run.info.experiment_id != reader.experiment_id:
        raise OpplanError(f"{record_path} names MLflow run {run_id} of experiment {params.tracking.experiment!r}, "
                          f"which the store at {uri} does not hold (was the store deleted or replaced?). Restore "
                          f"the store, or train the final model again into this one: `dvc repro -f final`")
    return Tracker.from_params(params.tracking)
