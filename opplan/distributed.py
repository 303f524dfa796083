"""Data-parallel training under ``torchrun``: one process per device, rank 0 in charge.

Rank 0 runs a stage exactly as a lone process would: it talks to MLflow, fits the knees,
decides, and writes every file. The other ranks only help to train. Each function that
all ranks must run together is marked :func:`collective`; when rank 0 calls one, the
others (waiting in :func:`follow`) are told to call it with the same arguments. Inside
it the ranks train one ``DistributedDataParallel`` model in lock step, and whatever only
rank 0 knows (a resumed epoch state, the knee's stop decision) reaches the others through
:func:`on_main`, which runs a block on rank 0 and broadcasts its result.

Alone (no ``torchrun``, or one process) every function here is a no-op or the identity,
so the training code has a single path. NCCL on CUDA, gloo on CPU, chosen automatically::

    torchrun --nproc-per-node 8 pipeline/plan.py           # or distributed.nproc_per_node: 8
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from opplan.config import Params
from opplan.errors import OpplanError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAIN_ONLY_KWARGS = ("on_epoch",)
"""Keyword arguments of collective functions that only rank 0 uses (callbacks into MLflow)."""
_STOP = "opplan.distributed.stop"


class Stopped(Exception):  # noqa: N818 - not an error on the ranks that receive it
    """Rank 0 left the stage (finished, or failed with its own error); the others stop too."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()


def world() -> World:
    return _world


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(params: Params) -> World:
    """Join the process group ``torchrun`` prepared (nothing to do when alone)."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or _world.enabled:
        return _world
    train = params.train
    for where, batch in [("train.batch_size", train.batch_size),
                         *((f"train.batch_size_per_length[{k}]", v) for k, v in train.batch_size_per_length.items())]:
        if batch % size:
            raise OpplanError(f"{where} is {batch}, which {size} processes cannot share evenly: each process "
                              f"takes batch / processes clips per step; make it a multiple of {size}")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = params.device != "cpu" and torch.cuda.is_available()
    backend = params.distributed.backend
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise OpplanError("distributed.backend is nccl, which needs CUDA, and this process has no GPU; "
                          "use backend: auto (gloo on CPU)")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(minutes=params.distributed.timeout_minutes))
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    if _world.is_main:
        log.info("distributed: %d processes (%s)", _world.size, backend)
    else:  # one voice in the log: rank 0's
        logging.getLogger("opplan").setLevel(logging.WARNING)
    return _world


def shutdown() -> None:
    global _world
    if _world.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def relaunch_if_asked(params: Params, target: Sequence[str]) -> None:
    """Replace this process by ``torchrun --standalone`` running ``target`` when params ask
    for several processes and this one was not started by torchrun.

    ``target`` is what torchrun runs: a script and its arguments, or ``-m module ...``.
    """
    nproc = params.distributed.nproc_per_node
    if nproc <= 1 or under_torchrun():
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               *target]
    log.info("distributed.nproc_per_node is %d: relaunching as %s", nproc, " ".join(command[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def launch(params: Params, target: Sequence[str], work: Callable[[], T]) -> T | None:
    """A training stage's entry: relaunch under torchrun when params ask for it (``target`` as
    in :func:`relaunch_if_asked`), join the process group, and :func:`run` ``work``."""
    relaunch_if_asked(params, target)
    init(params)
    return run(work)


# --- rank 0 leads, the others follow ------------------------------------------------


def run(main: Callable[[], T]) -> T | None:
    """Rank 0 runs ``main``; the other ranks follow its collective calls until it returns
    or raises, and return ``None``."""
    if not _world.enabled:
        return main()
    if not _world.is_main:
        follow()
        return None
    result = main()
    _broadcast(_STOP)  # followers wait in follow() for the next call; this ends it
    return result


def follow() -> None:
    """Call every collective function rank 0 announces, until it says stop."""
    while True:
        try:
            command = broadcast_object(None)
        except Stopped:
            return
        module, qualname, args, kwargs = command
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        target(*args, **kwargs)


def collective(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark ``fn`` as run by every rank together (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if _world.enabled and _world.is_main:
            shared = {k: v for k, v in kwargs.items() if k not in MAIN_ONLY_KWARGS}
            _broadcast((fn.__module__, fn.__qualname__, args, shared))
        return fn(*args, **kwargs)

    return wrapper


def on_main(block: Callable[[], T]) -> T:
    """Run ``block`` on rank 0 only and give its result to every rank: the point where the
    others wait for rank 0's bookkeeping.

    When rank 0 fails (here or anywhere) it exits with its error and ``torchrun`` stops
    the other ranks; nothing waits for a timeout.
    """
    return broadcast_object(block() if _world.is_main else None)


# --- communication --------------------------------------------------------------------


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; tensors travel on the CPU)."""
    if not _world.enabled:
        return obj
    received = _broadcast(obj)
    if isinstance(received, str) and received == _STOP:
        raise Stopped
    return received


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place."""
    if _world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_strided(part: np.ndarray) -> np.ndarray:
    """Reassemble an array whose rows were computed strided over ranks (rank r has rows
    r, r + size, ...), in the original row order, on every rank."""
    if not _world.enabled:
        return part
    parts = [None] * _world.size
    dist.all_gather_object(parts, part)
    rows = sum(len(p) for p in parts)
    shaped = next(p for p in parts if len(p))
    out = np.empty((rows, *shaped.shape[1:]), dtype=shaped.dtype)
    for rank, p in enumerate(parts):
        if len(p):
            out[rank::_world.size] = p
    return out


def sync_module(module: nn.Module, *, buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters and buffers (or only its buffers: after training
    under DDP the weights agree, but each rank's BatchNorm statistics moved with its own
    last batch)."""
    if _world.enabled:
        tensors = [*module.buffers()] if buffers_only else [*module.parameters(), *module.buffers()]
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` for training: DistributedDataParallel when distributed (which also gives every
    rank rank 0's weights), else ``model`` itself. Wrap again whenever the set of trainable
    parameters changes (BatchNorm freezing for long clips)."""
    if not _world.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """No gradient all-reduce during this backward (an accumulation step) when ``skip``."""
    if skip and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield
