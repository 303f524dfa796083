"""The planning stage's noise bookkeeping (docs/design.md §10): SEs, capped transitions, DP margins in
plan.json and MLflow, and the no-learning diagnosis on a dataset that cannot be learned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opplan import tracking as t
from opplan.stages.plan import run_plan
from tests.test_stages import tiny_params


@pytest.fixture(scope="module")
def shuffled_shards(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_shards`` with its labels shuffled across videos: nothing there to learn."""
    out = tmp_path_factory.mktemp("shuffled") / "shards"
    shutil.copytree(tiny_shards, out)
    videos = pd.read_csv(out / "videos.csv")
    rng = np.random.default_rng(3)
    videos["label_index"] = rng.permutation(videos["label_index"].to_numpy())
    videos.to_csv(out / "videos.csv", index=False)
    return out


def test_a_dataset_that_cannot_be_learned_is_diagnosed(shuffled_shards: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    params = tiny_params(shuffled_shards, tmp_path / "mlflow.db", decision="within_se", delay=2, max_epochs=3)
    with caplog.at_level("WARNING"):
        result = run_plan(params)
    document = json.loads((tmp_path / "plan.json").read_text())
    diagnosis = document["diagnosis"]
    assert diagnosis["ok"] is False and "at_chance" in [f["code"] for f in diagnosis["findings"]]
    assert any("planning diagnosis at_chance" in r.getMessage() and "plan.lrs" in r.getMessage()
               for r in caplog.records)
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    planning = tracker.get_run(document["mlflow"]["planning_run_id"])
    assert "at_chance" in planning.data.tags[t.TAG_DIAGNOSIS]
    assert planning.data.tags[t.TAG_FINAL_RUNNER_UP] == "none"  # one final state

    # every transition's score has its SE, in plan.json and MLflow, and per epoch
    runs = {r.info.run_id: r for r in tracker.search({t.TAG_KIND: t.KIND_TRANSITION})}
    for record in document["explored"]:
        run = runs[record["run_id"]]
        assert record["se"] == pytest.approx(run.data.metrics[t.M_SCORE_SE]) and record["se"] >= 0
        assert len(tracker.history(record["run_id"], t.M_VAL_SE)) == record["epochs_trained"] + 1
        assert run.data.tags[t.TAG_KEEP] in ("knee", "start", "best_later")
        assert record["capped"] == bool(run.data.metrics[t.M_CAPPED]) == (run.data.tags[t.TAG_CAPPED] == "true")
        if record["chosen_epoch"] == 0 and record["epochs_trained"] > 0:
            assert run.data.tags[t.TAG_KEEP] == "start"  # t* = 0 only when the start won beyond the noise
    # each decision's runner-up and margin in SEs: in plan.json and on the chosen transition's run
    assert document["decision"] == {"rule": "within_se", "tie_se": 1.0}
    for decision in document["decisions"]:
        if decision["state"] == "final":
            continue
        chosen = result.best[decision["state"]]
        run = tracker.get_run(chosen.run_id)
        assert run.data.tags[t.TAG_DP_RUNNER_UP] == (decision["runner_up"] or "none")
        if decision["margin_se"] is not None:
            assert run.data.metrics[t.M_DP_MARGIN_SE] == pytest.approx(decision["margin_se"])
    assert set(document["capped"]) == {f"{r['src']} -> {r['dst']}" for r in document["explored"] if r["capped"]}
