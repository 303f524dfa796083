"""The documents the stages hand each other (:mod:`opplan.documents`): the committed files read
back unchanged, a new file is the same bytes plus ``schema_version``, and a bad file is refused
in one line naming it and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from opplan.documents import SCHEMA_VERSION, BaselinesDocument, Document, FinalRecord, PlanDocument
from opplan.errors import OpplanError
from opplan.planning.dp import plan_path
from opplan.planning.graph import build_graph
from opplan.planning.records import TransitionRecord

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = [(PlanDocument, ROOT / "plan.json"), (FinalRecord, ROOT / "final" / "run.json"),
             (BaselinesDocument, ROOT / "baselines.json")]


def raw(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def without_version(path: Path) -> str:
    """``path``'s text as a version 1 file written before ``schema_version`` existed."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert lines[1] == f'  "schema_version": {SCHEMA_VERSION},\n'  # written first, as `new` does
    return "".join(lines[:1] + lines[2:])


@pytest.mark.parametrize(("kind", "path"), COMMITTED, ids=lambda v: getattr(v, "name", ""))
def test_the_committed_files_read_back_identically(kind: type[Document], path: Path, tmp_path: Path) -> None:
    document = kind.read(path)
    assert document.to_json() == raw(path)
    document.write(tmp_path / "again.json")  # as a stage writes it: the same bytes
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert next(iter(document.to_json())) == "schema_version"


@pytest.mark.parametrize(("kind", "path"), COMMITTED, ids=lambda v: getattr(v, "name", ""))
def test_a_file_from_before_the_schema_version_reads_as_version_1_and_keeps_its_bytes(
        kind: type[Document], path: Path, tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(without_version(path), encoding="utf-8")
    old = kind.read(tmp_path / "old.json")
    assert old == kind.read(path) and old.schema_version == SCHEMA_VERSION
    assert "schema_version" not in old.to_json()
    old.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "old.json").read_bytes()
    kind.new(old.to_json()).write(tmp_path / "new.json")  # a new one from its fields: the committed bytes
    assert (tmp_path / "new.json").read_bytes() == path.read_bytes()


def test_what_the_planner_writes_is_a_plan_document() -> None:
    """The DP's own output (with the fields the plan stage adds) validates and round-trips,
    also with a failed and a pruned transition (``-inf`` scores written as ``null``)."""
    graph = build_graph(["cs"], [4, 8], [0.1, 0.01], kind="basic")
    scores = {"cs/4/0.1": 0.4, "cs/8/0.1": 0.5, "cs/4/0.01": 0.45, "cs/8/0.01": 0.6}

    def run(src, dst, _record) -> TransitionRecord:
        if dst.name == "cs/4/0.01":
            return TransitionRecord(src, dst, "failed", epochs_trained=2, seconds=1.0)
        return TransitionRecord(src, dst, "finished", scores[dst.name], scores[dst.name], scores[dst.name], 3, 5,
                                2.5, run_id="r", se=0.05)

    result = plan_path(graph, run)
    fields = {"config_hash": "0" * 16, "mlflow": {"tracking_uri": "sqlite:///m.db", "experiment_id": "1",
                                                  "planning_run_id": "p"},
              **result.to_json(), "diagnosis": {"ok": True, "findings": []}}
    document = PlanDocument.new(fields)
    assert document.to_json() == {"schema_version": SCHEMA_VERSION, **fields}
    assert [s.name for s in result.path] == list(document.path) and document.planning_run_id == "p"
    assert any(t.status == "failed" and t.score is None for t in document.explored)


def bad(kind: type[Document], path: Path, edit) -> str:
    document = raw(path)
    edit(document)
    with pytest.raises(OpplanError) as refused:
        kind.from_json(document)
    return str(refused.value)


def test_a_wrong_field_is_refused_in_one_line_naming_file_and_field() -> None:
    plan, record, grid = (path for _, path in COMMITTED)

    def wrong_epoch(d: dict) -> None:
        d["transitions"][1]["chosen_epoch"] = "7"

    def drop_s0(d: dict) -> None:
        d["path"].pop(0)
        d["path"].insert(0, d["transitions"][0]["dst"])

    message = bad(PlanDocument, plan, wrong_epoch)
    assert message.startswith("plan.json: field transitions[1].chosen_epoch: expected a whole number")
    assert "`dvc repro plan`" in message and "\n" not in message
    assert "field mlflow.planning_run_id is missing" in bad(PlanDocument, plan,
                                                            lambda d: d["mlflow"].pop("planning_run_id"))
    assert "unknown field losses" in bad(PlanDocument, plan, lambda d: d.update(losses=[]))
    assert "field final_state is 'S0', but path ends at" in bad(PlanDocument, plan,
                                                                 lambda d: d.update(final_state="S0"))
    first = raw(plan)["transitions"][0]["dst"]
    assert f"field path starts at {first!r}, not at S0" in bad(PlanDocument, plan, drop_s0)
    assert "but transitions[0] keeps" in bad(PlanDocument, plan, lambda d: d["epochs"].__setitem__(0, 999))
    assert bad(FinalRecord, record, lambda d: d.update(epochs=True)).startswith(
        "final/run.json: field epochs: expected a whole number >= 0, got True")
    assert "field schedule has" in bad(FinalRecord, record, lambda d: d["schedule"].pop())
    assert "field model_sha256 is missing" in bad(FinalRecord, record, lambda d: d.pop("model_sha256"))
    assert bad(BaselinesDocument, grid, lambda d: d["selected"].update(top1="high")).startswith(
        "baselines.json: field selected.top1: expected a number, got 'high'")
    assert "field grid.candidates is" in bad(BaselinesDocument, grid, lambda d: d["candidates"].pop())


def test_another_schema_version_a_missing_file_and_bad_json_are_refused(tmp_path: Path) -> None:
    newer = {**raw(ROOT / "baselines.json"), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(OpplanError, match=rf"baselines.json: schema_version {SCHEMA_VERSION + 1} is not one"):
        BaselinesDocument.from_json(newer)
    with pytest.raises(OpplanError, match=r"plan.json not found; it is made by the `plan` stage"):
        PlanDocument.read(tmp_path / "plan.json")
    (tmp_path / "run.json").write_text('{"run_id": ')
    with pytest.raises(OpplanError, match=r"run.json: not valid JSON \(.*\); it is made by the `final` stage"):
        FinalRecord.read(tmp_path / "run.json")
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(OpplanError, match="run.json: expected a JSON object, got list"):
        FinalRecord.read(tmp_path / "run.json")


def test_a_switched_off_grid_and_numbers_keep_their_form() -> None:
    off = {"enabled": False, "candidates": [], "selected": None, "retrains": [], "oracle": None, "grid": None}
    assert BaselinesDocument.new(off).to_json() == {"schema_version": SCHEMA_VERSION, **off}
    with pytest.raises(OpplanError, match="field config_hash is missing"):
        BaselinesDocument.new({**off, "enabled": True})
    grid = raw(ROOT / "baselines.json")
    grid["candidates"][0]["top1"] = float("nan")  # MLflow may hold a NaN metric; json writes NaN
    grid["candidates"][1]["clips_seen"] = 0  # an int stays an int, a float a float
    back = BaselinesDocument.from_json(grid).to_json()
    assert math.isnan(back["candidates"][0]["top1"]) and back["candidates"][1]["clips_seen"] == 0
    assert isinstance(back["candidates"][1]["clips_seen"], int) and isinstance(back["grid"]["epochs"], float)


def test_documents_are_frozen() -> None:
    document = PlanDocument.read(ROOT / "plan.json")
    with pytest.raises(ValueError):
        document.config_hash = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        document.transitions[0].chosen_epoch = 1  # type: ignore[misc]
