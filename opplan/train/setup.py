"""Everything a training run needs, built once from params: model, optimizer, loaders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from opplan import distributed
from opplan.config import Params
from opplan.data.dataset import ClipDataset, make_loader, num_classes, read_videos, reseed
from opplan.device import (
    amp_dtype,
    auto_workers,
    compile_model,
    grad_scaler,
    pick_device,
    pin_cpu,
    set_deterministic,
    use_channels_last,
)
from opplan.models import build_model_from_params, set_bn_freeze
from opplan.planning.graph import State
from opplan.train.checkpoint import load_model, model_identity
from opplan.train.loop import EpochResult, LoopOptions, accuracy, predict, train_epoch
from opplan.train.objective import Objective, make_optimizer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA); data sampling is seeded per epoch by the loaders."""
    torch.manual_seed(seed)


@dataclass
class TrainSetup:
    params: Params
    shards: Path
    train_splits: tuple[str, ...] = ("train",)
    """Splits trained on: internal train while planning, train + val for the final model (docs/design.md §5)."""
    device_index: int | None = None
    """Which GPU, when there are several and this process is one of the planning workers
    (``plan.workers``); a distributed process always uses the GPU of its local rank."""

    _loaders: dict[str, tuple[tuple[Any, ...], DataLoader]] = field(default_factory=dict, init=False, repr=False)
    """The last loader per mode, whose workers persist while its split and state stay the same."""
    _val_cache: "ValCache | None" = field(default=None, init=False, repr=False)
    """Planning's decoded validation batches (``train.val_cache_mb``; :class:`ValCache`)."""

    def __post_init__(self) -> None:
        set_deterministic(self.params.train.deterministic)
        if self.device.type == "cpu":
            pin_cpu(self.params.train.cpu_isa, self.params.train.cpu_threads)

    def __getstate__(self) -> dict[str, Any]:
        """Without the loaders: a distributed collective call sends this object from rank 0 to
        the others, whose loaders must load their own shares."""
        return {**self.__dict__, "_loaders": {}, "_val_cache": None}

    @property
    def device(self) -> torch.device:
        world = distributed.world()
        return pick_device(self.params.device, world.local_rank if world.enabled else self.device_index)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of ``train.amp`` on this device (None: full precision, e.g. on CPU)."""
        return amp_dtype(self.params.train.amp, self.device)

    @property
    def amp(self) -> bool:
        """Mixed precision: asked for in params, and on CUDA."""
        return self.amp_dtype is not None

    @property
    def channels_last(self) -> bool:
        return use_channels_last(self.params.train.channels_last, self.params.model.name, self.device)

    @property
    def loop_options(self) -> LoopOptions:
        return LoopOptions(amp=self.amp_dtype, channels_last=self.channels_last,
                           progress_seconds=self.params.train.progress_seconds)

    @property
    def num_workers(self) -> int:
        """``train.num_workers``, with ``auto`` resolved for this device (``TrainParams.num_workers``)."""
        workers = self.params.train.num_workers
        if workers != "auto":
            return workers
        world = distributed.world()
        if world.enabled:
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        else:
            per_node = self.params.plan.workers if self.device_index is not None else 1
        return auto_workers(self.device, per_node)

    @cached_property
    def num_classes(self) -> int:
        return num_classes(self.shards)

    @cached_property
    def train_videos(self) -> int:
        """Videos in the training splits: the clips one epoch sees (for ``clips_seen``)."""
        videos = read_videos(self.shards)
        return int(videos["split"].isin(self.train_splits).sum())

    @cached_property
    def identity(self) -> dict[str, Any]:
        return model_identity(self.params.model.model_dump(mode="json"), self.num_classes)

    def new_model(self, clip_length: int) -> torch.nn.Module:
        """The model as S0 has it (same seed, same weights every time), on the device,
        with BatchNorm frozen when ``clip_length`` is long (docs/design.md §7)."""
        seed_everything(self.params.seed)
        model = build_model_from_params(self.params.model, self.num_classes)
        set_bn_freeze(model, clip_length, self.params.model.bn_freeze_min_length)
        layout = {"memory_format": torch.channels_last_3d} if self.channels_last else {}
        model = model.to(self.device, **layout)
        return compile_model(model, self.params.train.compile, self.device)

    def load_weights(self, model: torch.nn.Module, path: Path) -> None:
        load_model(path, model, self.identity)
        model.to(self.device)

    def optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        """SGD from ``train`` (:func:`opplan.train.objective.make_optimizer`); fused on CUDA (but
        not with float16's gradient scaler: see ``opplan.train.loop._skips_on_device``), where a
        step can then be skipped on the device (a non-finite loss) without waiting for the GPU."""
        return make_optimizer(model, lr, self.params.train, fused=self._fused())

    def _fused(self) -> bool | None:
        return True if self.device.type == "cuda" and self.amp_dtype != torch.float16 else None

    def dataset(self, split: str, state: State, *, mode: str, clips: int = 1) -> ClipDataset:
        splits = self.train_splits if split == "train" else (split,)
        return ClipDataset(self.shards, splits, sampling=state.sampling, clip_length=state.clip_length,
                           mode=mode, train=self.params.train, evaluate=self.params.evaluate, clips=clips)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Scales float16 losses under mixed precision; a pass-through otherwise."""
        return grad_scaler(self.amp_dtype, self.device)

    def loader(self, split: str, state: State, *, mode: str, seed: int | None = None, clips: int = 1) -> DataLoader:
        """Training batches are shuffled and seeded per epoch; evaluation is in order.

        Distributed, each process loads its share: ``batch_size / processes`` clips of every
        training batch, and every ``processes``-th video when evaluating.

        The loader of the last call with the same ``split``, ``state``, ``mode`` and ``clips`` is reused,
        reseeded (:func:`opplan.data.dataset.reseed`): its workers persist across the epochs
        of a transition or schedule segment, with the clips a new loader would give.
        """
        seed = self.params.seed if seed is None else seed
        key = (split, state, mode, clips)
        cached = self._loaders.get(mode)
        if cached is not None and cached[0] == key:
            return reseed(cached[1], seed)
        self._loaders.pop(mode, None)  # its workers stop before the new loader's start
        train = self.params.train
        world = distributed.world()
        if mode == "train":
            batch = train.batch_for(state.clip_length) // world.size  # divisible: checked by distributed.init
        elif mode == "val":
            batch = train.eval_batch_size
        else:
            batch = self.params.evaluate.batch_size
        loader = make_loader(self.dataset(split, state, mode=mode, clips=clips), batch, shuffle=mode == "train",
                             num_workers=self.num_workers, seed=seed, rank=world.rank, replicas=world.size,
                             pin_memory=self.device.type == "cuda", prefetch_factor=train.prefetch_factor)
        self._loaders[mode] = (key, loader)
        return loader

    def close_loaders(self) -> None:
        """Stop the persistent loader workers (they also stop with this object)."""
        self._loaders.clear()

    def train_epoch(self, model: torch.nn.Module, state: State, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, *, seed: int, progress: str = "") -> EpochResult:
        """One epoch of ``state``'s clips (seeded by ``seed``) through ``model`` (wrapped by
        :func:`opplan.distributed.wrap` when distributed)."""
        loader = self.loader("train", state, mode="train", seed=seed)
        return train_epoch(model, loader, optimizer, self.device, scaler=scaler,
                           micro_batch=self.params.train.micro_batch_for(state.clip_length), progress=progress,
                           options=self.loop_options, objective=Objective.from_params(self.params.train))

    def predict(self, model: torch.nn.Module, split: str, state: State, *, mode: str,
                clips: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(videos, classes)`` and labels ``(videos,)`` of a split, in video order
        (distributed: each process scores its share and all get the whole). ``clips``: the
        uniformly spaced clips per video in ``mode="val"``, softmax scores averaged. Planning's
        validation (``split="val"``, ``mode="val"``) decodes its clips once per sampling, clip
        length and ``clips`` and keeps them in memory when they fit in ``train.val_cache_mb``
        (:class:`ValCache`): its clips are the same every epoch."""
        model = distributed.unwrap(model)
        distributed.sync_module(model, buffers_only=True)
        loader = self.loader(split, state, mode=mode, clips=clips)
        if split == "val" and mode == "val" and self.params.train.val_cache_mb > 0:  # the same clips every epoch
            if self._val_cache is None:
                self._val_cache = ValCache(int(self.params.train.val_cache_mb * 2**20))
            loader = self._val_cache.batches((state.sampling, state.clip_length, clips), loader)
        scores, labels = predict(model, loader, self.device, options=self.loop_options, what=f"{state.name} {split}: ")
        return distributed.gather_strided(scores), distributed.gather_strided(labels)

    def accuracy(self, model: torch.nn.Module, state: State) -> float:
        """Planning's validation accuracy: one centre clip, centre crop per internal-validation video."""
        return accuracy(*self.predict(model, "val", state, mode="val"))


class ValCache:
    """Decoded validation batches of one key (sampling, clip length, clips per video), kept
    in memory while they fit in ``limit`` bytes (``train.val_cache_mb``, per process).

    Validation clips are deterministic (centre crop, fixed clip positions), so every epoch
    of a transition, and every transition into the same clip length and sampling, scores the
    same tensors: decoding them once gives the same numbers faster. One key is held at a
    time (a new key drops the old one); a key whose batches exceed ``limit`` is read from
    the loader every time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.key: tuple[Any, ...] | None = None
        self.stored: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.too_large: set[tuple[Any, ...]] = set()
        self.hits = 0

    def batches(self, key: tuple[Any, ...], loader: Any) -> Any:
        """What to iterate instead of ``loader`` for ``key``: the stored batches, or the loader's
        while storing them."""
        if key == self.key and self.stored is not None:
            self.hits += 1
            return _Stored(self.stored, loader)
        if key in self.too_large:
            return loader
        self.key, self.stored = None, None  # free the old key's batches before decoding the new
        return _Storing(self, key, loader)


class _Stored:
    """Stored batches, with the loader's sampler (its length sizes the progress meter)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], loader: Any) -> None:
        self._batches, self.sampler = batches, getattr(loader, "sampler", None)

    def __iter__(self) -> Any:
        return iter(self._batches)


class _Storing(_Stored):
    """The loader's batches, stored in ``cache`` once a whole pass fitted in its limit."""

    def __init__(self, cache: ValCache, key: tuple[Any, ...], loader: Any) -> None:
        super().__init__([], loader)
        self._cache, self._key, self._loader = cache, key, loader

    def __iter__(self) -> Any:
        size, keep = 0, True
        for clip, label in self._loader:
            if keep:
                size += clip.element_size() * clip.nelement()
                keep = size <= self._cache.limit
                if keep:
                    self._batches.append((clip, label))
                else:
                    self._batches = []
            yield clip, label
        if keep:
            self._cache.key, self._cache.stored = self._key, self._batches
        else:
            log.info("validation clips of %s exceed train.val_cache_mb = %.0f MB: decoded every epoch",
                     self._key, self._cache.limit / 2**20)
            self._cache.too_large.add(self._key)
