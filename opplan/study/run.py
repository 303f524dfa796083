"""Running a study (docs/study.md): the data once, then per replicate r (seed r) and per OP
arm the pipeline's own planning, the paper-shaped grid, and the retrains of OP's path and of
HS's picks on train + val, each scored on the held-out split. Everything lives in the study's
work folder; a replicate's ``replicate.json`` marks it finished and a rerun skips it, and a
replicate cut short resumes from what MLflow (planning's transitions, the retrains) and the
grid's result files already hold.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from opplan.config import AUTHORS_PLAN, Params
from opplan.errors import OpplanError
from opplan.fileio import atomic_write_json
from opplan.params_file import load_params
from opplan.study.config import StudyConfig
from opplan.study.cost import cpu_seconds

log = logging.getLogger(__name__)


@contextmanager
def working_in(folder: Path) -> Iterator[None]:
    """The stages write plan.json, .opplan/ and mlartifacts/ relative to the working folder."""
    folder.mkdir(parents=True, exist_ok=True)
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _merge(params: dict[str, Any], overrides: dict[str, dict[str, Any]], where: str) -> dict[str, Any]:
    for section, values in overrides.items():
        if not isinstance(params.get(section), dict) or not isinstance(values, dict):
            raise OpplanError(f"{where}: {section!r} is not a params section to override")
        params[section] = {**params[section], **values}
    return params


def study_params(cfg: StudyConfig, root: Path, work: Path, seed: int, arm: dict[str, dict[str, Any]] | None = None,
                 arm_name: str | None = None) -> Params:
    """The base params with the study's overrides, its data, the replicate's seed and store."""
    params = load_params(root / cfg.base).model_dump(mode="json")
    params = _merge(params, cfg.overrides, "overrides")
    params = _merge(params, arm or {}, "arms")
    written = (arm or {}).get("plan", {})
    if written.get("setting") == "authors":
        # The base's plan section comes in full, so every key would count as written beside the
        # setting: the setting's own values apply unless the arm itself writes them (design §10c).
        for key in AUTHORS_PLAN:
            if key not in written:
                params["plan"].pop(key, None)
        if "sampling" not in written:
            params["plan"]["sampling"] = params["plan"]["sampling"][:1]
    params["seed"] = seed
    params["data"]["root"] = str(work / "data")
    params["prepare"] |= {"out": str(work / "shards"), "val_size": cfg.data.val_size}
    params["final"] = {**params["final"], "seeds": 1}
    params["baselines"] |= {"enabled": True, "sampling": cfg.grid.sampling, "schedules": cfg.grid.schedules,
                            "decays": cfg.grid.decays, "epochs": cfg.grid.epochs}
    params["tracking"] |= {"uri": f"sqlite:///{work / f'rep{seed}' / 'mlflow.db'}", "experiment": cfg.name}
    params["report"] |= {"out": str(work / f"rep{seed}" / "reports"), "figures": False}
    try:
        return Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = f"arm {arm_name!r}" if arm_name else "overrides"
        raise OpplanError(f"{cfg.name}: {what}: {where}: {err['msg']}") from None


def check_arms(cfg: StudyConfig, root: Path, work: Path) -> None:
    """Every arm's params, validated before anything runs: a bad arm is refused in one line
    instead of after the arms before it have planned."""
    study_params(cfg, root, work, cfg.replicates[0])
    for name, overrides in cfg.arms.items():
        study_params(cfg, root, work, cfg.replicates[0], overrides, name)


def make_data(cfg: StudyConfig, params: Params, work: Path) -> Path:
    """The study's videos (synth, the data seed) and shards, made once; prepare splits internal
    validation with the data seed too, so every replicate sees the same splits."""
    from opplan.data.prepare import prepare_dataset
    from opplan.data.synth import SynthConfig, synthesize

    shards = Path(params.prepare.out)
    done = work / "data.json"
    spec = cfg.data.model_dump()
    if done.is_file() and json.loads(done.read_text()) == spec:
        return shards
    if done.is_file():
        raise OpplanError(f"{work}: the work folder holds another study's data ({done}); use another --workdir")
    synthesize(params.data.root, SynthConfig(seed=cfg.data.seed, train_per_class=cfg.data.train_per_class,
                                             test_per_class=cfg.data.test_per_class, num_classes=cfg.data.classes))
    prepare_dataset(params.data.root, shards, params.prepare, seed=cfg.data.seed)
    atomic_write_json(done, spec)
    return shards


def test_video_ids(shards: Path) -> tuple[list[str], list[int]]:
    """The held-out videos in the order every scoring visits them, and their labels."""
    from opplan.data.dataset import read_videos

    videos = read_videos(shards)
    test = videos[videos["split"] == "test"]
    return test["path"].astype(str).tolist(), test["label_index"].astype(int).tolist()


def plan_arm(params: Params, rep: Path, arm: str) -> dict[str, Any]:
    """Planning of one arm in the replicate's folder, with its core-seconds (the planning
    process and its workers: training and every epoch's validation)."""
    from opplan.stages.plan import run_plan

    record = rep / f"plan-{arm}.cost.json"
    if record.is_file():
        return json.loads(record.read_text())
    started = rep / f"plan-{arm}.started"
    resumed = started.is_file()
    started.touch()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with working_in(rep):
        result = run_plan(params, out_json=Path(f"plan-{arm}.json"), out_png=Path(f"plan-{arm}.png"),
                          out_metrics=Path(f"plan-{arm}.metrics.json"), out_curves=Path(f"curves-{arm}"))
    doc = {"arm": arm, "core_seconds": cpu_seconds() - cpu0, "wall_seconds": time.perf_counter() - wall0,
           "epochs": result.total_epochs_trained, "path_epochs": result.path_epochs, "planned_V": result.score,
           "path": [s.name for s in result.path], "training_seconds": result.total_seconds,
           "resumed": resumed}
    atomic_write_json(record, doc)
    return doc


def retrain(params: Params, rep: Path, schedule: list[Any], state: Any, kind: str, name: str,
            tags: dict[str, Any], ids: list[str], labels: list[int]) -> dict[str, Any]:
    """One retrain on train + val with the replicate's seed (:func:`opplan.stages.repeats.retrain_and_score`,
    reused from MLflow when finished), with its per-video held-out correctness by video id."""
    from opplan import names as n
    from opplan.predictions import per_video
    from opplan.stages.repeats import retrain_and_score
    from opplan.tracking.client import Tracker

    with working_in(rep):
        tracker = Tracker.from_params(params.tracking)
        summary = retrain_and_score(tracker, params, Path(params.prepare.out), schedule, state=state,
                                    seed=params.seed, kind=kind, name=name, tags=tags)
        doc = tracker.read_json_artifact(summary["run_id"], n.ARTIFACT_PREDICTIONS)
    if summary["status"] != n.STATUS_FINISHED or doc is None:
        raise OpplanError(f"{name} retrain (seed {params.seed}, MLflow run {summary['run_id']}) did not finish: "
                          f"{summary['status']}")
    if doc["labels"] != labels or doc.get("video_ids", ids) != ids:
        raise OpplanError(f"{name} retrain (run {summary['run_id']}): its predictions are not the study's "
                          f"held-out videos in order")
    return {"name": name, "run_id": summary["run_id"], "top1": summary["top1"],
            "epochs": summary["epochs_trained"], "correct": [int(v) for v in per_video(doc, "top1")]}


def run_replicate(cfg: StudyConfig, root: Path, work: Path, seed: int, shards: Path, workers: int
                  ) -> dict[str, Any]:
    from opplan import names as n
    from opplan.documents import PlanDocument
    from opplan.stages.baselines import Candidate, build_schedule, candidates
    from opplan.stages.common import config_hash, final_state, stage_config
    from opplan.stages.final import path_schedule
    from opplan.stages.repeats import steps_scale
    from opplan.study import grid as g

    rep = work / f"rep{seed}"
    rep.mkdir(parents=True, exist_ok=True)
    ids, labels = test_video_ids(shards)
    base = study_params(cfg, root, work, seed)
    arms: dict[str, Any] = {}
    for arm, overrides in cfg.arms.items():
        params = study_params(cfg, root, work, seed, overrides, arm)
        cost = plan_arm(params, rep, arm)
        plan_doc = PlanDocument.read(rep / f"plan-{arm}.json")
        tags = {n.TAG_PLAN_RUN: plan_doc.planning_run_id, n.TAG_CONFIG_HASH: plan_doc.config_hash,
                n.TAG_MATCH_STEPS: str(params.final.match_steps)}
        schedule = path_schedule(plan_doc, params, steps_scale(params, shards))  # final.match_steps, as final
        arms[arm] = {**cost, "retrain": retrain(params, rep, schedule, final_state(plan_doc, params),
                                                n.KIND_OP_RETRAIN, f"OP {arm}", tags, ids, labels)}

    grid = candidates(base)
    rows, added = g.run_with_extension(base, shards, grid, cfg.grid.extension, rep / "grid", workers)
    everything = rows + added
    best = g.pick(everything)
    if best is None:
        raise OpplanError(f"replicate {seed}: no grid candidate finished")
    digest = config_hash(stage_config(base, "baselines", shards))

    def hs_retrain(row: dict[str, Any], label: str) -> dict[str, Any]:
        c = Candidate(row["sampling"], row["schedule"], row["decay"], row["epochs"])
        schedule = build_schedule(c, base, steps_scale(base, shards))  # final.match_steps, as the baselines stage
        tags = {n.TAG_SCHEDULE: c.name, n.TAG_CONFIG_HASH: digest}
        if base.final.match_steps:
            tags[n.TAG_MATCH_STEPS] = str(True)
        return retrain(base, rep, schedule, schedule[-1].state, n.KIND_HS_RETRAIN, label, tags, ids,
                       labels) | {"candidate": c.name}

    hs = {"pick": best, "interior": g.interior(everything, best), "retrain": hs_retrain(best, f"HS {best['name']}"),
          "grid_core_seconds": sum(r["core_seconds"] for r in everything),
          "grid_epochs": sum(r["epochs_trained"] for r in everything),
          "declared_core_seconds": sum(r["core_seconds"] for r in rows),
          "declared_epochs": sum(r["epochs_trained"] for r in rows),
          "extension": [r["name"] for r in added], "candidates": everything}
    matched: dict[str, Any] = {}
    for arm, doc in arms.items():
        mpick, taken = g.matched_budget(rows, doc["core_seconds"])
        entry: dict[str, Any] = {"pick": mpick, "taken": taken, "budget": doc["core_seconds"]}
        if mpick is not None and cfg.matched_budget_retrain:
            entry["retrain"] = hs_retrain(mpick, f"HS {mpick['name']}")
        matched[arm] = entry
    return {"seed": seed, "video_ids": ids, "labels": labels, "arms": arms, "hs": hs, "matched": matched}


def run_study(cfg: StudyConfig, root: Path, work: Path, provenance: dict[str, Any], workers: int
              ) -> list[dict[str, Any]]:
    """Every replicate, skipping finished ones (``rep<seed>/replicate.json`` of this config)."""
    check_arms(cfg, root, work)
    work.mkdir(parents=True, exist_ok=True)
    params = study_params(cfg, root, work, cfg.replicates[0])
    shards = make_data(cfg, params, work)
    results = []
    for seed in cfg.replicates:
        done = work / f"rep{seed}" / "replicate.json"
        if done.is_file():
            doc = json.loads(done.read_text())
            if doc.get("config_sha256") == provenance["config_sha256"]:
                log.info("study: replicate %d already finished (%s)", seed, done)
                results.append(doc)
                continue
            raise OpplanError(f"{done}: finished under another config (sha256 {doc.get('config_sha256', '?')[:12]}); "
                              f"use another --workdir")
        log.info("study: replicate %d of %s", seed, cfg.replicates)
        start = time.perf_counter()
        doc = run_replicate(cfg, root, work, seed, shards, workers)
        doc |= {"config_sha256": provenance["config_sha256"], "wall_seconds": time.perf_counter() - start}
        atomic_write_json(done, doc)
        results.append(doc)
    return results


def correctness(results: list[dict[str, Any]], side: str) -> np.ndarray:
    """``(replicates, videos)`` 0/1 correctness of one side, videos matched by id."""
    ids = results[0]["video_ids"]
    rows = []
    for doc in results:
        if doc["video_ids"] != ids:
            raise OpplanError(f"replicate {doc['seed']} scored other held-out videos than replicate "
                              f"{results[0]['seed']}")
        rows.append(_side(doc, side)["correct"])
    return np.asarray(rows, dtype=np.float64)


def _side(doc: dict[str, Any], side: str) -> dict[str, Any]:
    kind, _, arm = side.partition(":")
    if kind == "op":
        return doc["arms"][arm]["retrain"]
    if kind == "hs":
        return doc["hs"]["retrain"]
    return doc["matched"][arm]["retrain"]
