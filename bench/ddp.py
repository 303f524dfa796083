"""Scale-out on CPU: data-parallel clips/s with 1 and 2 processes, and a tiny plan's wall
time with 1 and 2 planning workers.

    .venv/bin/python bench/ddp.py [--steps 30] [--skip-plan]

1. Training throughput of the demo's model (``dg_p3d_tiny`` width 16, 8x32² clips,
   batch 16 per optimizer step) through opplan's own epoch loop, launched by ``torchrun``
   with gloo: 1 process with all cores, 1 process with one core per process's share, and
   2 processes (DDP, batch 8 each). The cores are split, never oversubscribed. Batches are
   made in memory, so this is model + communication only.
2. ``opplan plan`` on a tiny synthetic dataset with ``runtime.plan_workers`` 1 and 2 (each its own
   project folder and MLflow store): wall times, and whether 2 workers explored exactly
   what 1 worker did with the same threads per process.

All ratios are from one run on one machine (noisy machines change absolute figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP_LENGTH, SIZE, BATCH, CLASSES = 8, 32, 16, 10


def worker(steps: int) -> None:
    """Inside torchrun: time ``steps`` optimizer steps of the demo model; rank 0 prints JSON."""
    import torch

    from opplan import distributed
    from opplan.config import Params
    from opplan.models import build_model
    from opplan.train.loop import train_epoch

    world = distributed.init(Params.model_validate({"device": "cpu"}))
    torch.manual_seed(0)
    model = build_model("dg_p3d_tiny", CLASSES, width=16)
    net = distributed.wrap(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per_process = BATCH // world.size
    g = torch.Generator().manual_seed(world.rank)
    batches = [(torch.randn(per_process, 3, CLIP_LENGTH, SIZE, SIZE, generator=g),
                torch.randint(0, CLASSES, (per_process,), generator=g)) for _ in range(4)]
    device = torch.device("cpu")
    train_epoch(net, batches[:2], optimizer, device)  # warm-up
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        result = train_epoch(net, (batches[i % len(batches)] for i in range(steps)), optimizer, device)
        best = max(best, result.clips / (time.perf_counter() - start))
    if world.is_main:
        print(json.dumps({"processes": world.size, "threads": torch.get_num_threads(), "clips_per_s": best}))
    distributed.shutdown()


def launch(processes: int, threads: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--worker", "--steps", str(steps)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def bench_training(steps: int) -> None:
    cores = os.cpu_count() or 1
    rows = [launch(1, cores, steps), launch(1, max(1, cores // 2), steps), launch(2, max(1, cores // 2), steps)]
    alone = rows[0]["clips_per_s"]
    print(f"training, dg_p3d_tiny width 16, {CLIP_LENGTH}x{SIZE}², batch {BATCH} per step, gloo on CPU ({cores} cores)")
    for row in rows:
        print(f"  {row['processes']} process(es) x {row['threads']} thread(s): {row['clips_per_s']:7.1f} clips/s "
              f"({row['clips_per_s'] / alone:.2f}x of 1 process with all cores)")


def bench_plan() -> None:
    """The tiny plan with 1 worker (all cores, then one core) and 2 workers (one core each).

    On a CPU, floating-point results depend on the number of threads a process uses, so
    the plan of 2 workers is compared with 1 worker at the same threads per process.
    """
    import yaml

    from opplan.config import PrepareParams
    from opplan.data.prepare import prepare_dataset
    from opplan.data.synth import SynthConfig, synthesize
    from opplan.documents import PlanDocument

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="opplan-bench-ddp-") as tmp:
        root = Path(tmp)
        synthesize(root / "data", SynthConfig(seed=0, train_per_class=6, test_per_class=2, num_classes=4,
                                              min_frames=24, max_frames=48))
        prepare_dataset(root / "data", root / "shards", PrepareParams(short_side=40, workers=1), seed=0)
        results = []
        for workers, threads in ((1, cores), (1, max(1, cores // 2)), (2, max(1, cores // 2))):
            project = root / f"workers{workers}-threads{threads}"
            project.mkdir()
            params = {"seed": 0, "device": "cpu", "prepare": {"out": str(root / "shards"), "short_side": 40},
                      "model": {"name": "dg_p3d_tiny", "width": 8},
                      "train": {"crop_size": 32, "scale_jitter": [32, 40], "eval_short_side": 36, "batch_size": 4,
                                "eval_batch_size": 8, "num_workers": 0},
                      "plan": {"sampling": ["cs", "us"], "clip_lengths": [4, 8], "lrs": [0.02, 0.002],
                               "graph": "extended", "delay": 1, "max_epochs": 3, "workers": workers},
                      "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "bench"}}
            (project / "params.yaml").write_text(yaml.safe_dump(params))
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "opplan.cli", "plan", "--params", "params.yaml"], cwd=project,
                           check=True, capture_output=True, env=env)
            plan = PlanDocument.read(project / "plan.json")
            results.append((workers, threads, time.perf_counter() - start, plan))
    print(f"tiny plan ({len(results[0][3].explored)} transitions, {cores} cores), wall time of `opplan plan`:")
    for workers, threads, seconds, plan in results:
        print(f"  {workers} worker(s) x {threads} thread(s): {seconds:5.1f} s ({results[0][2] / seconds:.2f}x), "
              f"path {' → '.join(plan.path)}")
    fields = ("src", "dst", "status", "score", "fitted", "observed", "chosen_epoch", "epochs_trained")

    def explored(plan: PlanDocument) -> list[tuple]:
        return [tuple(getattr(record, f) for f in fields) for record in plan.explored]

    same = explored(results[1][3]) == explored(results[2][3])
    print(f"  2 workers explored exactly what 1 worker did at the same threads per process (scores, epochs): {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per timed run")
    parser.add_argument("--skip-plan", action="store_true", help="only the training throughput")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    bench_training(args.steps)
    if not args.skip_plan:
        bench_plan()


if __name__ == "__main__":
    main()
