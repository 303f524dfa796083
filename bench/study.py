"""OP against hand-tuned schedules at a scale that can tell them apart (docs/design.md §10).

    python bench/study.py [--smoke] [--out DIR] [--workdir DIR] [--seeds N]

Runs the whole pipeline's own functions (prepare, plan, final, evaluate, baselines, report)
in a fresh project folder on the demo generator's videos, with validation and test splits
large enough that one standard error of a top-1 is at most 3 points (280 videos each: at
50 % the SE is 3.0 points), ``final.seeds`` retrains of OP's path and of the HS chosen on
internal validation, and a grid of three epoch totals. Prints one table (OP and HS top-1
with 95 % intervals, compute, the grid : OP ratio, the paired verdict) and writes it as
``study.json`` and ``study.md`` into ``--out``.

The full study takes about 50 minutes on 2 CPU cores (see the estimate printed by
``--smoke``, which runs the same code at a tiny scale in about two minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opplan.config import Params, load_params  # noqa: E402
from opplan.data.synth import SynthConfig, synthesize  # noqa: E402

log = logging.getLogger("study")


@dataclass(frozen=True)
class Scale:
    """The study's size: the dataset, the grid and the seeds."""

    classes: int | None
    train_per_class: int  # internal train + internal validation (prepare.val_size: the test size)
    test_per_class: int
    seeds: int
    epochs: tuple[int, ...]  # the grid's epoch totals
    overrides: dict[str, dict[str, Any]]

    @property
    def test_videos(self) -> int:
        return self.test_per_class * (self.classes or 10)


FULL = Scale(classes=None, train_per_class=52, test_per_class=28, seeds=3, epochs=(16, 32, 64), overrides={
    "baselines": {"schedules": ["all", "l2-lN"], "decays": ["step", "cosine"], "sampling": ["us"]},
    "evaluate": {"clips": 5, "crops": 1},
    "plan": {"workers": 1},  # the README's table was measured so; two workers plan in other last digits
})
"""10 classes; 240 internal-train, 280 validation and 280 test videos; 12 grid candidates."""

SMOKE = Scale(classes=3, train_per_class=6, test_per_class=3, seeds=2, epochs=(1, 2, 3), overrides={
    "model": {"width": 8},
    "plan": {"sampling": ["cs"], "clip_lengths": [4, 8], "lrs": [0.02, 0.002], "graph": "basic", "delay": 1,
             "max_epochs": 2},
    "baselines": {"schedules": ["l1-lN"], "decays": ["step"], "sampling": ["cs"]},
    "evaluate": {"clips": 2, "crops": 1, "batch_size": 4},
    "train": {"batch_size": 4},
})


def study_params(scale: Scale, project: Path, base: Path) -> Params:
    """The demo's settings (``base``) with the study's data, splits, seeds, grid and store."""
    params = load_params(base).model_dump(mode="json")
    params["device"] = "cpu" if os.environ.get("OPPLAN_STUDY_DEVICE") is None else os.environ["OPPLAN_STUDY_DEVICE"]
    params["data"]["root"] = str(project / "data")
    params["prepare"] |= {"out": str(project / "shards"), "val_size": None}
    params["final"] = {**params.get("final", {}), "seeds": scale.seeds}
    params["baselines"] |= {"enabled": True, "epochs": list(scale.epochs)}
    params["tracking"] |= {"uri": f"sqlite:///{project / 'mlflow.db'}", "experiment": "study"}
    params["report"] |= {"out": str(project / "reports"), "figures": False}
    for section, values in scale.overrides.items():
        params[section] = {**params[section], **values}
    return Params.model_validate(params)


def run_pipeline(params: Params, scale: Scale, project: Path) -> dict[str, float]:
    """Every stage in order, in ``project``; returns each stage's wall-clock seconds."""
    from opplan.data.prepare import prepare_from_params
    from opplan.report import run_report
    from opplan.stages.baselines import run_baselines
    from opplan.stages.evaluate import run_evaluate
    from opplan.stages.final import run_final
    from opplan.stages.plan import run_plan

    seconds: dict[str, float] = {}
    steps = [
        ("synth", lambda: synthesize(params.data.root, SynthConfig(
            seed=params.seed, train_per_class=scale.train_per_class, test_per_class=scale.test_per_class,
            num_classes=scale.classes))),
        ("prepare", lambda: prepare_from_params(params)),
        ("plan", lambda: run_plan(params)),
        ("final", lambda: run_final(params)),
        ("evaluate", lambda: run_evaluate(params)),
        ("baselines", lambda: run_baselines(params)),
        ("report", lambda: run_report(params)),
    ]
    os.chdir(project)  # the stages write plan.json, final/, .opplan/ ... relative to the project
    for name, step in steps:
        start = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - start
        log.info("study: %s done in %.0f s", name, seconds[name])
    return seconds


def study_table(params: Params) -> dict[str, Any]:
    """The comparison of the project's store as one JSON-ready document."""
    from opplan.report.collect import read_store
    from opplan.report.compare import compare

    data = read_store(params.tracking.uri, params.tracking.experiment)
    cmp = compare(data, data.primary)
    noise = cmp.noise

    def arm(a: Any) -> dict[str, Any] | None:
        if a is None:
            return None
        low, high = (a.videos.low, a.videos.high) if a.videos else (a.seeds.low, a.seeds.high)
        return {"top1": a.mean, "low": low, "high": high, "se": a.videos.se if a.videos else math.nan,
                "per_seed": list(a.top1), "seed_sd": a.spread}

    hs_retrain = float(data.retrains[data.retrains.kind == "hs_retrain"].compute_seconds.fillna(0).sum())
    op_retrain = float(data.retrains[data.retrains.kind == "op_retrain"].compute_seconds.fillna(0).sum())
    return {
        "op": arm(noise.op if noise else None), "hs": arm(noise.hs if noise else None),
        "hs_name": (noise.selected or {}).get("name") if noise else None,
        "oracle": {"name": cmp.hs["name"], "top1": cmp.hs_top1} if cmp.hs else None,
        "grid_mean": noise.grid_mean if noise else None, "grid_median": noise.grid_median if noise else None,
        "paired": noise.paired.to_json() if noise and noise.paired else None,
        "verdict": noise.verdict if noise else None,
        "path": [f"{s.dst} ({s.epochs} ep)" for s in cmp.path or ()], "planned_V": cmp.score,
        "final_single_view": (cmp.evaluation or {}).get("single_view_top1"),
        "compute_seconds": {"planning": cmp.planning_cost.seconds,
                            "grid": cmp.grid_cost.seconds if cmp.grid_cost else None,
                            "op_retrains": (cmp.final_cost.seconds if cmp.final_cost else 0.0) + op_retrain,
                            "hs_retrains": hs_retrain},
        "grid_runs": cmp.grid_runs, "ratio_seconds": cmp.ratio_seconds, "ratio_epochs": cmp.ratio_epochs,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def markdown(doc: dict[str, Any]) -> str:
    """The study's one table, with the verdict and the path below it."""
    compute = doc["compute_seconds"]
    rows = [("OP (planned path, retrained)", doc["op"], compute["planning"]),
            (f"HS chosen on validation ({doc['hs_name']}, retrained)", doc["hs"], compute["grid"])]
    lines = ["| Strategy | Top-1 (%) | 95% interval | per seed | Compute (s) |", "|---|---|---|---|---|"]
    for label, arm, seconds in rows:
        if arm is None:
            lines.append(f"| {label} | – | – | – | {seconds or 0:.0f} |")
            continue
        seeds = ", ".join(_pct(v) for v in arm["per_seed"])
        lines.append(f"| {label} | {_pct(arm['top1'])} | [{_pct(arm['low'])}, {_pct(arm['high'])}] | {seeds} | "
                     f"{seconds or 0:.0f} |")
    if doc["oracle"]:
        lines.append(f"| HS oracle: best on the test split ({doc['oracle']['name']}) | {_pct(doc['oracle']['top1'])} "
                     f"| – | – | – |")
    lines.append(f"| HS grid: mean / median of {doc['grid_runs']} candidates | {_pct(doc['grid_mean'])} / "
                 f"{_pct(doc['grid_median'])} | – | – | – |")
    paired = doc["paired"]
    verdict = "no verdict (missing predictions)" if paired is None else (
        f"**{paired['verdict']}**: OP − HS = {100 * paired['diff']:+.1f} points, 95% interval "
        f"[{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}] over {paired['n']} videos"
        + (f", McNemar p = {paired['p_mcnemar']:.2f}" if paired.get("p_mcnemar") is not None else ""))
    ratio = doc["ratio_seconds"]
    lines += ["", f"Grid : OP compute = {ratio:.1f} : 1 (time)" if ratio else "Grid : OP compute = –",
              f"Verdict: {verdict}.",
              f"OP's path: S0 → {' → '.join(doc['path'])}; planned V {_pct(doc['planned_V'])}%, "
              f"final single-view {_pct(doc['final_single_view'])}%."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny scale (about two minutes): checks the wiring")
    parser.add_argument("--out", type=Path, default=Path("study"), help="where study.json and study.md go")
    parser.add_argument("--workdir", type=Path, default=None, help="project folder (default: a temporary one)")
    parser.add_argument("--seeds", type=int, default=None, help="final.seeds (default: 3; smoke: 2)")
    parser.add_argument("--params", type=Path, default=ROOT / "configs" / "demo.yaml", help="base settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scale = SMOKE if args.smoke else FULL
    if args.seeds:
        scale = Scale(**{**scale.__dict__, "seeds": args.seeds})
    out = args.out.resolve()
    project = (args.workdir or Path(tempfile.mkdtemp(prefix="opplan-study-"))).resolve()
    project.mkdir(parents=True, exist_ok=True)
    params = study_params(scale, project, args.params.resolve())
    cwd = Path.cwd()
    try:
        seconds = run_pipeline(params, scale, project)
        doc = {"scale": "smoke" if args.smoke else "full", "test_videos": scale.test_videos, "seeds": scale.seeds,
               "grid_epochs": list(scale.epochs), "stage_seconds": seconds, "project": str(project),
               **study_table(params)}
    finally:
        os.chdir(cwd)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    (out / "study.md").write_text(table)
    print(table)
    total = sum(seconds.values())
    print(f"stage seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}; total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
