"""System metrics: a run being watched gets MLflow's ``system/`` metrics; 0 s switches them off."""

from __future__ import annotations

import time
from pathlib import Path

from opplan import names as n
from opplan.tracking.client import Tracker


def _system_keys(tracker: Tracker, run_id: str) -> set[str]:
    return {k for k in tracker.get_run(run_id).data.metrics if k.startswith("system/")}


def test_a_watched_run_gets_cpu_and_memory_until_it_ends(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sys", artifact_root=tmp_path / "art",
                      system_metrics_seconds=0.05)
    run_id = tracker.create_run("watched", {n.TAG_STATUS: n.STATUS_RUNNING})
    tracker.watch_system(run_id)
    deadline = time.monotonic() + 120  # polled: how soon the first sample lands does not matter
    while not _system_keys(tracker, run_id) and time.monotonic() < deadline:
        tracker.watch_system(run_id)  # watching twice starts no second monitor
        time.sleep(0.1)
    tracker.end_run(run_id, n.STATUS_FINISHED)
    keys = _system_keys(tracker, run_id)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage"} <= keys
    assert not tracker._monitors  # the monitor stopped with the run
    steps = [m.step for m in tracker.client.get_metric_history(run_id, "system/cpu_utilization_percentage")]
    assert steps == sorted(set(steps))  # one value per sample, in order


def test_zero_seconds_logs_none(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sys", artifact_root=tmp_path / "art")
    run_id = tracker.create_run("unwatched", {n.TAG_STATUS: n.STATUS_RUNNING})
    tracker.watch_system(run_id)
    assert not tracker._monitors
    tracker.end_run(run_id, n.STATUS_FINISHED)
    assert not _system_keys(tracker, run_id)


def test_a_planning_run_gets_system_metrics(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    """The planning run's System metrics tab in the MLflow UI reads these ``system/`` metrics."""
    import json

    from tiny import tiny_config

    from opplan.config import Params
    from opplan.stages.plan import run_plan

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(n.ENV_URI, raising=False)
    params = Params.model_validate(tiny_config(
        tiny_shards, plan={"clip_lengths": [4], "lrs": [0.02], "max_epochs": 2},
        tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "system_metrics_seconds": 0.05}))
    run_plan(params)
    planning = json.loads((tmp_path / "plan.json").read_text())["mlflow"]["planning_run_id"]
    tracker = Tracker.from_params(params.tracking)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= _system_keys(
        tracker, planning)
