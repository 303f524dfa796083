"""Per-video held-out results of one trained model: what a paired test between two models
needs (docs/design.md §10, "Noise").

``evaluate`` and every retrain the comparison scores write one ``predictions.json`` (an MLflow
artifact of the run, :data:`opplan.tracking.ARTIFACT_PREDICTIONS`): the held-out videos' labels
in the split's fixed order and, per video, each metric of :mod:`opplan.stats`. Two documents
with the same video ids (and labels) in the same order are paired video by video.
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


def predictions_json(scores: np.ndarray, labels: np.ndarray, videos: Sequence[str] | None = None) -> dict[str, Any]:
    """The document of one model: the videos' ids (their paths in ``videos.csv``), labels and
    per-video ``top1``/``top135``/``prob`` values."""
    labels = np.asarray(labels, dtype=np.int64)
    values = {m: [round(float(v), 6) for v in per_video_scores(scores, labels, m)] for m in METRICS}
    ids = {} if videos is None else {"video_ids": [str(v) for v in videos]}
    if videos is not None and len(ids["video_ids"]) != len(labels):
        raise ValueError(f"{len(ids['video_ids'])} video ids for {len(labels)} scored videos")
    return {"split": SPLIT, "videos": len(labels), **ids, "labels": labels.tolist(), **values}


def per_video(doc: dict[str, Any], metric: str = "top1") -> np.ndarray:
    """One document's per-video values of ``metric``."""
    return np.asarray(doc[metric], dtype=np.float64)


def unpaired_reason(docs: Sequence[dict[str, Any]]) -> str | None:
    """Why the documents do not score the same videos in the same order, in one line; ``None``
    when they do. Videos are matched by id (``video_ids``) where every document has them,
    and always by label: equal label sequences over other videos are not a pairing."""
    if not docs:
        return "no predictions to pair"
    first = docs[0]
    for i, doc in enumerate(docs[1:], start=1):
        if doc.get("labels") != first.get("labels"):
            return (f"predictions 0 and {i} hold different label sequences "
                    f"({first.get('videos')} vs {doc.get('videos')} videos)")
    ids = [d.get("video_ids") for d in docs]
    if any(v is not None for v in ids) and any(v is None for v in ids):
        return "some predictions name their videos and some do not: the videos cannot be matched"
    for i, other in enumerate(ids[1:], start=1):
        if other is not None and other != ids[0]:
            where = next(k for k, (a, b) in enumerate(zip(ids[0], other)) if a != b) if len(other) == len(ids[0]) else 0
            return (f"predictions 0 and {i} score different videos (first difference at position {where}: "
                    f"{ids[0][where] if ids[0] else None!r} vs {other[where] if other else None!r})")
    return None


def paired(docs: Sequence[dict[str, Any]]) -> bool:
    """Whether the documents score the same videos in the same order (:func:`unpaired_reason`)."""
    return unpaired_reason(docs) is None


def mean_over_runs(docs: Sequence[dict[str, Any]], metric: str = "top1") -> np.ndarray:
    """Per video, the mean over several runs (seeds) of ``metric``: a model's expected
    correctness on each video. The documents must be :func:`paired`."""
    reason = unpaired_reason(docs)
    if reason is not None:
        raise ValueError(f"cannot pair the predictions: {reason}")
    return np.mean([per_video(d, metric) for d in docs], axis=0)


def log_predictions(tracker: t.Tracker, run_id: str, doc: dict[str, Any]) -> None:
    """Attach ``doc`` to the run as :data:`opplan.tracking.ARTIFACT_PREDICTIONS`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / t.ARTIFACT_PREDICTIONS
        path.write_text(json.dumps(doc))
        tracker.log_artifact(run_id, path)
