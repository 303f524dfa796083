"""``bench/study.py``: the OP-vs-HS study drives the real stages and writes one table."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest

STUDY = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "study.py"), run_name="study")


def _doc(**changes: Any) -> dict[str, Any]:
    arm = {"top1": 0.5, "low": 0.44, "high": 0.56, "se": 0.03, "per_seed": [0.49, 0.51], "seed_sd": 0.014}
    doc = {"op": arm, "hs": {**arm, "top1": 0.45}, "hs_name": "cs/all/cosine/24",
           "oracle": {"name": "us/all/step/36", "top1": 0.52}, "grid_mean": 0.4, "grid_median": 0.41,
           "paired": {"diff": 0.05, "low": -0.01, "high": 0.11, "p_bootstrap": 0.1, "p_mcnemar": None, "n": 280,
                      "verdict": "within noise"},
           "path": ["cs/4/0.02 (3 ep)"], "planned_V": 0.5, "final_single_view": 0.45,
           "compute_seconds": {"planning": 300.0, "grid": 900.0}, "grid_runs": 24, "ratio_seconds": 3.0}
    return doc | changes


def test_full_scale_has_top1_se_of_at_most_3_points_and_three_epoch_totals() -> None:
    full = STUDY["FULL"]
    assert full.test_videos >= 278 and 0.5 / full.test_videos ** 0.5 <= 0.03
    assert full.train_per_class - full.test_per_class >= 24  # internal train left after a test-sized validation
    assert len(full.epochs) >= 3 and full.seeds >= 2


def test_markdown_table_names_both_sides_the_oracle_and_the_verdict() -> None:
    text = STUDY["markdown"](_doc())
    assert "| OP (planned path, retrained) | 50.0 | [44.0, 56.0] | 49.0, 51.0 | 300 |" in text
    assert "HS chosen on validation (cs/all/cosine/24, retrained) | 45.0" in text
    assert "HS oracle: best on the test split (us/all/step/36) | 52.0" in text
    assert "Grid : OP compute = 3.0 : 1 (time)" in text
    assert "**within noise**: OP − HS = +5.0 points, 95% interval [-1.0, +11.0] over 280 videos" in text
    assert "no verdict" in STUDY["markdown"](_doc(paired=None, hs=None))


@pytest.mark.slow
def test_smoke_study_runs_the_pipeline_end_to_end(tmp_path: Path) -> None:
    assert STUDY["main"](["--smoke", "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "project")]) == 0
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["grid_runs"] == 3 and doc["grid_epochs"] == [1, 2, 3]
    assert len(doc["op"]["per_seed"]) == len(doc["hs"]["per_seed"]) == 2
    assert doc["paired"]["n"] == doc["test_videos"] == 9
    assert doc["verdict"] in ("better", "worse", "within noise")
    assert (tmp_path / "out" / "study.md").read_text().count("|") > 20
