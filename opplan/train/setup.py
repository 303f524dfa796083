"""Everything a training run needs, built once from params: model, optimizer, loaders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from opplan import distributed
from opplan.config import Params
from opplan.data.dataset import ClipDataset, make_loader, num_classes, read_videos
from opplan.device import pick_device
from opplan.models import build_model_from_params, set_bn_freeze
from opplan.planning.graph import State
from opplan.train.checkpoint import load_model, model_identity
from opplan.train.loop import EpochResult, accuracy, predict, train_epoch
from opplan.train.objective import Objective, make_optimizer

log = logging.getLogger(__name__)


def make_deterministic() -> None:
    """Ask torch for deterministic kernels (see docs/determinism.md). Ops without one warn
    instead of failing. cuBLAS needs its workspace size fixed before its first use."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA); data sampling is seeded per epoch by the loaders."""
    torch.manual_seed(seed)


@dataclass
class TrainSetup:
    params: Params
    shards: Path
    train_splits: tuple[str, ...] = ("train",)
    """Splits trained on: internal train while planning, train + val for the final model (SPEC §5)."""
    device_index: int | None = None
    """Which GPU, when there are several and this process is one of the planning workers
    (``plan.workers``); a distributed process always uses the GPU of its local rank."""

    def __post_init__(self) -> None:
        make_deterministic()

    @property
    def device(self) -> torch.device:
        world = distributed.world()
        return pick_device(self.params.device, world.local_rank if world.enabled else self.device_index)

    @property
    def amp(self) -> bool:
        """Mixed precision: asked for in params, and on CUDA."""
        return self.params.train.amp and self.device.type == "cuda"

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
        with BatchNorm frozen when ``clip_length`` is long (SPEC §7)."""
        seed_everything(self.params.seed)
        model = build_model_from_params(self.params.model, self.num_classes)
        set_bn_freeze(model, clip_length, self.params.model.bn_freeze_min_length)
        return model.to(self.device)

    def load_weights(self, model: torch.nn.Module, path: Path) -> None:
        load_model(path, model, self.identity)
        model.to(self.device)

    def optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return make_optimizer(model, lr, self.params.train)

    def dataset(self, split: str, state: State, *, mode: str) -> ClipDataset:
        splits = self.train_splits if split == "train" else (split,)
        return ClipDataset(self.shards, splits, sampling=state.sampling, clip_length=state.clip_length,
                           mode=mode, train=self.params.train, evaluate=self.params.evaluate)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Scales float16 losses under mixed precision; a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp)

    def loader(self, split: str, state: State, *, mode: str, seed: int | None = None) -> DataLoader:
        """Training batches are shuffled and seeded per epoch; evaluation is in order.

        Distributed, each process loads its share: ``batch_size / processes`` clips of every
        training batch, and every ``processes``-th video when evaluating.
        """
        dataset = self.dataset(split, state, mode=mode)
        train = self.params.train
        world = distributed.world()
        if mode == "train":
            batch = train.batch_for(state.clip_length) // world.size  # divisible: checked by distributed.init
        elif mode == "val":
            batch = train.eval_batch_size
        else:
            batch = self.params.evaluate.batch_size
        return make_loader(dataset, batch, shuffle=mode == "train", num_workers=train.num_workers,
                           seed=self.params.seed if seed is None else seed, rank=world.rank, replicas=world.size)

    def train_epoch(self, model: torch.nn.Module, state: State, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, *, seed: int, progress: str = "") -> EpochResult:
        """One epoch of ``state``'s clips (seeded by ``seed``) through ``model`` (wrapped by
        :func:`opplan.distributed.wrap` when distributed)."""
        loader = self.loader("train", state, mode="train", seed=seed)
        return train_epoch(model, loader, optimizer, self.device, scaler=scaler, amp=self.amp,
                           micro_batch=self.params.train.micro_batch_for(state.clip_length), progress=progress,
                           objective=Objective.from_params(self.params.train))

    def predict(self, model: torch.nn.Module, split: str, state: State, *, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(videos, classes)`` and labels ``(videos,)`` of a split, in video order
        (distributed: each process scores its share and all get the whole)."""
        model = distributed.unwrap(model)
        distributed.sync_module(model, buffers_only=True)
        scores, labels = predict(model, self.loader(split, state, mode=mode), self.device)
        return distributed.gather_strided(scores), distributed.gather_strided(labels)

    def accuracy(self, model: torch.nn.Module, state: State) -> float:
        """Planning's validation accuracy: one centre clip, centre crop per internal-validation video."""
        return accuracy(*self.predict(model, "val", state, mode="val"))
