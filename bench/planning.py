"""What the planning core costs next to training: knee fits and the DP's own overhead.

    python bench/planning.py [--epoch-seconds 0.6] [--repeat 7]

Prints (1) the time of one knee fit (median of ``--repeat``) for noisy curves of 10, 50
and 200 epochs, per fitting function, (2) the fits of one whole online replay (one fit
per epoch from ``t = T``), and (3) the planner's overhead per transition with a no-op
oracle; each also as a fraction of one training epoch of ``--epoch-seconds``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from opplan.config import PlanParams
from opplan.planning.dp import plan_path
from opplan.planning.fitting import FUNCTIONS, fit_curve
from opplan.planning.graph import graph_from_params
from opplan.planning.knee import replay
from opplan.planning.records import TransitionRecord


def noisy_curve(epochs: int, seed: int = 0) -> np.ndarray:
    """A realistic accuracy curve y_0..y_epochs: fast rise, plateau, mild overfitting, noise 0.005."""
    t = np.arange(epochs + 1) * (60.0 / epochs)  # the same shape at every length
    y = 0.8 - 0.6 * np.exp(-0.15 * t) + 0.002 * t - 1e-4 * t**2
    return y + np.random.default_rng(seed).normal(0.0, 0.005, t.size)


def median_seconds(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_fits(repeat: int, epoch_seconds: float) -> None:
    print("one knee fit (median of %d), as a fraction of one %.3g s epoch" % (repeat, epoch_seconds))
    print(f"{'function':<19}" + "".join(f"{f'{n} epochs':>24}" for n in (10, 50, 200)))
    for function in FUNCTIONS:
        cells = []
        for epochs in (10, 50, 200):
            y = noisy_curve(epochs)
            fit_curve(y, function)  # warm-up
            sec = median_seconds(lambda: fit_curve(y, function), repeat)
            cells.append(f"{sec * 1e3:8.1f} ms ({sec / epoch_seconds:7.2%})")
        print(f"{function:<19}" + "".join(f"{c:>24}" for c in cells))


def bench_replay(epoch_seconds: float, delay: int = 10) -> None:
    print(f"\nall fits of one online replay (delay {delay}; one fit per epoch from t = {delay}), "
          "total and per epoch")
    y = noisy_curve(100)
    for function in FUNCTIONS:
        start = time.perf_counter()
        result = replay(y, function=function, delay=delay, max_epochs=100)
        sec = time.perf_counter() - start
        epochs = result.stop_epoch or len(y) - 1
        print(f"{function:<19} stop at {epochs:3d}: {sec * 1e3:8.1f} ms total, "
              f"{sec / epochs * 1e3:6.2f} ms/epoch ({sec / epochs / epoch_seconds:.2%} of an epoch)")


def bench_planner(repeat: int, epoch_seconds: float) -> None:
    graph = graph_from_params(PlanParams())

    def oracle(src, dst, src_record):  # noqa: ANN001, ANN202
        return TransitionRecord(src, dst, "finished", score=dst.clip_length / 100, chosen_epoch=3,
                                epochs_trained=13)

    sec = median_seconds(lambda: plan_path(graph, oracle), repeat * 10) / len(graph.edges)
    print(f"\nplanner overhead per transition (no-op oracle, {len(graph.edges)} edges): {sec * 1e6:.1f} us "
          f"({sec / epoch_seconds:.5%} of one epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epoch-seconds", type=float, default=0.6,
                        help="Duration of one training epoch (default: the demo's, measured at 8x32², 180 clips).")
    parser.add_argument("--repeat", type=int, default=7, help="Timings per measurement (median).")
    args = parser.parse_args()
    bench_fits(args.repeat, args.epoch_seconds)
    bench_replay(args.epoch_seconds)
    bench_planner(args.repeat, args.epoch_seconds)


if __name__ == "__main__":
    main()
