"""Every training stage (plan, final, baselines) through the same kill/resume cases, in-process
on the tiny dataset: a stage "killed" after its first trained epoch (an exception no stage
catches, raised right after the epoch reached MLflow, as SIGKILL would leave it) resumes in
the same run; with its epoch states gone it marks that run killed and trains in a new one;
a stale duplicate is killed; a finished run is reused. One rule set
(``opplan.tracking.lifecycle``), so one set of expectations. SIGKILL at random moments in a
real process: ``test_resume.py``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tiny import tiny_config, with_current_hash

from opplan import names as n
from opplan.config import Params
from opplan.stages.baselines import run_baselines
from opplan.stages.common import WORK_ROOT
from opplan.stages.final import run_final
from opplan.stages.plan import run_plan
from opplan.tracking.client import Tracker
from opplan.tracking.store import ensure_store

pytestmark = pytest.mark.slow

PLAN = {"mlflow": {"planning_run_id": "plan-of-test-stage-lifecycle"},
        "path": ["S0", "cs/4/0.02"], "final_state": "cs/4/0.02",
        "transitions": [{"src": "S0", "dst": "cs/4/0.02", "chosen_epoch": 2}]}


class Killed(BaseException):
    """Stands for SIGKILL: no stage catches it, so nothing after it runs."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Params], Any]
    kind: str
    progress: str  # the metric logged after every epoch
    baselines: bool = False

    def runs(self, params: Params) -> list:
        tracker = Tracker.from_params(params.tracking, baselines=self.baselines)
        return tracker.search({n.TAG_KIND: self.kind})


STAGES = [Stage("plan", run_plan, n.KIND_TRANSITION, n.M_VAL_ACC),
          Stage("final", run_final, n.KIND_FINAL, n.M_TRAIN_LOSS),
          Stage("baselines", run_baselines, n.KIND_BASELINE, n.M_TRAIN_LOSS, baselines=True)]


@pytest.fixture(params=STAGES, ids=lambda s: s.name)
def stage(request: pytest.FixtureRequest) -> Stage:
    return request.param


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new store, made once (MLflow's migrations take seconds) and copied into each project."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def params(tiny_shards: Path, empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """One transition, one two-epoch final, one two-epoch baseline, in a project of their own."""
    monkeypatch.delenv(n.ENV_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    params = Params.model_validate(tiny_config(
        tiny_shards, plan={"clip_lengths": [4], "lrs": [0.02], "max_epochs": 2},
        baselines={"decays": ["step"]}, tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    (tmp_path / "plan.json").write_text(json.dumps(with_current_hash(PLAN, params)))
    return params


def kill_after_first_epoch(monkeypatch: pytest.MonkeyPatch, stage: Stage, params: Params) -> None:
    """Run ``stage`` until its first trained epoch is in MLflow, then "kill" it."""
    real = Tracker.epoch_logger

    def epoch_logger(self: Tracker, run_id: str, key: str) -> Callable[[int, Any], None]:
        log_epoch = real(self, run_id, key)

        def then_die(epoch: int, metrics: Any) -> None:
            log_epoch(epoch, metrics)
            if epoch >= 1:
                raise Killed

        return then_die

    with monkeypatch.context() as patched:
        patched.setattr(Tracker, "epoch_logger", epoch_logger)
        with pytest.raises(Killed):
            stage.run(params)


def steps(params: Params, stage: Stage, run_id: str) -> list[int]:
    tracker = Tracker.from_params(params.tracking, baselines=stage.baselines)
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, stage.progress))


def test_a_killed_stage_resumes_in_the_same_run_and_a_rerun_reuses_it(
        stage: Stage, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    kill_after_first_epoch(monkeypatch, stage, params)
    (killed,) = stage.runs(params)
    assert killed.data.tags[n.TAG_STATUS] == n.STATUS_RUNNING and any(WORK_ROOT.rglob("epoch_*.pt"))

    stage.run(params)
    (resumed,) = stage.runs(params)
    assert resumed.info.run_id == killed.info.run_id and resumed.data.tags[n.TAG_STATUS] == n.STATUS_FINISHED
    epochs = steps(params, stage, resumed.info.run_id)
    assert epochs == sorted(set(epochs)) and epochs[-1] == 2  # every epoch logged once
    assert resumed.data.metrics[n.M_EPOCHS_TRAINED] == 2
    assert not any(WORK_ROOT.rglob("epoch_*.pt"))

    stage.run(params)  # nothing left to do
    (again,) = stage.runs(params)
    assert (again.info.run_id, again.info.end_time) == (resumed.info.run_id, resumed.info.end_time)


def test_a_killed_stage_whose_states_are_gone_kills_the_run_and_its_stale_duplicates(
        stage: Stage, params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    kill_after_first_epoch(monkeypatch, stage, params)
    (lost,) = stage.runs(params)
    shutil.rmtree(WORK_ROOT)
    tracker = Tracker.from_params(params.tracking, baselines=stage.baselines)
    # an older duplicate, as a create whose answer was lost leaves it
    tags = {k: v for k, v in lost.data.tags.items() if k.startswith("opplan.") and k != n.TAG_CREATE_TOKEN}
    stale = tracker.create_run("stale", tags, parent_id=lost.data.tags.get("mlflow.parentRunId"))
    tracker.log_metrics(stale, {stage.progress: 0.5}, step=1)

    stage.run(params)
    status = {r.info.run_id: r.data.tags[n.TAG_STATUS] for r in stage.runs(params)}
    assert status.pop(lost.info.run_id) == n.STATUS_KILLED and status.pop(stale) == n.STATUS_KILLED
    (new_status,) = status.values()
    assert new_status == n.STATUS_FINISHED


def test_final_writes_its_outputs_again_from_a_finished_run_without_training(
        params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dvc repro`` removes a stage's outputs before it runs the stage again."""
    record = run_final(params)
    written = {name: (Path("final") / name).read_bytes() for name in ("model.pt", "run.json", "schedule.csv")}
    shutil.rmtree("final")
    monkeypatch.setattr("opplan.stages.final.train_schedule", lambda *a, **k: pytest.fail("trained again"))
    assert run_final(params) == record
    assert {name: (Path("final") / name).read_bytes() for name in written} == written
    (run,) = STAGES[1].runs(params)
    assert run.info.run_id == record.run_id and not any(WORK_ROOT.rglob("*.pt"))
