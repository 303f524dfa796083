"""The tiny configuration the stage tests share: params as plain data or validated, a
hand-written ``plan.json`` that ``final`` accepts, and the transitions of a store. A helper
module, not a test file: ``from tiny import tiny_config`` (pytest puts ``tests/`` on the path);
the data it runs on are conftest's ``tiny_dataset`` / ``tiny_shards`` fixtures."""

from __future__ import annotations

from pathlib import Path

from opplan import tracking as t
from opplan.config import Params
from opplan.documents import PlanDocument
from opplan.stages.common import config_hash, planning_config


def tiny_config(shards: Path, **sections: dict) -> dict:
    """The tiny configuration as plain data; each keyword updates the keys of one section
    (``plan={"graph": "extended"}``). Other test modules build on it."""
    config = {
        "seed": 0,
        "device": "cpu",
        "prepare": {"out": str(shards), "short_side": 40},
        "model": {"name": "dg_p3d_tiny", "width": 8, "dropout": 0.2},
        "train": {"crop_size": 32, "scale_jitter": [32, 40], "eval_short_side": 36, "batch_size": 4,
                  "eval_batch_size": 8},
        "runtime": {"num_workers": 0},
        "plan": {"sampling": ["cs"], "clip_lengths": [4, 8], "lrs": [0.02, 0.002], "graph": "basic",
                 "delay": 1, "max_epochs": 2},
        "evaluate": {"clips": 2, "crops": 3, "batch_size": 2},
        "baselines": {"schedules": ["l1-lN"], "decays": ["step", "cosine"], "sampling": ["cs"], "epochs": [2]},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "tiny"},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def with_current_hash(plan: dict, params: Params) -> dict:
    """A hand-written ``plan.json`` for ``params`` (``final`` refuses one made under other params)."""
    return {**hand_written(plan), "config_hash": config_hash(planning_config(params, Path(params.prepare.out)))}


def hand_written(plan: dict) -> dict:
    """``plan``'s path, final state, transitions (``dst`` and ``chosen_epoch`` each) and MLflow ids,
    completed into a valid ``plan.json`` (:class:`opplan.documents.PlanDocument`)."""
    path = plan["path"]
    steps = [{"src": src, "dst": step["dst"], "status": "finished", "score": 0.5, "fitted": 0.5, "observed": 0.5,
              "chosen_epoch": step["chosen_epoch"], "epochs_trained": step["chosen_epoch"], "seconds": 0.0,
              "run_id": None, "checkpoint": None, "se": None, "capped": False}
             for src, step in zip(path, plan["transitions"])]
    done = {"mlflow": {"tracking_uri": "", "experiment_id": "0", **plan["mlflow"]}, "path": path,
            "epochs": [s["chosen_epoch"] for s in steps], "final_state": plan["final_state"], "score": 0.5,
            "prefer": "score", "final_scores": {plan["final_state"]: 0.5}, "transitions": steps, "explored": steps,
            "skipped": [], "best_predecessor": {s["dst"]: s["src"] for s in steps},
            "decision": {"rule": "argmax", "tie_se": 1.0}, "decisions": [], "capped": [],
            "compute": {"path_epochs": sum(s["chosen_epoch"] for s in steps),
                        "epochs_trained": sum(s["chosen_epoch"] for s in steps), "seconds": 0.0,
                        "transitions": len(steps)},
            "diagnosis": {"ok": True, "findings": []}}
    return PlanDocument.from_json({"config_hash": "0" * 16, **done}).to_json()


def tiny_params(shards: Path, store: Path, **plan: object) -> Params:
    return Params.model_validate(tiny_config(shards, plan=plan, tracking={"uri": f"sqlite:///{store}"}))


def transition_runs(params: Params) -> list:
    tracker = t.Tracker(params.tracking.uri, params.tracking.experiment)
    return tracker.search({t.TAG_KIND: t.KIND_TRANSITION})
