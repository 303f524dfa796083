"""Damage between and during stages, each refused with one line before any work is done:
params edited while a stage runs, a plan or final model made under other params, the MLflow
store deleted under kept outputs, a model paired with another run's record; and files
written without touching the process umask."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from tiny import tiny_config, with_current_hash

from opplan import documents
from opplan import names as n
from opplan.config import Params
from opplan.documents import FinalRecord
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_text, file_digest
from opplan.stages import evaluate, final
from opplan.tracking.client import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
import _stage  # noqa: E402 - the stage scripts' shared runner, importable from pipeline/

PLAN = {"mlflow": {"planning_run_id": "p"}, "path": ["S0", "cs/4/0.02"], "final_state": "cs/4/0.02",
        "transitions": [{"src": "S0", "dst": "cs/4/0.02", "chosen_epoch": 1}]}


@pytest.fixture
def project(tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.delenv(n.ENV_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    return Params.model_validate(tiny_config(tiny_shards, tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))


def edited(params: Params, **plan: object) -> Params:
    return params.model_copy(update={"plan": params.plan.model_copy(update=plan)})


def test_final_refuses_a_plan_made_under_other_params_naming_both(project: Params) -> None:
    made = with_current_hash(PLAN, edited(project, delay=2))
    Path("plan.json").write_text(json.dumps(made))
    with pytest.raises(OpplanError) as raised:
        final.run_final(project)
    current = with_current_hash(PLAN, project)["config_hash"]
    assert made["config_hash"] in str(raised.value) and current in str(raised.value)
    assert not Path("final").exists() and not Path("mlflow.db").exists()  # refused before any work


def write_final(params: Params, *, run_id: str = "0" * 32, model: bytes = b"weights") -> None:
    Path("final").mkdir()
    (Path("final") / "model.pt").write_bytes(model)
    (Path("final") / "run.json").write_text(json.dumps(record_of(
        run_id, with_current_hash(PLAN, params)["config_hash"], file_digest(Path("final/model.pt")))))


def record_of(run_id: str, digest: str, model_sha256: str) -> dict:
    """A ``final/run.json`` of one epoch along ``PLAN``."""
    return {"run_id": run_id, "config_hash": digest, "planning_run_id": "p", "final_state": "cs/4/0.02",
            "epochs": 1, n.M_EPOCHS_TRAINED: 1, n.M_CLIPS_SEEN: 8, n.M_COMPUTE_SECONDS: 1.0,
            "schedule": [{"epoch": 1, "state": "cs/4/0.02", "lr": 0.02}], "losses": [2.0],
            "model_sha256": model_sha256}


@pytest.fixture
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "score_model", lambda *a: pytest.fail("scored before the checks"))


def test_evaluate_refuses_a_final_model_of_other_params(project: Params, no_scoring: None) -> None:
    write_final(edited(project, max_epochs=3))
    with pytest.raises(OpplanError, match="final/run.json was made under planning configuration"):
        evaluate.run_evaluate(project)


def test_evaluate_refuses_a_model_that_is_not_the_one_its_record_names(project: Params, no_scoring: None) -> None:
    write_final(project)
    (Path("final") / "model.pt").write_bytes(b"another run's weights")
    with pytest.raises(OpplanError, match="is not the model final/run.json describes"):
        evaluate.run_evaluate(project)


def test_evaluate_checks_the_store_before_scoring(project: Params, no_scoring: None) -> None:
    write_final(project)
    with pytest.raises(OpplanError, match="no MLflow store at"):  # mlflow.db deleted, outputs kept
        evaluate.run_evaluate(project)
    Tracker.from_params(project.tracking)  # a new, empty store: the run is not in it
    with pytest.raises(OpplanError, match=f"names MLflow run {'0' * 32} .* does not hold .*`dvc repro -f final`"):
        evaluate.run_evaluate(project)
    assert not Path("evaluation").exists() and not Path("metrics.json").exists()


def test_final_never_leaves_a_new_model_beside_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "final"
    out.mkdir()
    (out / "model.pt").write_bytes(b"old model")
    (out / "run.json").write_text('{"run_id": "old"}')
    new = tmp_path / "work" / "model.pt"
    new.parent.mkdir()
    new.write_bytes(b"new model")
    seen = []
    real = documents.atomic_write_json

    def write_record(path: Path, record: dict) -> None:
        seen.append(((out / "model.pt").read_bytes(), (out / "run.json").exists()))
        real(path, record)

    monkeypatch.setattr(documents, "atomic_write_json", write_record)
    record = FinalRecord.new(record_of("new", "0" * 16, file_digest(new)))
    final.write_outputs(out, new, record, [])
    assert seen == [(b"new model", False)]  # the old record was gone before the new model came
    assert final.read_record(out) == record
    (out / "model.pt").write_bytes(b"tampered")
    assert final.read_record(out) is None  # a record whose model changed is no record


def test_a_stage_whose_params_changed_while_it_ran_fails_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text("plan:\n  delay: 1\n")
    monkeypatch.setattr(sys, "argv", ["pipeline/x.py", str(params_file)])
    used = []

    def work(params: Params) -> None:
        used.append(params.plan.delay)
        params_file.write_text(yaml.safe_dump({"plan": {"delay": 2}}))  # edited by hand meanwhile

    with pytest.raises(SystemExit) as exited:
        _stage.run_stage(work)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and used == [1] and error.count("\n") == 1
    assert "plan.delay changed while this stage ran (1 when it started, 2 now)" in error


def test_atomic_writes_never_touch_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the process umask was changed"))
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
