"""``plan.workers: K > 1``: the DP as :func:`~opplan.planning.scheduler.plan_path_parallel`, with K
spawned worker processes, one per device, each with its own
:class:`~opplan.stages.transitions.TransitionRunner`, training the transitions that are
ready at the same time. Only names, params and records cross the process boundary;
everything else goes through MLflow, as in sequence.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from opplan import signals
from opplan.config import Params
from opplan.errors import OpplanError
from opplan.logs import configure_logging
from opplan.planning.decisions import Bar, Rule
from opplan.planning.graph import Node, State, TransitionGraph, graph_from_params
from opplan.planning.records import PlanResult, TransitionRecord
from opplan.planning.scheduler import plan_path_parallel
from opplan.progress import PlanProgress
from opplan.stages.transitions import TransitionRunner
from opplan.tracking.client import Tracker
from opplan.train.setup import TrainSetup

log = logging.getLogger(__name__)


def worker_devices(params: Params, workers: int) -> list[str]:
    """The device of each planning worker: CUDA device i for worker i, or the CPU for all."""
    import torch

    from opplan.device import pick_device

    if pick_device(params.device).type != "cuda":
        return ["cpu"] * workers
    count = torch.cuda.device_count()
    if workers > count:
        raise OpplanError(f"plan.workers is {workers} but this machine has {count} CUDA device(s), and each "
                          f"planning worker needs its own: set plan.workers to at most {count}")
    return [f"cuda:{i}" for i in range(workers)]


def plan_with_workers(params: Params, devices: list[str], shards: Path, graph: TransitionGraph, tracker_uri: str,
                      parent_id: str, work_dir: Path, *, rule: Rule) -> PlanResult:
    """The DP with one transition at a time per device of ``devices`` (:func:`worker_devices`),
    each worker a spawned process, choosing by ``rule`` (``plan.decision``)."""
    workers = len(devices)
    log.info("planning with %d worker processes: %s", workers,
             ", ".join(f"w{i} on {d}" for i, d in enumerate(devices)))
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or MLflow state
    slots = context.Queue()
    for slot in range(workers):
        slots.put(slot)
    init_args = (params, shards.resolve(), tracker_uri, parent_id, work_dir.resolve(), slots, os.getpid(),
                 logging.getLogger().getEffectiveLevel())
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init_args) as pool:

            def submit(src: Node, dst: State, src_record: TransitionRecord | None,
                       bar: Bar | None = None) -> Future[TransitionRecord]:
                return pool.submit(_run_in_worker, src.name, dst.name, src_record, bar)

            return plan_path_parallel(graph, PlanProgress(len(graph.edges)).wrap(submit), workers, rule=rule,
                                      prune=params.plan.prune)
    finally:
        slots.close()  # slots of workers never started (too few transitions at once) stay unread


# What a worker process builds once (ProcessPoolExecutor's initializer) and its tasks use.
# Process-local: each worker process has its own, the planning process none.
_WORKER: dict[str, Any] = {}


def _init_worker(params: Params, shards: Path, tracker_uri: str, parent_id: str, work_dir: Path, slots: Any,
                 parent_pid: int, log_level: int) -> None:
    """Set up one planning worker: its slot (device), logging, threads, runner, watchdog."""
    setup = _worker_setup(params, shards, slots, parent_pid, log_level)
    tracker = Tracker(tracker_uri, params.tracking.experiment, retry_seconds=params.tracking.retry_seconds)
    _WORKER.update(graph=graph_from_params(params.plan),
                   runner=TransitionRunner(tracker, parent_id, setup, work_dir))


def _worker_setup(params: Params, shards: Path, slots: Any, parent_pid: int, log_level: int) -> TrainSetup:
    """What every worker process does first: take a slot (device), prefix its log lines, split
    the CPU cores, and end with its parent."""
    import torch

    signals.quiet_worker()  # Ctrl-C reaches the whole process group: the planning process reports it
    slot = slots.get()
    configure_logging(log_level <= logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_SlotFormatter(handler.formatter or logging.Formatter(), f"[w{slot}] "))
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="opplan-watchdog", daemon=True).start()
    setup = TrainSetup(params, shards, device_index=slot)
    if setup.device.type == "cuda":
        torch.cuda.set_device(setup.device)
    elif params.train.cpu_threads is None:  # the cores split between the workers; a lower OMP_NUM_THREADS holds
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(min(torch.get_num_threads(), max(1, cores // params.plan.workers)))
    log.info("worker %d (pid %d) on %s, %d torch thread(s)", slot, os.getpid(), setup.device,
             torch.get_num_threads())
    return setup


def map_with_workers(params: Params, devices: list[str], shards: Path, task: Any, items: list[Any]) -> list[Any]:
    """``[task(setup, item) for item in items]`` with one item at a time per device of
    ``devices`` (:func:`worker_devices`), each worker a spawned process with its own
    :class:`TrainSetup`, as planning's transitions run (the baselines' grid); in order.
    ``task`` must be a module-level function (it is pickled by name)."""
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(len(devices)):
        slots.put(slot)
    init_args = (params, shards.resolve(), slots, os.getpid(), logging.getLogger().getEffectiveLevel())
    try:
        with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_mapper,
                                 initargs=init_args) as pool:
            return list(pool.map(_map_one, [task] * len(items), items))
    finally:
        slots.close()


def _init_mapper(params: Params, shards: Path, slots: Any, parent_pid: int, log_level: int) -> None:
    _WORKER.update(setup=_worker_setup(params, shards, slots, parent_pid, log_level))


def _map_one(task: Any, item: Any) -> Any:
    return task(_WORKER["setup"], item)


def _run_in_worker(src: str, dst: str, src_record: TransitionRecord | None, bar: Bar | None = None) -> TransitionRecord:
    graph: TransitionGraph = _WORKER["graph"]
    return _WORKER["runner"](graph.state(src), graph.state(dst), src_record, bar=bar)


def _exit_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """End this worker when the planning process is gone (SIGKILL leaves no one to stop it):
    its transition's run stays ``running`` and resumes at the next ``opplan plan``."""
    while os.getppid() == parent_pid:
        time.sleep(every)
    log.warning("the planning process %d is gone: stopping this worker", parent_pid)
    os._exit(1)


class _SlotFormatter(logging.Formatter):
    """Prefixes every line of a worker with its slot (``[w1] ...``)."""

    def __init__(self, inner: logging.Formatter, prefix: str) -> None:
        super().__init__()
        self.inner, self.prefix = inner, prefix

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + self.inner.format(record)
