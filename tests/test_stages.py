"""The planning, final, evaluate and baselines stages on the tiny dataset, with a real
MLflow SQLite store: every transition a nested run, the DP fed from MLflow, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import tiny_params, transition_runs

from opplan import tracking as t
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.planning.graph import graph_from_params
from opplan.stages.baselines import run_baselines
from opplan.stages.evaluate import run_evaluate
from opplan.stages.final import run_final
from opplan.stages.plan import run_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planned(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Params]:
    """One planning of the tiny configuration, run in its own project folder."""
    project = tmp_path_factory.mktemp("project")
    params = tiny_params(tiny_shards, project / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        run_plan(params)
    return project, params


def test_plan_logs_one_nested_run_per_edge_and_a_path_of_the_graph(planned: tuple[Path, Params]) -> None:
    project, params = planned
    document = json.loads((project / "plan.json").read_text())
    graph = graph_from_params(params.plan)
    edges = {(a.name, b.name) for a, b in graph.edges}
    path = document["path"]
    assert path[0] == "S0" and path[-1] == "cs/8/0.002"
    assert all((a, b) in edges for a, b in zip(path, path[1:]))

    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    parent = document["mlflow"]["planning_run_id"]
    runs = tracker.search({t.TAG_KIND: t.KIND_TRANSITION}, parent_id=parent)
    assert {(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]) for r in runs} == edges
    assert len(runs) == len(edges) == len(document["explored"])
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        assert tags[t.TAG_STATUS] == t.STATUS_FINISHED
        assert tags[t.TAG_SAMPLING] == "cs" and tags[t.TAG_CLIP_LENGTH] in ("4", "8")
        assert run.info.run_name.removeprefix(t.PATH_MARK) == f"{tags[t.TAG_DST]} ← {tags[t.TAG_SRC]}"  # dst first
        assert {t.M_SCORE, t.M_FITTED, t.M_OBSERVED, t.M_CHOSEN_EPOCH, t.M_EPOCHS_TRAINED} <= set(metrics)
        curve = tracker.history(run.info.run_id, t.M_VAL_ACC)
        assert [step for step, _ in curve] == list(range(int(metrics[t.M_EPOCHS_TRAINED]) + 1))
        assert len(tracker.history(run.info.run_id, t.M_TRAIN_LOSS)) == metrics[t.M_EPOCHS_TRAINED]
        artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/model.pt"}
        root = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
        assert {t.ARTIFACT_CURVE_PLOT, t.ARTIFACT_FIT} <= root  # at the root: MLflow's compare page shows them
        fit = tracker.read_json_artifact(run.info.run_id, t.ARTIFACT_FIT)
        assert fit["function"] == params.plan.fit_function and fit["chosen_epoch"] == metrics[t.M_CHOSEN_EPOCH]
        assert not any(key.startswith("knee_a") for key in metrics) and t.M_LR not in metrics
        for step, value in tracker.history(run.info.run_id, t.M_KNEE_T):  # only once the knee is within reach
            assert value <= step
        assert all(0 <= v <= 1 for _, v in tracker.history(run.info.run_id, t.M_KNEE_VALUE))
        assert tags[t.TAG_ON_PATH] == str(tags[t.TAG_DST] in document["path"] and
                                          document["path"][document["path"].index(tags[t.TAG_DST]) - 1]
                                          == tags[t.TAG_SRC]).lower()
        rivals = [r for r in runs if r.data.tags[t.TAG_DST] == tags[t.TAG_DST]]
        if len(rivals) > 1:  # decided between sources: a margin (absent, never NaN, when its SE is 0) and its rival
            assert tags[t.TAG_DP_VERSUS] != tags[t.TAG_SRC]
            assert math.isfinite(metrics.get(t.M_DP_MARGIN_SE, 0.0)), (tags, metrics)
        else:
            assert t.TAG_DP_VERSUS not in tags and t.M_DP_MARGIN_SE not in metrics
    # the scores in plan.json are the ones MLflow holds
    by_edge = {(r.data.tags[t.TAG_SRC], r.data.tags[t.TAG_DST]): r.data.metrics[t.M_SCORE] for r in runs}
    for record in document["explored"]:
        assert record["score"] == pytest.approx(by_edge[(record["src"], record["dst"])])
    assert (project / "plan.png").stat().st_size > 1000
    assert len(list((project / "plots" / "transitions").glob("*.csv"))) == len(edges)


def test_dp_choice_is_the_argmax_of_the_mlflow_scores(planned: tuple[Path, Params]) -> None:
    project, params = planned
    document = json.loads((project / "plan.json").read_text())
    scores = {(r["src"], r["dst"]): r["score"] for r in document["explored"]}
    final = document["path"][-1]
    incoming = {src: v for (src, dst), v in scores.items() if dst == final}
    assert incoming[document["path"][-2]] == max(incoming.values())  # ties: fewer epochs (test_dp.py)
    assert document["score"] == pytest.approx(max(incoming.values()))


def test_rerun_reuses_finished_transitions_and_retrains_only_an_interrupted_one(
        planned: tuple[Path, Params], monkeypatch: pytest.MonkeyPatch) -> None:
    project, params = planned
    monkeypatch.chdir(project)
    before = {r.info.run_id: r.info.end_time for r in transition_runs(params)}
    first = json.loads((project / "plan.json").read_text())

    run_plan(params)  # nothing to do: every transition finished under this configuration
    assert {r.info.run_id: r.info.end_time for r in transition_runs(params)} == before
    assert json.loads((project / "plan.json").read_text())["path"] == first["path"]

    # an interrupted transition whose work folder is gone: its run is still "running" (as after
    # SIGKILL) and has per-epoch metrics, but no epoch state backs them (kill/resume: test_resume.py)
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    victim = next(r for r in transition_runs(params) if r.data.tags[t.TAG_DST] == "cs/8/0.002")
    tracker.set_tags(victim.info.run_id, {t.TAG_STATUS: t.STATUS_RUNNING})
    run_plan(params)
    after = {r.info.run_id: r for r in transition_runs(params)}
    assert after[victim.info.run_id].data.tags[t.TAG_STATUS] == t.STATUS_KILLED  # not counted any more
    (added,) = set(after) - set(before)  # retrained once, in a new run
    assert after[added].data.tags[t.TAG_STATUS] == t.STATUS_FINISHED
    assert {k: after[added].data.tags[k] for k in (t.TAG_SRC, t.TAG_DST)} == {
        k: victim.data.tags[k] for k in (t.TAG_SRC, t.TAG_DST)}
    untouched = {k: v.info.end_time for k, v in after.items() if k not in (victim.info.run_id, added)}
    assert untouched == {k: v for k, v in before.items() if k != victim.info.run_id}
    counted = [r for r in after.values() if r.data.tags[t.TAG_STATUS] != t.STATUS_KILLED]
    assert len(counted) == len(before)  # none double-counted
    assert json.loads((project / "plan.json").read_text())["path"] == first["path"]


def test_final_evaluate_and_baselines(planned: tuple[Path, Params], monkeypatch: pytest.MonkeyPatch) -> None:
    project, params = planned
    monkeypatch.chdir(project)
    plan = json.loads((project / "plan.json").read_text())
    record = run_final(params).to_json()
    assert record == json.loads((project / "final" / "run.json").read_text())
    assert record["epochs"] == sum(plan["epochs"]) > 0
    assert [row["state"] for row in record["schedule"]] == [
        s for s, e in zip(plan["path"][1:], plan["epochs"]) for _ in range(e)]
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    lengths = tracker.history(record["run_id"], t.M_CLIP_LENGTH)
    assert [int(v) for _, v in lengths] == [int(row["state"].split("/")[1]) for row in record["schedule"]]

    metrics = run_evaluate(params)
    saved = json.loads((project / "metrics.json").read_text())
    for key in (t.M_TOP1, t.M_TOP5, t.M_MEAN_CLASS_ACC, t.M_SINGLE_VIEW_TOP1):
        assert 0.0 <= metrics[key] <= 1.0 and saved[key] == pytest.approx(metrics[key], abs=1e-6)
    assert metrics[t.M_TOP5] >= metrics[t.M_TOP1]
    assert (project / "evaluation" / "confusion.png").is_file()
    assert tracker.get_run(record["run_id"]).data.metrics[t.M_TOP1] == pytest.approx(metrics[t.M_TOP1])

    document = run_baselines(params).to_json()
    assert document == json.loads((project / "baselines.json").read_text())
    assert [c["name"] for c in document["candidates"]] == ["cs/l1-lN/step/2", "cs/l1-lN/cosine/2"]
    assert document["oracle"]["top1"] == max(c["top1"] for c in document["candidates"])
    assert document["selected"]["val_top1"] == max(c["val_top1"] for c in document["candidates"])
    [retrain] = document["retrains"]  # final.seeds: 1
    assert retrain["seed"] == params.seed and 0.0 <= retrain["top1"] <= 1.0
    assert document["grid"]["epochs"] == 4
    again = run_baselines(params).to_json()  # finished candidates are reused, not retrained
    assert [c["run_id"] for c in again["candidates"]] == [c["run_id"] for c in document["candidates"]]

    # two at a time, each in a worker process, as planning's transitions (runtime.plan_workers)
    two = params.model_copy(update={"plan": params.plan.model_copy(update={"workers": 2}),
                                    "baselines": params.baselines.model_copy(update={"epochs": [1]})})
    parallel = run_baselines(two).to_json()
    assert [c["name"] for c in parallel["candidates"]] == ["cs/l1-lN/step/1", "cs/l1-lN/cosine/1"]
    assert all(c["status"] == t.STATUS_FINISHED for c in parallel["candidates"])
    assert parallel["grid"]["epochs"] == 2 and parallel["config_hash"] != document["config_hash"]
    runs = {c["run_id"] for c in parallel["candidates"]}
    assert len(runs) == 2 and not runs & {c["run_id"] for c in document["candidates"]}
    assert run_baselines(two).to_json()["candidates"] == parallel["candidates"]  # reused, as in sequence


def test_diverging_transitions_fail_and_planning_says_when_no_route_is_left(
        tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tiny_shards, tmp_path / "mlflow.db", lrs=[1e30, 1e29], max_epochs=2)
    with pytest.raises(OpplanError, match="every route to the final state"):
        run_plan(params)
    runs = transition_runs(params)
    assert runs and all(r.data.tags[t.TAG_STATUS] == t.STATUS_FAILED for r in runs)
    assert all("training loss became" in r.data.tags[t.TAG_FAILURE] for r in runs)
    assert not (tmp_path / "plan.json").exists()
    assert all(math.isfinite(v) for r in runs for v in r.data.metrics.values())


def test_final_of_a_path_that_kept_every_starting_model_is_s0(
        planned: tuple[Path, Params], monkeypatch: pytest.MonkeyPatch) -> None:
    project, params = planned
    monkeypatch.chdir(project)
    document = json.loads((project / "plan.json").read_text())
    for step in document["transitions"]:
        step["chosen_epoch"] = 0
    document["epochs"] = [0] * len(document["transitions"])  # plan.json's epochs are the transitions' t*
    (project / "plan_t0.json").write_text(json.dumps(document))
    record = run_final(params, plan_path=project / "plan_t0.json", out_dir=project / "final_t0")
    assert record.epochs == 0 and record.schedule == ()
    assert (project / "final_t0" / "model.pt").is_file()


@pytest.mark.parametrize(("lengths", "expected"), [
    ([4, 8, 16], {"l1-lN": [4, 16], "l2-lN": [8, 16], "all": [4, 8, 16]}),
    ([4, 8], {"l1-lN": [4, 8], "l2-lN": [8]}),  # "all" is l1 -> l2 again; l2-lN is l2 throughout
    ([4], {"l1-lN": [4]}),
])
def test_the_grid_has_one_candidate_per_distinct_clip_schedule(lengths: list[int],
                                                                expected: dict[str, list[int]]) -> None:
    from opplan.params_file import load_params
    from opplan.stages.baselines import build_schedule, candidates, clip_lengths_of

    base = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    params = base.model_copy(update={
        "plan": base.plan.model_copy(update={"clip_lengths": lengths}),
        "baselines": base.baselines.model_copy(update={
            "schedules": ["l1-lN", "l2-lN", "all"], "decays": ["cosine"], "sampling": ["us"], "epochs": [6]})})
    grid = candidates(params)
    assert [c.schedule for c in grid] == list(expected)
    for c in grid:
        assert clip_lengths_of(c.schedule, lengths) == expected[c.schedule]
        trained = [e.state.clip_length for e in build_schedule(c, params)]
        assert len(trained) == 6 and list(dict.fromkeys(trained)) == expected[c.schedule]


def test_ui_links_open_the_transitions_with_their_columns_and_compare_the_path(planned: tuple[Path, Params]) -> None:
    """What `opplan ui` prints (docs/operations.md): a shared view of MLflow's UI, written into
    the experiment, filtered to the planning's transitions with V, V_se, chosen_epoch columns."""
    from urllib.parse import unquote

    from opplan.tracking.views import SHARED_VIEW_TAG, planning_links

    project, params = planned
    links = planning_links(params.tracking.uri, params.tracking.experiment, "http://127.0.0.1:5999")
    assert all("workflowType=machine_learning" in link.url for link in links)
    table, compare = links[0].url, links[1].url
    key = table.split("viewStateShareKey=")[1]
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    view = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[SHARED_VIEW_TAG + key])
    assert {"metrics.`V`", "metrics.`V_se`", "metrics.`chosen_epoch`", "tags.`opplan.on_path`"} <= set(
        view["selectedColumns"])
    # sorted by V, best first: sorted by start time, MLflow nests them under a closed parent row
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`V`", False)
    planning = tracker.search({t.TAG_KIND: t.KIND_PLANNING})[-1].info.run_id
    found = tracker.client.search_runs([tracker.experiment_id], view["searchFilter"])
    assert len(found) == len(transition_runs(params)) and planning in view["searchFilter"]
    on_path = {r.info.run_id for r in transition_runs(params) if r.data.tags[t.TAG_ON_PATH] == "true"}
    for run in transition_runs(params):  # the path marked where the table shows it, the name kept otherwise
        tags = run.data.tags
        assert run.info.run_name == (t.PATH_MARK if run.info.run_id in on_path else "") + f"{tags[t.TAG_DST]} ← {tags[t.TAG_SRC]}"
    assert set(json.loads(unquote(compare).split("runs=")[1].split("&")[0])) == on_path
    document = json.loads((project / "plan.json").read_text())
    assert len(on_path) == len(document["path"]) - 1


def checkpoint_file(tracker: t.Tracker, run_id: str) -> Path:
    """Where the local store keeps a run's ``checkpoint/model.pt``."""
    from urllib.parse import urlparse

    return Path(urlparse(tracker.get_run(run_id).info.artifact_uri).path) / "checkpoint" / "model.pt"


def test_a_replaced_or_truncated_checkpoint_is_a_damaged_run_never_its_result(
        planned: tuple[Path, Params], monkeypatch: pytest.MonkeyPatch) -> None:
    project, params = planned
    monkeypatch.chdir(project)
    record = run_final(params)
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    run_id = record.run_id
    assert tracker.get_run(run_id).data.tags["opplan.checkpoint_sha256"] == record.model_sha256
    stored = checkpoint_file(tracker, run_id)
    own = stored.read_bytes()
    other = checkpoint_file(tracker, next(r.info.run_id for r in transition_runs(params)
                                          if r.data.tags[t.TAG_STATUS] == t.STATUS_FINISHED
                                          and "opplan.checkpoint_sha256" in r.data.tags)).read_bytes()
    try:
        for damaged in (other, own[: len(own) // 2]):  # replaced by another valid model; cut short
            stored.write_bytes(damaged)
            (project / "final" / "model.pt").unlink(missing_ok=True)  # as `dvc repro` does before `final`
            with pytest.raises(OpplanError, match=rf"MLflow run {run_id}: its artifact checkpoint/model.pt is not"):
                run_final(params)
            assert not (project / "final" / "model.pt").exists()  # never written from the damaged file
    finally:
        stored.write_bytes(own)
    assert run_final(params).model_sha256 == record.model_sha256


def test_planning_refuses_a_source_checkpoint_replaced_in_the_store(
        planned: tuple[Path, Params], monkeypatch: pytest.MonkeyPatch) -> None:
    project, params = planned
    monkeypatch.chdir(project)
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    runs = [r for r in transition_runs(params) if r.data.tags[t.TAG_STATUS] == t.STATUS_FINISHED]
    source = next(r for r in runs if "opplan.checkpoint_sha256" in r.data.tags
                  and any(d.data.tags[t.TAG_SRC] == r.data.tags[t.TAG_DST] for d in runs))
    dependent = next(d for d in runs if d.data.tags[t.TAG_SRC] == source.data.tags[t.TAG_DST])
    stored = checkpoint_file(tracker, source.info.run_id)
    own = stored.read_bytes()
    other = next(checkpoint_file(tracker, r.info.run_id) for r in runs
                 if r.info.run_id != source.info.run_id and "opplan.checkpoint_sha256" in r.data.tags).read_bytes()
    stored.write_bytes(other)
    tracker.set_tags(dependent.info.run_id, {t.TAG_STATUS: t.STATUS_RUNNING})  # its retraining needs the source
    try:
        with pytest.raises(OpplanError, match=rf"MLflow run {source.info.run_id}: its artifact checkpoint/model.pt"):
            run_plan(params)
    finally:
        stored.write_bytes(own)
    run_plan(params)  # the intact source: the dependent transition retrains from it
