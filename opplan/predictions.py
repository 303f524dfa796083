"""Per-video held-out results of one trained model: what a paired test between two models
needs (issue 12; docs/design.md, "Noise").

``evaluate`` and every retrain the comparison scores write one ``predictions.json`` (an MLflow
artifact of the run, :data:`opplan.tracking.ARTIFACT_PREDICTIONS`): the held-out videos' labels
in the split's fixed order and, per video, each metric of :mod:`opplan.stats`. Two documents
with the same labels in the same order are paired video by video.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opplan import tracking as t
from opplan.stats import METRICS, per_video_scores

SPLIT = "test"


def predictions_json(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The document of one model: labels and per-video ``top1``/``top135``/``prob`` values."""
    labels = np.asarray(labels, dtype=np.int64)
    values = {m: [round(float(v), 6) for v in per_video_scores(scores, labels, m)] for m in METRICS}
    return {"split": SPLIT, "videos": len(labels), "labels": labels.tolist(), **values}


def per_video(doc: dict[str, Any], metric: str = "top1") -> np.ndarray:
    """One document's per-video values of ``metric``."""
    return np.asarray(doc[metric], dtype=np.float64)


def paired(docs: Sequence[dict[str, Any]]) -> bool:
    """Whether the documents score the same videos in the same order (same labels)."""
    return bool(docs) and all(d.get("labels") == docs[0].get("labels") for d in docs)


def mean_over_runs(docs: Sequence[dict[str, Any]], metric: str = "top1") -> np.ndarray:
    """Per video, the mean over several runs (seeds) of ``metric``: a model's expected
    correctness on each video. The documents must be :func:`paired`."""
    if not paired(docs):
        raise ValueError("predictions of different video lists cannot be paired")
    return np.mean([per_video(d, metric) for d in docs], axis=0)


def log_predictions(tracker: t.Tracker, run_id: str, doc: dict[str, Any]) -> None:
    """Attach ``doc`` to the run as :data:`opplan.tracking.ARTIFACT_PREDICTIONS`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / t.ARTIFACT_PREDICTIONS
        path.write_text(json.dumps(doc))
        tracker.log_artifact(run_id, path)
