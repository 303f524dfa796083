"""The run lifecycle's rules (``opplan.tracking.lifecycle``) on a real SQLite store, no training:
reuse an ended run, resume an interrupted one whose epoch states exist, kill stale duplicates
and unresumable runs, create otherwise, log the summary once. Every stage goes through these
rules; ``test_stage_lifecycle.py`` runs the stages themselves through the same cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from opplan import names as n
from opplan.tracking.client import Tracker
from opplan.tracking.lifecycle import Work, claim_run, log_summary_once
from opplan.train.checkpoint import epoch_state_path


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """One store for the module (making one takes seconds); each test's work has its own key."""
    store = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(n.ENV_URI, raising=False)
        return Tracker(f"sqlite:///{store / 'mlflow.db'}", "lifecycle", artifact_root=store / "mlartifacts")


@pytest.fixture
def work(tmp_path: Path, request: pytest.FixtureRequest) -> Work:
    return Work(label="unit", run_name="unit run", key={n.TAG_KIND: n.KIND_BASELINE, n.TAG_SCHEDULE: request.node.name},
                tags={n.TAG_EPOCHS: 2}, work_root=tmp_path / "work", progress_metric=n.M_TRAIN_LOSS)


def start(tracker: Tracker, work: Work, *, epochs: int = 0, states: bool = False) -> str:
    """A run as a killed process leaves it: ``running``, ``epochs`` logged, epoch states or not."""
    run_id = tracker.create_run(work.run_name, {**work.key, n.TAG_STATUS: n.STATUS_RUNNING})
    for epoch in range(1, epochs + 1):
        tracker.log_metrics(run_id, {work.progress_metric: 1.0 / epoch}, step=epoch)
        if states:
            path = epoch_state_path(work.work_root / run_id, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"state")
    return run_id


def statuses(tracker: Tracker, work: Work) -> dict[str, str]:
    return {r.info.run_id: r.data.tags[n.TAG_STATUS] for r in tracker.search(work.key)}


def test_no_run_creates_one_with_the_key_and_the_tags(tracker: Tracker, work: Work) -> None:
    claim = claim_run(tracker, work)
    run = tracker.get_run(claim.run_id)
    assert claim.ended is None and claim.work_dir == work.work_root / claim.run_id
    assert run.data.tags[n.TAG_STATUS] == n.STATUS_RUNNING and run.data.tags[n.TAG_EPOCHS] == "2"
    assert run.info.run_name == "unit run"


@pytest.mark.parametrize("status", [n.STATUS_FINISHED, n.STATUS_FAILED])
def test_an_ended_run_is_reused_its_folder_cleared_and_running_duplicates_killed(
        tracker: Tracker, work: Work, status: str) -> None:
    ended = start(tracker, work, epochs=2, states=True)  # killed after ending, before clearing
    tracker.end_run(ended, status)
    duplicate = start(tracker, work, epochs=1, states=True)
    claim = claim_run(tracker, work)
    assert claim.run_id == ended and claim.status == status and claim.ended is not None
    assert statuses(tracker, work) == {ended: status, duplicate: n.STATUS_KILLED}
    assert not (work.work_root / ended).exists() and not (work.work_root / duplicate).exists()


def test_an_interrupted_run_with_its_epoch_states_is_resumed(tracker: Tracker, work: Work) -> None:
    run_id = start(tracker, work, epochs=2, states=True)
    claim = claim_run(tracker, work)
    assert (claim.run_id, claim.ended) == (run_id, None)
    assert statuses(tracker, work) == {run_id: n.STATUS_RUNNING}


def test_an_interrupted_run_that_logged_no_epoch_is_resumed(tracker: Tracker, work: Work) -> None:
    run_id = start(tracker, work)
    assert claim_run(tracker, work).run_id == run_id


def test_an_interrupted_run_whose_states_are_gone_is_killed_and_replaced(tracker: Tracker, work: Work) -> None:
    run_id = start(tracker, work, epochs=2, states=False)
    claim = claim_run(tracker, work)
    assert claim.run_id != run_id and claim.ended is None
    assert statuses(tracker, work) == {run_id: n.STATUS_KILLED, claim.run_id: n.STATUS_RUNNING}


def test_of_two_running_runs_the_older_is_killed_and_the_newer_resumed(tracker: Tracker, work: Work) -> None:
    older = start(tracker, work, epochs=1, states=True)
    newer = start(tracker, work, epochs=1, states=True)
    assert claim_run(tracker, work).run_id == newer
    assert statuses(tracker, work) == {older: n.STATUS_KILLED, newer: n.STATUS_RUNNING}


def test_killed_runs_are_never_reused_or_resumed(tracker: Tracker, work: Work) -> None:
    killed = start(tracker, work, epochs=1, states=True)
    tracker.end_run(killed, n.STATUS_KILLED)
    assert claim_run(tracker, work).run_id != killed


def test_runs_of_other_work_or_another_parent_are_not_touched(tracker: Tracker, work: Work) -> None:
    other = Work(**{**work.__dict__, "key": {**work.key, n.TAG_SCHEDULE: work.key[n.TAG_SCHEDULE] + "-other"}})
    theirs = start(tracker, other, epochs=1, states=False)
    nested = Work(**{**work.__dict__, "parent_id": start(tracker, other)})
    claim_run(tracker, nested)
    assert tracker.get_run(theirs).data.tags[n.TAG_STATUS] == n.STATUS_RUNNING


def test_the_summary_is_logged_once(tracker: Tracker, work: Work) -> None:
    run_id = start(tracker, work)
    log_summary_once(tracker, run_id, {n.M_EPOCHS_TRAINED: 2, n.M_COMPUTE_SECONDS: 1.0}, step=2)
    log_summary_once(tracker, run_id, {n.M_EPOCHS_TRAINED: 2, n.M_COMPUTE_SECONDS: 9.0}, step=2)  # a resumed run
    history = tracker.client.get_metric_history(run_id, n.M_COMPUTE_SECONDS)
    assert [m.value for m in history] == [1.0]
