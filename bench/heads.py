"""The dual head's training loss on the demo: held-out accuracy per ``train.head_loss``.

    PYTHONPATH=. .venv/bin/python bench/heads.py --shards SHARDS [--seeds 0 1 2] [--epochs 24]

Trains the demo's model (``params.yaml``) along one fixed hand-tuned schedule (uniform
sampling, clip lengths 4 -> 8 -> 16, cosine from the first planned rate, ``--epochs`` in
all, on train + val as the baselines do) once per mode and seed, and scores the held-out
split with the evaluate stage's ten clips x three crops. Prints one JSON line per run and
a summary (mean and standard deviation over seeds). ``--modes`` takes
``fused``, ``per_head`` and ``per_head+fused``; a mode only changes the loss, so the
same seed starts from the same weights and sees the same clips.

The held-out split of the demo has 60 videos: one video is 1.7 points, so differences
of a few points between modes are within the seeds' spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def run(shards: Path, mode: str, seed: int, epochs: int, work: Path, lr_scale: float = 1.0) -> dict:
    import opplan
    from opplan.params_file import load_params
    from opplan.stages.baselines import Candidate, build_schedule
    from opplan.stages.scoring import score_model
    from opplan.train.schedule import train_schedule
    from opplan.train.setup import TrainSetup

    params = load_params(Path(opplan.__file__).resolve().parent.parent / "params.yaml")  # that version's demo
    data = params.model_dump()
    data["seed"], data["device"] = seed, "cpu"
    data["plan"]["lrs"] = [lr * lr_scale for lr in data["plan"]["lrs"]]
    if mode != "fused":  # older versions know no head_loss: leave it out for the default
        data["train"]["head_loss"] = mode
    params = type(params).model_validate(data)
    setup = TrainSetup(params, shards, train_splits=("train", "val"))
    schedule = build_schedule(Candidate("us", "all", "cosine", epochs), params)
    start = time.perf_counter()
    outcome = train_schedule(setup, schedule, work / f"{mode}-{seed}", label=f"{mode} seed {seed}")
    scores, _, _ = score_model(setup, outcome.checkpoint, schedule[-1].state)
    return {"mode": mode, "seed": seed, "epochs": epochs, "lr_scale": lr_scale, "top1": scores["top1"], "top5": scores["top5"],
            "single_view_top1": scores["single_view_top1"], "final_loss": outcome.losses[-1],
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, required=True, help="the demo's prepared shards")
    parser.add_argument("--modes", nargs="+", default=["fused", "per_head", "per_head+fused"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="multiply the planned rates (per-head losses sum 2-3 cross-entropies: "
                             "compare with fused at 2x to separate the loss from the gradient's size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for mode in args.modes:
                results.append(run(args.shards, mode, seed, args.epochs, Path(work), args.lr_scale))
                print(json.dumps(results[-1]), flush=True)
    for mode in args.modes:
        top1 = [r["top1"] for r in results if r["mode"] == mode]
        spread = statistics.stdev(top1) if len(top1) > 1 else float("nan")
        print(json.dumps({"mode": mode, "seeds": len(top1), "top1_mean": round(statistics.mean(top1), 4),
                          "top1_std": round(spread, 4), "top1": top1}))


if __name__ == "__main__":
    main()
