"""Stage ``evaluate``: score the held-out split, which planning never sees (SPEC §5).

Ten uniformly spaced clips x three crops per video, softmax scores averaged: top-1,
top-5 and mean class accuracy, plus the single-view figure (centre clip, centre crop,
as in planning). Logged to the final MLflow run and written as DVC metrics, with a
confusion-matrix PNG.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from opplan import distributed
from opplan import tracking as t
from opplan.config import Params
from opplan.fileio import atomic_savefig, atomic_write_json
from opplan.predictions import log_predictions, predictions_json
from opplan.stages.common import final_state, require_file, require_shards
from opplan.train.loop import accuracy, confusion_matrix, mean_class_accuracy, topk_accuracy
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)


@distributed.collective
def score_model(setup: TrainSetup, checkpoint: Path, state: Any, *, val: bool = False
                ) -> tuple[dict[str, float], np.ndarray, dict[str, Any]]:
    """Multi-view and single-view scores of a model checkpoint on the held-out split, its
    confusion matrix and its per-video results (:func:`opplan.predictions.predictions_json`).
    ``val``: also the multi-view top-1 on the internal validation split (``val_top1``: how a
    user picks a hand-tuned candidate without looking at the test split).

    Collective: under ``torchrun`` rank 0 loads ``checkpoint`` and every process scores
    its share of the videos.
    """
    model = setup.new_model(state.clip_length)
    distributed.on_main(lambda: setup.load_weights(model, checkpoint))
    distributed.sync_module(model)
    scores, labels = setup.predict(model, "test", state, mode="test")
    single, single_labels = setup.predict(model, "test", state, mode="val")
    extra = {t.M_VAL_TOP1: accuracy(*setup.predict(model, "val", state, mode="test"))} if val else {}
    metrics = {
        t.M_TOP1: accuracy(scores, labels),
        t.M_TOP5: topk_accuracy(scores, labels, 5),
        t.M_MEAN_CLASS_ACC: mean_class_accuracy(scores, labels),
        t.M_SINGLE_VIEW_TOP1: accuracy(single, single_labels),
        **extra,
    }
    return metrics, confusion_matrix(scores, labels, setup.num_classes), predictions_json(scores, labels)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                    color="white" if value > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("held-out confusion matrix")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def run_evaluate(params: Params, *, final_dir: Path = Path("final"), metrics_path: Path = Path("metrics.json"),
                 out_dir: Path = Path("evaluation")) -> dict[str, float]:
    shards = require_shards(params)
    record = json.loads(require_file(final_dir / "run.json", "final").read_text())
    setup = TrainSetup(params, shards)
    state = final_state(record, params)
    metrics, matrix, predictions = score_model(setup, require_file(final_dir / "model.pt", "final"), state)
    classes = (shards / "classes.txt").read_text().split("\n")[: setup.num_classes]
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(matrix, classes, out_dir / "confusion.png")
    tracker = t.Tracker.from_params(params.tracking)
    tracker.log_metrics(record["run_id"], metrics, step=record["epochs"])
    tracker.log_artifact(record["run_id"], out_dir / "confusion.png", t.ARTIFACT_PLOTS_DIR)
    log_predictions(tracker, record["run_id"], predictions)
    document = {**{k: round(v, 6) for k, v in metrics.items()}, "epochs": record["epochs"],
                "compute_seconds": round(record[t.M_COMPUTE_SECONDS], 2), "final_state": record["final_state"]}
    atomic_write_json(metrics_path, document)
    log.info("held-out: top-1 %.4f, top-5 %.4f, mean class %.4f (single view %.4f)", metrics[t.M_TOP1],
             metrics[t.M_TOP5], metrics[t.M_MEAN_CLASS_ACC], metrics[t.M_SINGLE_VIEW_TOP1])
    return metrics
