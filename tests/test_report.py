"""``opplan report`` on a synthetic MLflow store made the way the stages make it.

One module-scoped SQLite store (creating it costs MLflow a few seconds) holds:

- ``ucf``: a planning explored by the real DP (:func:`plan_path`) with an oracle that
  logs every transition as ``TransitionRunner`` does (knee metrics from the real
  :class:`KneeStopper`), one failed transition, ``plan.json``; a final run with its
  evaluation; a baseline grid (one candidate failed, one cell all failed, a tie) and an
  older grid that must be ignored. OP beats HS here.
- ``hmdb``: the same on a smaller graph, a 2-candidate grid; OP loses to the oracle HS.
  This grid is scored as ``opplan baselines`` scores it now (docs/design.md §10): ``val_top1`` on
  every candidate, the validation-selected one retrained with two seeds, OP's path
  retrained with a second seed, per-video predictions on every retrain.
- ``bare``: an unfinished planning with two transitions, nothing else.
- ``solo``: a baseline grid without any planning.

The store lives in /dev/shm when there is one: SQLite fsyncs every commit.
"""

from __future__ import annotations

import json
import math
import re
import runpy
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from opplan import tracking as t
from opplan.config import Params, PlanParams, ReportParams, TrackingParams
from opplan.documents import Diagnosis, PlanDocument
from opplan.errors import OpplanError
from opplan.planning import fitting, knee
from opplan.planning.dp import plan_path
from opplan.planning.graph import graph_from_params
from opplan.planning.records import PlanResult, TransitionRecord
from opplan.predictions import log_predictions, mean_over_runs, predictions_json
from opplan.report import run_report
from opplan.stats import paired_compare, video_estimate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parent.parent
SLOW = pytest.mark.slow  # the module's MLflow store takes MLflow 10-20 s to create and fill
TRAIN_VIDEOS = 40
EPOCH_SECONDS = 1.5
BASELINE_EPOCH_SECONDS = 10.0  # full training set, longer clips: a grid epoch costs more than a planning one
FAILING = ("cs/8/0.1", "cs/4/0.01")  # diverges after 2 epochs (in ucf)


# --- building the store -----------------------------------------------------------------------


@dataclass
class Planned:
    """What was logged for one planning (the test's ledger)."""

    run_id: str
    digest: str
    result: PlanResult | None
    transitions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    curves: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    final_run: str | None = None
    evaluation: dict[str, float] = field(default_factory=dict)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _curve(src: str, dst: str, y0: float) -> np.ndarray:
    """A deterministic rise-then-overfit curve, y_0 .. y_40, seeded by the edge, below 1."""
    rng = np.random.default_rng(zlib.crc32(f"{src}>{dst}".encode()))
    gain = (0.9 - y0) * (0.2 + 0.3 * rng.random())
    tau = 1.5 + 2.0 * rng.random()
    e = np.arange(41)
    return y0 + gain * (1 - np.exp(-e / tau)) - 0.0015 * e**2 + rng.normal(0, 0.004, e.size)


class Oracle:
    """``run_transition`` for :func:`plan_path`, logging like ``opplan.stages.transitions.TransitionRunner``."""

    def __init__(self, tracker: t.Tracker, parent: str, plan: PlanParams, ledger: Planned, fail: set) -> None:
        self.tracker, self.parent, self.plan, self.ledger, self.fail = tracker, parent, plan, ledger, fail

    def __call__(self, src: Any, dst: Any, src_record: TransitionRecord | None) -> TransitionRecord:
        src_name = src.name
        tags = {t.TAG_KIND: t.KIND_TRANSITION, t.TAG_SRC: src_name, t.TAG_DST: dst.name, t.TAG_SAMPLING: dst.sampling,
                t.TAG_CLIP_LENGTH: dst.clip_length, t.TAG_LR: f"{dst.lr:g}", t.TAG_STATUS: t.STATUS_RUNNING}
        run_id = self.tracker.create_run(f"{src_name} → {dst.name}", tags, parent_id=self.parent)
        self.tracker.log_params(run_id, {"src": src_name, "dst": dst.name, "sampling": dst.sampling,
                                         "clip_length": dst.clip_length, "lr": dst.lr})
        y0 = src_record.observed if src_record is not None else 0.1
        full = _curve(src_name, dst.name, y0)
        stopper = knee.KneeStopper(self.plan.fit_function, self.plan.delay, self.plan.max_epochs, self.plan.horizon)
        failed = (src_name, dst.name) in self.fail
        curve: list[float] = []
        for epoch, y in enumerate(full):
            if failed and epoch == 3:
                break
            curve.append(float(y))
            decision = stopper.update(float(y))
            metrics = {t.M_VAL_ACC: float(y), t.M_LR: dst.lr}
            if epoch > 0:
                metrics |= {t.M_TRAIN_LOSS: 2.0 / (1 + epoch), t.M_EPOCH_SECONDS: EPOCH_SECONDS}
            if decision.fit is not None:
                fit = decision.fit
                metrics |= {t.M_KNEE_T: fit.t_star, t.M_KNEE_VALUE: fit.value, t.M_KNEE_RMSE: fit.rmse,
                            t.M_KNEE_R2: fit.r2}
                metrics |= {t.M_KNEE_PARAM.format(i): v for i, v in enumerate(fit.params, start=1)}
            self.tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch)
            if decision.stop:
                break
        trained = len(curve) - 1
        summary = {t.M_EPOCHS_TRAINED: trained, t.M_CLIPS_SEEN: trained * TRAIN_VIDEOS,
                   t.M_COMPUTE_SECONDS: trained * EPOCH_SECONDS}
        row = {"src": src_name, "dst": dst.name, "run_id": run_id, **summary}
        if failed:
            self.tracker.set_tags(run_id, {t.TAG_FAILURE: "loss is NaN"})
            record = TransitionRecord(src_name, dst.name, "failed", epochs_trained=trained,
                                      seconds=summary[t.M_COMPUTE_SECONDS], run_id=run_id)
            row |= {"status": "failed"}
        else:
            t_star = decision.chosen_epoch
            fitted = decision.chosen_value if decision.chosen_value is not None else curve[t_star]
            observed = curve[t_star]
            summary |= {t.M_CHOSEN_EPOCH: t_star, t.M_FITTED: fitted, t.M_OBSERVED: observed, t.M_SCORE: fitted}
            if stopper.last_fit is not None:
                summary |= {t.M_KNEE_RMSE: stopper.last_fit.rmse, t.M_KNEE_R2: stopper.last_fit.r2}
            record = TransitionRecord(src_name, dst.name, "finished", score=fitted, fitted=fitted, observed=observed,
                                      chosen_epoch=t_star, epochs_trained=trained,
                                      seconds=summary[t.M_COMPUTE_SECONDS], run_id=run_id)
            row |= {"status": "finished", t.M_CHOSEN_EPOCH: t_star, t.M_FITTED: fitted, t.M_OBSERVED: observed,
                    t.M_SCORE: fitted}
            self.ledger.curves[(src_name, dst.name)] = curve
        self.tracker.log_metrics(run_id, {k: v for k, v in summary.items() if math.isfinite(v)}, step=trained)
        self.tracker.end_run(run_id, t.STATUS_FINISHED if not failed else t.STATUS_FAILED)
        self.ledger.transitions[(src_name, dst.name)] = row
        return record


def _start_planning(tracker: t.Tracker, params: Params, digest: str) -> str:
    """As ``find_or_start_planning``."""
    config = {"seed": params.seed, **params.section_dict("prepare", "model", "train", "plan"), "manifest_hash": "m" * 64}
    run_id = tracker.create_run(f"plan {digest[:8]}", {t.TAG_KIND: t.KIND_PLANNING, t.TAG_CONFIG_HASH: digest,
                                                      t.TAG_MANIFEST_HASH: "m" * 64, t.TAG_STATUS: t.STATUS_RUNNING})
    tracker.log_params(run_id, {**t.flatten("", config), "config_hash": digest})
    return run_id


def _plan(tracker: t.Tracker, params: Params, digest: str, tmp: Path, fail: set) -> Planned:
    """As ``run_plan``: DP over the oracle, plan.json artifact, totals on the planning run."""
    parent = _start_planning(tracker, params, digest)
    ledger = Planned(parent, digest, None)
    result = plan_path(graph_from_params(params.plan), Oracle(tracker, parent, params.plan, ledger, fail))
    document = {"config_hash": digest, "mlflow": {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                                  "planning_run_id": parent}, **result.to_json(),
                "diagnosis": {"ok": True, "findings": []}}
    out = tmp / digest / "plan.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(document))
    tracker.log_artifact(parent, out)
    tracker.log_metrics(parent, {t.M_SCORE: result.score, t.M_EPOCHS_TRAINED: result.total_epochs_trained,
                                 t.M_COMPUTE_SECONDS: result.total_seconds})
    tracker.end_run(parent, t.STATUS_FINISHED)
    ledger.result = result
    return ledger


def _final(tracker: t.Tracker, ledger: Planned, evaluation: dict[str, float]) -> None:
    """As ``run_final`` then ``run_evaluate``."""
    schedule = [(state, lr_epochs) for state, lr_epochs in ledger.result.schedule()]
    run_id = tracker.create_run("final", {t.TAG_KIND: t.KIND_FINAL, t.TAG_PLAN_RUN: ledger.run_id,
                                          t.TAG_CONFIG_HASH: ledger.digest, t.TAG_STATUS: t.STATUS_RUNNING})
    epoch = 0
    for state, count in schedule:
        for _ in range(count):
            epoch += 1
            tracker.log_metrics(run_id, {t.M_TRAIN_LOSS: 3.0 / epoch, t.M_LR: state.lr,
                                         t.M_CLIP_LENGTH: state.clip_length,
                                         t.M_SAMPLING_US: float(state.sampling == "us"),
                                         t.M_EPOCH_SECONDS: 2.0}, step=epoch)
    tracker.log_metrics(run_id, {t.M_EPOCHS_TRAINED: epoch, t.M_CLIPS_SEEN: epoch * 50,
                                 t.M_COMPUTE_SECONDS: 2.0 * epoch}, step=epoch)
    tracker.end_run(run_id, t.STATUS_FINISHED)
    tracker.log_metrics(run_id, evaluation, step=epoch)
    ledger.final_run, ledger.evaluation = run_id, evaluation


VIDEOS = 100
CLASSES = 5


def _predictions(top1: float, seed: int) -> dict[str, Any]:
    """A predictions document of ``VIDEOS`` videos, ``top1`` of them right (random ones)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(VIDEOS) % CLASSES
    right = np.zeros(VIDEOS, dtype=bool)
    right[rng.permutation(VIDEOS)[: round(top1 * VIDEOS)]] = True
    guess = np.where(right, labels, (labels + 1) % CLASSES)
    return predictions_json(np.eye(CLASSES)[guess] * 0.8 + 0.04, labels)


def _retrain(tracker: t.Tracker, kind: str, tags: dict[str, str], seed: int, top1: float) -> dict[str, Any]:
    """As ``repeats.retrain_and_score``: a seeded retrain with its predictions."""
    run_id = tracker.create_run(f"{kind} {seed}", {t.TAG_KIND: kind, **tags, t.TAG_SEED: seed,
                                                   t.TAG_STATUS: t.STATUS_RUNNING})
    doc = _predictions(top1, seed + zlib.crc32(kind.encode()))
    tracker.log_metrics(run_id, {t.M_TOP1: top1, t.M_SINGLE_VIEW_TOP1: top1 - 0.02, t.M_EPOCHS_TRAINED: 4,
                                 t.M_COMPUTE_SECONDS: 40.0}, step=4)
    log_predictions(tracker, run_id, doc)
    tracker.end_run(run_id, t.STATUS_FINISHED)
    return doc


def _baseline(tracker: t.Tracker, digest: str, sampling: str, schedule: str, decay: str, epochs: int,
              lengths: list[int], top1: float | None, val_top1: float | None = None) -> dict[str, Any]:
    """As ``run_candidate``: per-epoch schedule metrics, then compute and scores; top1 None: failed."""
    name = f"{sampling}/{schedule}/{decay}/{epochs}"
    run_id = tracker.create_run(f"HS {name}", {
        t.TAG_KIND: t.KIND_BASELINE, t.TAG_SCHEDULE: name, t.TAG_CONFIG_HASH: digest, t.TAG_SAMPLING: sampling,
        "opplan.clip_schedule": schedule, "opplan.decay": decay, "opplan.epochs": epochs,
        t.TAG_STATUS: t.STATUS_RUNNING})
    trained = epochs if top1 is not None else 2
    per = [lengths[min(i * len(lengths) // epochs, len(lengths) - 1)] for i in range(trained)]
    for i, length in enumerate(per, start=1):
        tracker.log_metrics(run_id, {t.M_TRAIN_LOSS: 1.0 / i, t.M_LR: 0.1, t.M_CLIP_LENGTH: length,
                                     t.M_SAMPLING_US: float(sampling == "us"),
                                     t.M_EPOCH_SECONDS: BASELINE_EPOCH_SECONDS}, step=i)
    metrics = {t.M_EPOCHS_TRAINED: trained, t.M_CLIPS_SEEN: trained * 50,
               t.M_COMPUTE_SECONDS: BASELINE_EPOCH_SECONDS * trained}
    if top1 is not None:
        metrics |= {t.M_TOP1: top1, t.M_TOP5: min(1.0, top1 + 0.3), t.M_MEAN_CLASS_ACC: top1 - 0.01,
                    t.M_SINGLE_VIEW_TOP1: top1 - 0.05}
        if val_top1 is not None:
            metrics[t.M_VAL_TOP1] = val_top1
    else:
        tracker.set_tags(run_id, {t.TAG_FAILURE: "loss is NaN"})
    tracker.log_metrics(run_id, metrics, step=trained)
    tracker.end_run(run_id, t.STATUS_FINISHED if top1 is not None else t.STATUS_FAILED)
    return {"name": name, "sampling": sampling, "schedule": schedule, "decay": decay, "epochs": epochs,
            "top1": top1, "epochs_trained": trained, "seconds": BASELINE_EPOCH_SECONDS * trained, "run_id": run_id,
            "lengths": list(dict.fromkeys(per))}


def _ucf_top1(sampling: str, schedule: str, decay: str, epochs: int) -> float | None:
    if (sampling, schedule, decay) == ("us", "l2-lN", "step") or (sampling, schedule, decay, epochs) == (
            "us", "l1-lN", "step", 6):
        return None  # failed
    value = ({"cs": 0.50, "us": 0.45}[sampling] + {"l1-lN": 0.0, "l2-lN": 0.02, "all": 0.01}[schedule]
             + {"step": 0.0, "cosine": 0.015}[decay] + {4: 0.0, 6: 0.01}[epochs])
    if (sampling, schedule, decay) == ("cs", "all", "cosine"):
        value = 0.53  # a tie over the epoch grid: the fewer epochs win
    return round(value, 6)


def _params(uri: str, experiment: str, out: Path, plan: PlanParams | None = None) -> Params:
    return Params(plan=plan or PlanParams(), tracking=TrackingParams(uri=uri, experiment=experiment),
                  report=ReportParams(out=str(out)))


UCF_PLAN = PlanParams(sampling=["cs"], clip_lengths=[4, 8, 16], lrs=[0.1, 0.01], delay=3, max_epochs=12)
HMDB_PLAN = PlanParams(sampling=["cs"], clip_lengths=[4, 8], lrs=[0.1, 0.01], delay=3, max_epochs=12)


SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("report_store")
    # SQLite fsyncs every commit (~10 ms on a plain disk, ~600 commits here): keep the DB in RAM if we can
    db_dir = Path(tempfile.mkdtemp(prefix="opplan-test-report-", dir=SHM)) if SHM.is_dir() else tmp
    uri = f"sqlite:///{db_dir / 'mlflow.db'}"
    try:
        yield _fill_store(uri, tmp)
    finally:
        if db_dir != tmp:
            shutil.rmtree(db_dir, ignore_errors=True)


def _fill_store(uri: str, tmp: Path) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(t.ENV_URI, raising=False)
        art = tmp / "mlartifacts"
        ucf = t.Tracker(uri, "ucf", artifact_root=art)
        ucf_b = t.Tracker(uri, "ucf-baselines", artifact_root=art)
        old = _baseline(ucf_b, "oldgrid", "cs", "l1-lN", "step", 2, [4, 16], 0.99)  # an older grid: ignored
        ledger = {"ucf": _plan(ucf, _params(uri, "ucf", tmp, UCF_PLAN), "a" * 16, tmp, {FAILING})}
        _final(ucf, ledger["ucf"], {t.M_TOP1: 0.561, t.M_TOP5: 0.87, t.M_MEAN_CLASS_ACC: 0.55,
                                    t.M_SINGLE_VIEW_TOP1: 0.5})
        lengths = {"l1-lN": [4, 16], "l2-lN": [8, 16], "all": [4, 8, 16]}
        ledger["ucf"].baselines = [
            _baseline(ucf_b, "grid1", s, sch, d, e, lengths[sch], _ucf_top1(s, sch, d, e))
            for s in ("cs", "us") for sch in ("l1-lN", "l2-lN", "all") for d in ("step", "cosine") for e in (4, 6)]

        hmdb = t.Tracker(uri, "hmdb", artifact_root=art)
        hmdb_b = t.Tracker(uri, "hmdb-baselines", artifact_root=art)
        ledger["hmdb"] = _plan(hmdb, _params(uri, "hmdb", tmp, HMDB_PLAN), "b" * 16, tmp, set())
        _final(hmdb, ledger["hmdb"], {t.M_TOP1: 0.62, t.M_TOP5: 0.9, t.M_MEAN_CLASS_ACC: 0.6,
                                      t.M_SINGLE_VIEW_TOP1: 0.58, t.M_HELDOUT_SIGNAL: 0.604})
        ledger["hmdb"].baselines = [_baseline(hmdb_b, "g", "cs", "l1-lN", d, 2, [4, 8], v, val)
                                    for d, v, val in (("step", 0.70, 0.55), ("cosine", 0.66, 0.60))]
        op_docs = [_predictions(0.62, 0)]
        log_predictions(hmdb, ledger["hmdb"].final_run, op_docs[0])
        op_docs.append(_retrain(hmdb, t.KIND_OP_RETRAIN, {t.TAG_PLAN_RUN: ledger["hmdb"].run_id,
                                                          t.TAG_CONFIG_HASH: "b" * 16}, 1, 0.60))
        hs_docs = [_retrain(hmdb_b, t.KIND_HS_RETRAIN, {t.TAG_SCHEDULE: "cs/l1-lN/cosine/2", t.TAG_CONFIG_HASH: "g"},
                            seed, top1) for seed, top1 in ((0, 0.50), (1, 0.52))]
        _retrain(hmdb_b, t.KIND_HS_RETRAIN, {t.TAG_SCHEDULE: "cs/l1-lN/step/2", t.TAG_CONFIG_HASH: "g"}, 0, 0.9)
        ledger["hmdb"].predictions = {"op": op_docs, "hs": hs_docs}
        # retrained with final.match_steps while the final run was not: never mixed in
        _retrain(hmdb_b, t.KIND_HS_RETRAIN, {t.TAG_SCHEDULE: "cs/l1-lN/cosine/2", t.TAG_CONFIG_HASH: "g",
                                            t.TAG_MATCH_STEPS: "True"}, 2, 0.9)
        _retrain(hmdb, t.KIND_OP_RETRAIN, {t.TAG_PLAN_RUN: ledger["hmdb"].run_id, t.TAG_CONFIG_HASH: "b" * 16,
                                          t.TAG_MATCH_STEPS: "True"}, 2, 0.9)

        bare = t.Tracker(uri, "bare", artifact_root=art)
        parent = _start_planning(bare, _params(uri, "bare", tmp, HMDB_PLAN), "c" * 16)
        ledger["bare"] = Planned(parent, "c" * 16, None)
        oracle = Oracle(bare, parent, HMDB_PLAN, ledger["bare"], set())
        graph = graph_from_params(HMDB_PLAN)
        for dst in graph.successors(graph.nodes[0]):
            oracle(graph.nodes[0], dst, None)
        solo = t.Tracker(uri, "solo-baselines", artifact_root=art)  # a grid without any planning
        ledger["solo"] = Planned("", "", None, baselines=[_baseline(solo, "s", "us", "all", "cosine", 4, [4, 8], 0.4)])
    return {"uri": uri, "tmp": tmp, "ledger": ledger, "old": old}


@pytest.fixture(scope="module")
def reports(store: dict[str, Any]) -> dict[str, Path]:
    """One report per experiment, each in its own folder."""
    out = {}
    for name in ("ucf", "hmdb", "bare", "solo"):
        folder = store["tmp"] / f"reports_{name}"
        params = _params("sqlite:///elsewhere.db", name, folder)  # --tracking-uri wins over params
        if name == "hmdb":  # figures are tested on ucf (and bare); drawing costs seconds
            params = params.model_copy(update={"report": ReportParams(out=str(folder), figures=False)})
        out[name] = run_report(params, tracking_uri=store["uri"])
    return out


def _csv(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report.parent / f"{name}.csv", keep_default_na=True)


# --- the tables ----------------------------------------------------------------------------------


@SLOW
def test_report_files(reports: dict[str, Path]) -> None:
    report = reports["ucf"]
    assert report == report.parent / "report.md" and report.is_file()
    for name in ("table1", "table3", "table5", "transitions", "comparison"):
        assert (report.parent / f"{name}.csv").is_file()
    tex = (report.parent / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 5 and tex.count(r"\end{table}") == 5
    assert "cs/4/0.1" in tex and r"$\rightarrow$" in tex


@SLOW
def test_transitions_table(store: dict[str, Any], reports: dict[str, Path]) -> None:
    ledger = store["ledger"]["ucf"]
    table = _csv(reports["ucf"], "transitions")
    assert len(table) == len(ledger.transitions) == len(ledger.result.records)
    path = {(a.name, b.name) for a, b in zip(ledger.result.path, ledger.result.path[1:])}
    for row in table.itertuples():
        logged = ledger.transitions[(row.src, row.dst)]
        assert row.run_id == logged["run_id"] and row.status == logged["status"]
        assert row.epochs_trained == logged[t.M_EPOCHS_TRAINED]
        assert row.compute_seconds == pytest.approx(logged[t.M_COMPUTE_SECONDS])
        assert row.on_path == ((row.src, row.dst) in path)
        if logged["status"] == "finished":
            assert row.knee_t == logged[t.M_CHOSEN_EPOCH]
            assert row.fitted == pytest.approx(logged[t.M_FITTED], rel=1e-12)
            assert row.observed == pytest.approx(logged[t.M_OBSERVED], rel=1e-12)
            assert row.V == pytest.approx(logged[t.M_SCORE], rel=1e-12)
        else:
            assert math.isnan(row.V) and math.isnan(row.knee_t)
    assert table.status.tolist().count("failed") == 1
    assert table.on_path.sum() == len(ledger.result.path) - 1


@SLOW
def test_table3(store: dict[str, Any], reports: dict[str, Path]) -> None:
    ledger = store["ledger"]["ucf"]
    table = _csv(reports["ucf"], "table3")
    hs = table[table.method == "HS"]
    assert len(hs) == 12  # 2 samplings x 3 schedules x 2 decays, the older grid not among them
    assert store["old"]["run_id"] not in set(table.run_id.dropna())
    for row in hs.itertuples():
        cands = [b for b in ledger.baselines if (b["sampling"], b["schedule"], b["decay"])
                 == (row.sampling, row.clip_schedule, row.decay) and b["top1"] is not None]
        if not cands:
            assert math.isnan(row.top1) and row.failed == row.candidates == 2
            continue
        best = max(cands, key=lambda b: (b["top1"], -b["epochs"]))
        assert (row.top1, row.epochs, row.run_id) == (pytest.approx(best["top1"]), best["epochs"], best["run_id"])
        longest = max((b for b in ledger.baselines if b["schedule"] == row.clip_schedule),
                      key=lambda b: b["epochs_trained"])
        assert row.clip_lengths == "→".join(map(str, longest["lengths"]))
    tie = hs[(hs.sampling == "cs") & (hs.clip_schedule == "all") & (hs.decay == "cosine")].iloc[0]
    assert tie.epochs == 4  # equal top-1 at 4 and 6 epochs: the fewer win
    op = table[table.method == "OP"].iloc[0]
    assert op.top1 == pytest.approx(0.561) and op.epochs == ledger.result.path_epochs
    md = reports["ucf"].read_text()
    assert "**54.5 (6)**" in md  # the best HS, bold
    assert f"56.1 ({ledger.result.path_epochs})" in md
    assert "| HS | uniform | l2→lN (8→16) | failed |" in md


def _grid(ledger: Planned) -> tuple[dict[str, Any], float, float]:
    done = [b for b in ledger.baselines if b["top1"] is not None]
    best = max(done, key=lambda b: (b["top1"], -b["epochs"]))
    return best, sum(b["seconds"] for b in ledger.baselines), sum(b["epochs_trained"] for b in ledger.baselines)


@SLOW
def test_table5(store: dict[str, Any], reports: dict[str, Path]) -> None:
    table = _csv(reports["ucf"], "table5").set_index("experiment")
    assert sorted(table.index) == ["bare", "hmdb", "ucf"]
    for name in ("ucf", "hmdb"):
        ledger, row = store["ledger"][name], table.loc[name]
        best, seconds, epochs = _grid(ledger)
        assert row.planning_run == ledger.run_id and row.hs_name == best["name"]
        assert row.hs_top1 == pytest.approx(best["top1"])
        assert row.grid_runs == len(ledger.baselines)
        assert row.grid_seconds == pytest.approx(seconds) and row.grid_epochs == epochs
        assert row.op_top1 == pytest.approx(ledger.evaluation[t.M_TOP1])
        assert row.op_delta == pytest.approx(ledger.evaluation[t.M_TOP1] - best["top1"])
        assert row.planning_seconds == pytest.approx(ledger.result.total_seconds)
        assert row.planning_epochs == ledger.result.total_epochs_trained
        assert row.ratio_seconds == pytest.approx(seconds / ledger.result.total_seconds)
        assert row.ratio_epochs == pytest.approx(epochs / ledger.result.total_epochs_trained)
        assert not row.planning_partial
    bare = table.loc["bare"]
    assert bare.planning_partial and math.isnan(bare.op_top1) and bare.grid_runs == 0
    assert bare.planning_epochs == sum(r[t.M_EPOCHS_TRAINED] for r in store["ledger"]["bare"].transitions.values())


@SLOW
def test_table1_refits_the_finished_curves(store: dict[str, Any], reports: dict[str, Path]) -> None:
    ledger = store["ledger"]["ucf"]
    table = _csv(reports["ucf"], "table1").set_index("function")
    assert list(table.index) == list(fitting.FUNCTIONS)
    expected = fitting.table1({f"{k}": v for k, v in ledger.curves.items()})
    assert (table.curves == len(ledger.curves)).all()
    for function in fitting.FUNCTIONS:
        assert table.loc[function, "fitted"] == expected.loc[function, "fitted"]
        assert table.loc[function, "rmse"] == pytest.approx(expected.loc[function, "rmse"], rel=1e-9)
        assert table.loc[function, "r2"] == pytest.approx(expected.loc[function, "r2"], rel=1e-9)
    assert table.loc["exponential", "rmse"] < 0.01  # curves made with noise sd 0.004


# --- the summary ---------------------------------------------------------------------------------


@SLOW
def test_planned_v_and_the_final_model_in_the_same_signal(reports: dict[str, Path]) -> None:
    hmdb = reports["hmdb"].read_text()  # evaluated with heldout_plan_signal: the same metric and protocol
    assert "internal validation) against 0.604 for the final model in the same signal on the held-out split" in hmdb
    # V in one unit everywhere: the fraction MLflow logs and the figures draw (held-out top-1 stays in %)
    assert re.search(r"planned score V = 0\.\d{4} \(a fraction, as MLflow logs it\)", hmdb)
    rows = [line for line in hmdb.splitlines() if line.startswith("| S0 → ")]
    assert rows and all(re.search(r"\| 0\.\d{4} \| 0\.\d{4} \| 0\.\d{4} \|", row) for row in rows), rows
    assert "(top1, fitted, 1 clip, internal validation)" in hmdb
    ucf = reports["ucf"].read_text()  # an older evaluation without it: says the metrics differ
    assert "50.0% single-view top-1 on the held-out split for the final model (another metric" in ucf


def test_summary_op_wins(store: dict[str, Any], reports: dict[str, Path]) -> None:
    ledger = store["ledger"]["ucf"]
    best, seconds, epochs = _grid(ledger)
    summary = reports["ucf"].read_text().split("## Summary")[1].split("##")[0]
    path = " → ".join(["S0", *(f"{s.name} ({e} ep)" for s, e in zip(ledger.result.path[1:], ledger.result.epochs))])
    assert path in summary
    assert "top-1 56.1%, top-5 87.0%, mean class accuracy 55.0% (single view top-1 50.0%)" in summary
    assert f"`{best['name']}` with top-1 54.5%" in summary
    assert "OP beats HS by 1.6 points top-1" in summary and "loses" not in summary
    ratio_s, ratio_e = seconds / ledger.result.total_seconds, epochs / ledger.result.total_epochs_trained
    assert f"OP : grid = 1 : {ratio_s:.1f} in compute time and 1 : {ratio_e:.1f} in epochs" in summary
    assert f"{ledger.result.total_epochs_trained} epochs" in summary and f"{seconds:.0f} s" in summary
    assert ratio_s > 1 and "cost more" not in summary


@SLOW
def test_summary_says_when_op_loses(reports: dict[str, Path]) -> None:
    summary = reports["hmdb"].read_text().split("## Summary")[1].split("##")[0]
    # hmdb's grid was chosen on validation: its candidates saw internal train only, so the oracle
    # is stated but not turned into "OP beats/loses" (the verdict is the paired test).
    assert "trained on internal train only and so not comparable with OP's retrain" in summary
    assert "(−8.0 points)" in summary and "OP loses" not in summary
    assert "**planning cost more than the whole grid search**" in summary  # 2 grid runs: cheaper than planning
    text = reports["hmdb"].read_text()
    assert "report.figures: false" in text and not (reports["hmdb"].parent / "figures").exists()


@SLOW
def test_comparison_selects_hs_on_validation_and_pairs_the_seeds(store: dict[str, Any],
                                                                 reports: dict[str, Path]) -> None:
    ledger = store["ledger"]["hmdb"]
    table = _csv(reports["hmdb"], "comparison").set_index("row")
    op, hs = ledger.predictions["op"], ledger.predictions["hs"]
    op_row = table.loc["OP: planned path, retrained"]
    expected = video_estimate(mean_over_runs(op))
    assert op_row.top1 == pytest.approx(0.61) and op_row.seeds == 2
    assert op_row.seed_sd == pytest.approx(np.std([0.62, 0.60], ddof=1))
    assert (op_row.low, op_row.high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    hs_row = table.loc["HS: chosen on validation, retrained"]
    assert hs_row["name"] == "cs/l1-lN/cosine/2"  # best on validation, not the oracle's step schedule
    # neither the other schedule's retrain nor those with another final.match_steps are mixed in
    assert hs_row.top1 == pytest.approx(0.51) and hs_row.seeds == 2
    oracle = table.loc["HS oracle: best on the test split (paper's view)"]
    assert oracle["name"] == "cs/l1-lN/step/2" and oracle.top1 == pytest.approx(0.70)
    assert table.loc["HS grid: mean of the candidates"].top1 == pytest.approx(0.68)
    assert table.loc["HS grid: median of the candidates"].top1 == pytest.approx(0.68)
    test = paired_compare(mean_over_runs(op), mean_over_runs(hs), delta=0.03)  # report.margin's default
    word = {"better": "OP better", "non-inferior": "OP non-inferior", "worse": "OP worse",
            "inconclusive": "inconclusive"}[test.verdict]
    summary = reports["hmdb"].read_text().split("## Summary")[1].split("##")[0]
    assert f"Verdict at δ = 3 points: **{word}**" in summary and f"paired over {VIDEOS} videos" in summary
    assert "Against HS chosen on internal validation (`cs/l1-lN/cosine/2`" in summary
    assert "over 2 seeds" in summary
    row = _csv(reports["hmdb"], "table5").set_index("experiment").loc["hmdb"]
    assert row.hs_selected_name == "cs/l1-lN/cosine/2" and row.hs_selected_top1 == pytest.approx(0.51)
    assert row.op_seeds == row.hs_seeds == 2 and row.verdict == test.verdict
    assert row.paired_diff == pytest.approx(test.diff)


@SLOW
def test_an_old_grid_without_validation_scores_gives_no_verdict(reports: dict[str, Path]) -> None:
    text = reports["ucf"].read_text()
    assert "No verdict: the grid was scored without internal validation" in text
    assert "the paper's oracle view" in text


@SLOW
def test_missing_pieces_are_stated(store: dict[str, Any], reports: dict[str, Path]) -> None:
    text = reports["bare"].read_text()
    assert "has not finished" in text and "there is no chosen path yet" in text
    assert "no final run" in text.lower() and "No baselines" in text
    assert "(partial" in text
    assert not (reports["bare"].parent / "figures" / "graph.png").exists()  # no path: no graph figure
    assert (reports["bare"].parent / "figures" / "transitions.png").is_file()
    assert not (reports["bare"].parent / "table3.csv").exists()  # no grid: no Table 3


@SLOW
def test_baselines_without_planning(store: dict[str, Any], reports: dict[str, Path]) -> None:
    text = reports["solo"].read_text()
    assert "Experiment `solo` has no planning run yet" in text
    hs = _csv(reports["solo"], "table3")
    assert hs.method.tolist() == ["HS"] and hs.top1.tolist() == [pytest.approx(0.4)]
    assert hs.run_id.tolist() == [store["ledger"]["solo"].baselines[0]["run_id"]]
    assert "solo" not in set(_csv(reports["solo"], "table5").experiment)  # Table 5 lists plannings only


# --- the figures ---------------------------------------------------------------------------------


@SLOW
@pytest.mark.parametrize("name", ["graph.png", "transitions.png", "final_schedule.png"])
def test_figures_are_pngs(reports: dict[str, Path], name: str) -> None:
    from PIL import Image

    path = reports["ucf"].parent / "figures" / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
        assert min(image.size) > 100
    assert f"](figures/{name})" in reports["ucf"].read_text()


# --- errors and the bench script -----------------------------------------------------------------


def test_nonexistent_store_is_an_error_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(OpplanError, match="no MLflow store"):
        run_report(_params(f"sqlite:///{missing}", "ucf", tmp_path / "out"))
    assert not missing.exists() and not (tmp_path / "out").exists()


@SLOW
def test_unknown_experiment_is_an_error(store: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(OpplanError, match="no opplan runs for experiment 'kinetics'"):
        run_report(_params(store["uri"], "kinetics", tmp_path / "out"))


@SLOW
def test_bench_cost(store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("tracking:\n  experiment: ucf\n")
    monkeypatch.chdir(tmp_path)
    bench = runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "cost.py"))
    assert bench["main"](["--tracking-uri", store["uri"]]) == 0
    out = capsys.readouterr().out.splitlines()
    ledger = store["ledger"]["ucf"]
    _, seconds, epochs = _grid(ledger)
    ucf = next(line for line in out if line.startswith("ucf"))
    assert f"grid : OP = {seconds / ledger.result.total_seconds:.1f}× in seconds" in ucf
    assert f"{epochs / ledger.result.total_epochs_trained:.1f}× in epochs" in ucf
    assert "OP top-1 56.1 vs HS top-1 54.5" in ucf
    assert len(out) == 3


# --- pure pieces (no store) ------------------------------------------------------------------------


def test_path_steps_reads_the_plan_json_path() -> None:
    from opplan.report.compare import Step, path_steps

    raw = json.loads((ROOT / "plan.json").read_text())
    expected = tuple(Step(a, b, e) for a, b, e in zip(raw["path"], raw["path"][1:], raw["epochs"]))
    assert len(expected) == len(raw["path"]) - 1 > 0
    assert path_steps(PlanDocument.read(ROOT / "plan.json")) == expected
    assert path_steps(None) is None


def test_best_candidate_prefers_fewer_epochs_and_skips_failed() -> None:
    from opplan.report.compare import best_candidate

    grid = pd.DataFrame({"name": ["a", "b", "c", "d"], "status": ["finished", "finished", "failed", "finished"],
                         t.M_TOP1: [0.5, 0.5, 0.9, float("nan")], "epochs": [8, 4, 4, 2]})
    assert best_candidate(grid)["name"] == "b"
    assert best_candidate(grid.iloc[2:]) is None


def test_formatting() -> None:
    from opplan.report.compare import Cost
    from opplan.report.render import latex_escape, md_escape
    from opplan.report.tables import cost_text, pct, points

    assert (pct(0.6172), pct(None), pct(float("nan"))) == ("61.7", "–", "–")
    assert (points(-0.08), points(0.016)) == ("−8.0", "+1.6")
    assert cost_text(Cost(720.0, 57, 0, partial=True)) == "0.20 h (720 s), 57 ep (partial)"
    assert md_escape("t* and **61.7 (12)**") == "t\\* and **61.7 (12)**"
    assert latex_escape("**61.7** 50% a_b 4→8 t*") == r"\textbf{61.7} 50\% a\_b 4$\rightarrow$8 t$^*$"


def test_explicit_uri_wins_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(t.ENV_URI, "sqlite:////somewhere/else.db")
    monkeypatch.chdir(tmp_path)
    assert t.resolve_read_uri("sqlite:///my.db", "sqlite:///params.db") == f"sqlite:///{tmp_path / 'my.db'}"
    assert t.resolve_read_uri(None, "sqlite:///params.db") == "sqlite:////somewhere/else.db"


def test_the_planning_diagnosis_is_stated_with_what_to_change() -> None:
    from opplan.report.compare import Comparison, Cost, Noise
    from opplan.report.summary import summary_points

    diagnosis = Diagnosis.model_validate({"ok": False, "findings": [
        {"code": "at_chance", "seen": "every transition within 2 SE of chance", "change": "higher plan.lrs"}]})
    noise = Noise(None, None, None, None, None, None, None, None, diagnosis)
    cmp = Comparison("e", "run", "h" * 16, "finished", None, None, Cost(1.0, 1.0, 1.0), None, None, None, None,
                     None, 0, 0, noise=noise)
    text = summary_points(cmp, "e")
    assert ("**Planning diagnosis: at_chance: every transition within 2 SE of chance (what to change: higher "
            "plan.lrs).**") in text
    assert len(text.splitlines()) > 1 and all(line.startswith("- ") for line in text.splitlines())  # one point a line
    ok = Comparison("e", "run", "h" * 16, "finished", None, None, Cost(1.0, 1.0, 1.0), None, None, None, None, None,
                    0, 0, noise=Noise(None, None, None, None, None, None, None, None, Diagnosis(ok=True, findings=())))
    assert "diagnosis" not in summary_points(ok, "e")


def test_figures_share_the_y_scale_and_label_axes_and_marks(tmp_path: Path) -> None:
    """The transitions figure: one y-scale, SE bars, axis labels, a legend for every mark;
    the schedule's clip length on integer ticks in frames."""
    import pandas as pd

    from opplan.report import figures
    from opplan.report.compare import Comparison

    saved: list = []
    original = figures.atomic_savefig
    figures.atomic_savefig = lambda fig, path, **kw: saved.append(fig) or original(fig, path, **kw)
    try:
        rows = pd.DataFrame([{"planning_run": "p", "run_id": f"r{i}", "src": "S0", "dst": f"cs/{4 * (i + 1)}/0.1",
                              "status": t.STATUS_FINISHED, "start_time": i, t.M_CHOSEN_EPOCH: 2.0,
                              "fit_params": ()} for i in range(3)])
        curves = {f"r{i}": pd.DataFrame({t.M_VAL_ACC: [0.1 * i, 0.2 + 0.1 * i, 0.3], t.M_VAL_SE: [0.05] * 3})
                  for i in range(3)}
        cmp = Comparison.__new__(Comparison)
        object.__setattr__(cmp, "planning_run", "p")
        object.__setattr__(cmp, "path", None)
        object.__setattr__(cmp, "config_hash", "abcdef0123")
        figures.curves_figure(rows, curves, cmp, "exponential", tmp_path / "transitions.png")
        history = pd.DataFrame({t.M_CLIP_LENGTH: [8.0, 8.0, 8.0], t.M_TRAIN_LOSS: [2.0, 1.5, 1.2]}, index=[1, 2, 3])
        figures.schedule_figure(history, cmp, tmp_path / "schedule.png")
    finally:
        figures.atomic_savefig = original
    panels = [ax for ax in saved[0].axes if ax.axison]
    assert len({ax.get_ylim() for ax in panels}) == 1  # one y-scale
    assert panels[0].get_ylabel() and all(ax.get_xlabel() for ax in panels[-2:])
    assert [text.get_text() for text in saved[0].legends[0].get_texts()][:3] == [
        "observed ± 1 SE", "exponential fit", "kept epoch t*"]
    clip = saved[1].axes[0]
    assert "frames" in clip.get_ylabel() and list(clip.get_yticks()) == [8.0]


def workspace_plan(planning_run: str) -> dict:
    """The committed ``plan.json``, naming ``planning_run``."""
    document = json.loads((ROOT / "plan.json").read_text())
    document["mlflow"]["planning_run_id"] = planning_run
    return document


def workspace_record(run_id: str, planning_run: str) -> dict:
    """The committed ``final/run.json``, naming final run ``run_id`` of ``planning_run``."""
    return {**json.loads((ROOT / "final" / "run.json").read_text()), "run_id": run_id,
            "planning_run_id": planning_run}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, t.Tracker, Params]:
    """A project folder (the working directory) with an empty store of experiment ``x`` and
    params that report on it without figures."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(t.ENV_URI, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = t.Tracker(uri, "x", artifact_root=tmp_path / "mlartifacts")
    params = _params(uri, "x", tmp_path / "reports", HMDB_PLAN).model_copy(
        update={"report": ReportParams(out=str(tmp_path / "reports"), figures=False)})
    return uri, tracker, params


def test_report_follows_the_planning_that_plan_json_names_and_says_when_the_store_lacks_it(
        workspace: tuple[str, t.Tracker, Params], tmp_path: Path) -> None:
    """After `dvc exp apply` the workspace's plan.json names an older planning than the store's
    latest: the report is about plan.json's; a planning run deleted from the store is said, with
    advice that works (`dvc repro --force plan`; a plain `dvc repro plan` sees no change)."""
    uri, tracker, params = workspace
    applied, latest = (_start_planning(tracker, params, d * 16) for d in "de")
    for run_id in (applied, latest):
        tracker.end_run(run_id, t.STATUS_FINISHED)
    (tmp_path / "plan.json").write_text(json.dumps(workspace_plan(applied)))
    from opplan.report import workspace_planning_run
    from opplan.report.collect import read_store

    assert read_store(uri, "x", workspace_plan=workspace_planning_run(Path("plan.json"))).primary == applied
    assert read_store(uri, "x").primary == latest
    invalid = {**workspace_plan(applied), "path": "S0"}  # not a plan document: followed by nothing, said in the log
    (tmp_path / "plan.json").write_text(json.dumps(invalid))
    assert workspace_planning_run(Path("plan.json")) is None
    (tmp_path / "plan.json").write_text(json.dumps(workspace_plan(applied)))
    assert "plan.json names" not in run_report(params).read_text()

    tracker.client.delete_run(applied)
    text = run_report(params).read_text()
    assert f"plan.json names planning run `{applied}`" in text and "dvc repro --force plan" in text


def test_report_follows_the_final_run_that_final_run_json_names(
        workspace: tuple[str, t.Tracker, Params], tmp_path: Path) -> None:
    """Two final runs follow one planning (e.g. `dvc exp apply` of an older experiment): the
    report is about the one `final/run.json` names, not the store's latest; a run it names that
    the store does not hold is said, and the latest is shown."""
    uri, tracker, params = workspace
    planning = _start_planning(tracker, params, "f" * 16)
    tracker.end_run(planning, t.STATUS_FINISHED)
    (tmp_path / "plan.json").write_text(json.dumps(workspace_plan(planning)))
    finals = []
    for top1 in (0.4, 0.6):  # the second is the latest: what the report shows without run.json
        run_id = tracker.create_run("final", {t.TAG_KIND: t.KIND_FINAL, t.TAG_PLAN_RUN: planning,
                                              t.TAG_CONFIG_HASH: "f" * 16, t.TAG_STATUS: t.STATUS_RUNNING})
        tracker.end_run(run_id, t.STATUS_FINISHED)
        tracker.log_metrics(run_id, {t.M_TOP1: top1})
        finals.append(run_id)
    from opplan.report.collect import read_store
    from opplan.report.compare import compare

    def reported_final() -> str | None:
        from opplan.report import workspace_final_run, workspace_planning_run

        data = read_store(uri, "x", workspace_plan=workspace_planning_run(Path("plan.json")),
                          workspace_final=workspace_final_run(Path("final") / "run.json"))
        return compare(data, data.primary).final_run

    assert reported_final() == finals[1]
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "run.json").write_text(json.dumps(workspace_record(finals[0], planning)))
    assert reported_final() == finals[0]
    assert "final/run.json names" not in run_report(params).read_text()

    (tmp_path / "final" / "run.json").write_text(json.dumps(workspace_record("0" * 32, planning)))
    assert reported_final() == finals[1]
    text = run_report(params).read_text()
    assert f"final/run.json names final run `{'0' * 32}`" in text and "dvc repro --force final" in text
