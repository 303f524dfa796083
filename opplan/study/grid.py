"""The paper-shaped grid of one replicate: every candidate trained on internal train with the
replicate's seed and scored once, at the end, on internal validation (no per-epoch
validation), each with its cost in core-seconds; the extension rule; HS's pick, whether it
is interior, and the matched-budget pick (docs/study.md, "The grid").

Candidates train in ``workers`` spawned processes of one torch thread each, the thread layout
of planning's workers on the CPU, and each result is a JSON file: a rerun skips the finished
ones (an interrupted candidate restarts from its last epoch state).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from opplan.config import Params
from opplan.fileio import atomic_write_json
from opplan.stages.baselines import Candidate, build_schedule
from opplan.stats import best_candidate
from opplan.study.cost import cpu_seconds

log = logging.getLogger(__name__)

FINISHED = "finished"


def result_path(folder: Path, c: Candidate) -> Path:
    return folder / (c.name.replace("/", "_") + ".json")


def run_candidate(params: Params, shards: Path, c: Candidate, folder: Path) -> dict[str, Any]:
    """Train ``c`` from S0 on internal train and score it on internal validation (the
    evaluation protocol: ``evaluate.clips`` x ``evaluate.crops``); its core-seconds are this
    process's CPU time (user + system) over both."""
    from opplan.train.checkpoint import clear_work_dir
    from opplan.train.loop import accuracy
    from opplan.train.schedule import train_schedule
    from opplan.train.setup import TrainSetup

    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    setup = TrainSetup(params, shards)
    schedule = build_schedule(c, params)
    work = folder / "work" / c.name.replace("/", "_")
    outcome = train_schedule(setup, schedule, work, label=f"grid {c.name}")
    row: dict[str, Any] = {"name": c.name, "sampling": c.sampling, "schedule": c.schedule, "decay": c.decay,
                           "epochs": c.epochs, "epochs_trained": len(outcome.losses), "status": outcome.status,
                           "val_top1": None}
    if outcome.status == FINISHED:
        state = schedule[-1].state
        model = setup.new_model(state.clip_length)
        setup.load_weights(model, outcome.checkpoint)
        row["val_top1"] = accuracy(*setup.predict(model, "val", state, mode="test"))
    row |= {"core_seconds": cpu_seconds() - start_cpu, "wall_seconds": time.perf_counter() - start_wall}
    atomic_write_json(result_path(folder, c), row)
    clear_work_dir(work)  # its epoch states: the result file is what a rerun reads (a grid is hundreds of them)
    log.info("grid %s: val top-1 %s, %.0f core-s", c.name, row["val_top1"], row["core_seconds"])
    return row


def worker_threads(params: Params, workers: int) -> int:
    """Torch threads per grid worker: as planning's workers on the CPU (``train.cpu_threads``,
    else the cores split between ``workers`` processes)."""
    if params.train.cpu_threads is not None:
        return params.train.cpu_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def _init_worker(level: int, threads: int) -> None:
    import torch

    from opplan.logs import configure_logging

    configure_logging(level <= logging.DEBUG)
    torch.set_num_threads(threads)


def run_grid(params: Params, shards: Path, grid: list[Candidate], folder: Path, workers: int) -> list[dict[str, Any]]:
    """Every candidate of ``grid`` not yet finished in ``folder``, ``workers`` at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    done = {c.name: json.loads(result_path(folder, c).read_text()) for c in grid if result_path(folder, c).is_file()}
    todo = [c for c in grid if c.name not in done]
    if todo:
        log.info("grid: %d candidates to train (%d done)", len(todo), len(done))
        context = multiprocessing.get_context("spawn")
        threads = worker_threads(params, workers)
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_init_worker,
                                 initargs=(logging.getLogger().getEffectiveLevel(), threads)) as pool:
            for row in pool.map(run_candidate, *zip(*[(params, shards, c, folder) for c in todo])):
                done[row["name"]] = row
    return [done[c.name] for c in grid]


def pick(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """HS as a user picks it: the best finished candidate on internal validation, ties toward
    fewer epochs (:func:`opplan.stats.best_candidate`)."""
    return best_candidate(rows, "val_top1", FINISHED)


def extension_needed(rows: list[dict[str, Any]], extension: list[int]) -> Candidate | None:
    """The extension rule: when the pick is at the largest total trained for its schedule
    (sampling, clip schedule, decay), the next declared extension total above it, for that
    schedule only; ``None`` when the pick is interior or the extensions are used up."""
    best = pick(rows)
    if best is None:
        return None
    same = [r["epochs"] for r in rows if _schedule_key(r) == _schedule_key(best)]
    if best["epochs"] < max(same):
        return None
    above = [e for e in extension if e > best["epochs"]]
    return Candidate(best["sampling"], best["schedule"], best["decay"], above[0]) if above else None


def _schedule_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (row["sampling"], row["schedule"], row["decay"])


def interior(rows: list[dict[str, Any]], best: Mapping[str, Any] | None) -> bool | None:
    """Whether the pick's total lies strictly between the smallest and largest totals trained
    for its schedule (so that neither fewer nor more epochs were left untried)."""
    if best is None:
        return None
    same = [r["epochs"] for r in rows if _schedule_key(r) == _schedule_key(best)]
    return min(same) < best["epochs"] < max(same)


def matched_budget(rows: list[dict[str, Any]], budget: float, key: str = "core_seconds"
                   ) -> tuple[dict[str, Any] | None, list[str]]:
    """The best-on-validation candidate among the grid's candidates taken cheapest-first
    (by ``key``, ties by name) while their summed cost stays within ``budget``; also the
    names taken. ``(None, [])`` when even the cheapest costs more."""
    taken: list[dict[str, Any]] = []
    total = 0.0
    for row in sorted(rows, key=lambda r: (r[key], r["name"])):
        if total + row[key] > budget:
            break
        total += row[key]
        taken.append(row)
    names = {r["name"] for r in taken}
    return pick([r for r in rows if r["name"] in names]), [r["name"] for r in taken]  # ties as the full grid's


def run_with_extension(params: Params, shards: Path, grid: list[Candidate], extension: list[int], folder: Path,
                       workers: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The declared grid, then the extension rule applied until the pick is not at its
    schedule's largest total (or the extensions run out). Returns (grid rows, extension rows)."""
    rows = run_grid(params, shards, grid, folder, workers)
    added: list[dict[str, Any]] = []
    while (c := extension_needed(rows + added, extension)) is not None:
        log.info("grid: the pick is at its largest total; extension rule trains %s", c.name)
        added += run_grid(params, shards, [c], folder, workers)  # the same threads per process
    return rows, added
