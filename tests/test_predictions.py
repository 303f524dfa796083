"""Per-video predictions: what the report pairs between OP and HS."""

from __future__ import annotations

import numpy as np
import pytest

from opplan.predictions import mean_over_runs, paired, per_video, predictions_json, unpaired_reason

LABELS = np.array([0, 1, 2, 1])
SCORES = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])


def test_document_holds_labels_and_every_metric_per_video() -> None:
    doc = predictions_json(SCORES, LABELS)
    assert doc["labels"] == [0, 1, 2, 1] and doc["videos"] == 4
    assert per_video(doc).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert per_video(doc, "prob").tolist() == pytest.approx([0.7, 0.3, 0.8, 0.5])
    assert per_video(doc, "top135")[1] == pytest.approx(2 / 3)  # second of three classes: top-3 and top-5 hits


def test_runs_on_the_same_videos_average_per_video() -> None:
    a = predictions_json(SCORES, LABELS)
    b = predictions_json(np.roll(SCORES, 1, axis=1), LABELS)
    assert paired([a, b]) and mean_over_runs([a, b]).tolist() == [0.5, 0.5, 0.5, 0.5]
    other = predictions_json(SCORES, np.array([0, 1, 2, 0]))
    assert not paired([a, other]) and not paired([])
    with pytest.raises(ValueError, match="cannot pair the predictions: .*different label sequences"):
        mean_over_runs([a, other])


def test_same_labels_on_other_videos_are_refused_in_one_line() -> None:
    a = predictions_json(SCORES, LABELS, ["v/a.mp4", "v/b.mp4", "v/c.mp4", "v/d.mp4"])
    same = predictions_json(np.roll(SCORES, 1, axis=1), LABELS, ["v/a.mp4", "v/b.mp4", "v/c.mp4", "v/d.mp4"])
    swapped = predictions_json(SCORES, LABELS, ["v/a.mp4", "v/d.mp4", "v/c.mp4", "v/b.mp4"])  # labels still match
    assert paired([a, same]) and mean_over_runs([a, same]).tolist() == [0.5, 0.5, 0.5, 0.5]
    assert not paired([a, swapped]) and not paired([a, predictions_json(SCORES, LABELS)])  # ids on one side only
    reason = unpaired_reason([a, swapped])
    assert "different videos" in reason and "'v/b.mp4' vs 'v/d.mp4'" in reason and "\n" not in reason
    with pytest.raises(ValueError, match="score different videos"):
        mean_over_runs([a, swapped])
    with pytest.raises(ValueError, match="video ids for"):
        predictions_json(SCORES, LABELS, ["v/a.mp4"])
