"""Clips from the frame shards, for training, planning's validation and final testing.

``ClipDataset`` picks frames with :mod:`opplan.data.sampling` and transforms them with
:mod:`opplan.data.transforms`. Each training sample's randomness is seeded from
``(seed, epoch, index)``, so the same seed and epoch give the same clips whatever the
number of DataLoader workers; ``make_loader`` and ``reseed`` set seed and epoch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import tv_tensors

from opplan.config import EvaluateParams, TrainParams
from opplan.data import sampling
from opplan.data.manifest import CLASSES, read_classes
from opplan.data.prepare import VIDEO_COLUMNS, VIDEOS_CSV
from opplan.data.shards import ShardReader, is_jpeg
from opplan.data.transforms import MultiCrop, eval_transform, train_transform
from opplan.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("train", "val", "test")
PREPARE_HINT = "run the prepare stage first (`dvc repro prepare` or `python pipeline/prepare.py`)"


def read_videos(shards_dir: str | Path) -> pd.DataFrame:
    """``videos.csv`` of a prepared folder: one row per usable video (see ``VIDEO_COLUMNS``)."""
    path = Path(shards_dir) / VIDEOS_CSV
    if not path.is_file():
        raise DataError(f"{path}: no prepared dataset here; {PREPARE_HINT}")
    frame = pd.read_csv(path, dtype={"path": str, "label": str, "split": str, "shard": str})
    missing = [c for c in VIDEO_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: columns {', '.join(missing)} are missing; {PREPARE_HINT}")
    return frame


def num_classes(shards_dir: str | Path) -> int:
    """Number of classes of a prepared folder (lines of its ``classes.txt``)."""
    return len(read_classes(Path(shards_dir) / CLASSES))


class ClipDataset(Dataset):
    """Clips of the videos in ``splits`` of a prepared folder.

    ``__getitem__(i)`` returns ``(clip, label)``:
    - ``mode="train"``: float32 (3, T, S, S), a random clip (``sampling``) with augmentation;
    - ``mode="val"``: (3, T, S, S), the centre clip, centre crop; with ``clips = K > 1``,
      (K, 3, T, S, S): K uniformly spaced clips (planning's ``plan.val_clips``);
    - ``mode="test"``: (V, 3, T, S, S), ``V = evaluate.clips * evaluate.crops`` views,
      clip-major (all crops of clip 0, then clip 1, ...).
    with T = ``clip_length`` and S = ``train.crop_size`` (``evaluate.crop_size`` for ``test``).
    """

    def __init__(self, shards_dir: str | Path, splits: str | Sequence[str], *, sampling: str, clip_length: int,
                 mode: str, train: TrainParams, evaluate: EvaluateParams | None = None, clips: int = 1) -> None:
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        _check_arguments(splits, sampling, clip_length, mode, train)
        self.shards_dir = Path(shards_dir)
        self.splits, self.sampling, self.clip_length, self.mode = splits, sampling, clip_length, mode
        self.snippet = train.snippet_length
        self.evaluate = evaluate or EvaluateParams()
        videos = read_videos(self.shards_dir)
        videos = videos[videos["split"].isin(splits)].reset_index(drop=True)
        if videos.empty:
            raise DataError(f"{self.shards_dir / VIDEOS_CSV}: split(s) {', '.join(splits)} hold no videos")
        _check_shards(self.shards_dir, videos)
        # Plain arrays: cheap to pickle into workers, fast to index.
        self.paths = videos["path"].to_numpy(dtype=str)
        self.labels = videos["label_index"].to_numpy(dtype=np.int64)
        self._shard = videos["shard"].to_numpy(dtype=str)
        self._geometry = videos[["offset", "num_frames", "height", "width"]].to_numpy(dtype=np.int64)
        self._reader = ShardReader(self.shards_dir)
        self._transform = {"train": train_transform(train), "val": eval_transform(train),
                           "test": MultiCrop(train, self.evaluate.crops, self.evaluate.crop_size)}[mode]
        self.seed, self.epoch = 0, 0
        self.val_clips = int(clips)

    def __len__(self) -> int:
        return len(self.labels)

    def reseeded(self, seed: int, epoch: int) -> ClipDataset:
        """A shallow copy whose random clips are those of ``seed`` and ``epoch``."""
        other = copy.copy(self)
        other.seed, other.epoch = int(seed), int(epoch)
        return other

    def _video(self, index: int, offset: int, shape: tuple[int, int, int], indices: np.ndarray) -> tv_tensors.Video:
        """uint8 (len(indices), 3, H, W): the chosen frames of video ``index``, as the transforms take them."""
        return tv_tensors.Video(self._reader.frames_chw(self._shard[index], offset, shape, indices))

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        """``key``: an index, or ``(seed, epoch, index)`` from an :class:`EpochSampler` (the
        clip of ``index`` for that seed and epoch, as ``reseeded(seed, epoch)[index]``)."""
        seed, epoch, index = key if isinstance(key, tuple) else (self.seed, self.epoch, key)
        offset, n, height, width = (int(v) for v in self._geometry[index])
        label = int(self.labels[index])
        if self.mode == "train":
            seeds = np.random.SeedSequence([seed, epoch, int(index)])
            indices = sampling.train_clip(n, self.clip_length, self.sampling, np.random.default_rng(seeds),
                                          self.snippet)
            frames = self._video(index, offset, (n, height, width), indices)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(seeds.generate_state(1)[0]))
                clip = self._transform(frames)
            return clip.permute(1, 0, 2, 3).contiguous(), label
        clips = self.evaluate.clips if self.mode == "test" else self.val_clips
        indices = sampling.spaced_clips(n, self.clip_length, self.sampling, clips, self.snippet)  # (K, T)
        frames = self._video(index, offset, (n, height, width), indices.reshape(-1))
        if self.mode == "val" and clips == 1:
            return self._transform(frames).permute(1, 0, 2, 3).contiguous(), label
        if self.mode == "val":  # (K*T, 3, S, S) -> (K, 3, T, S, S)
            views = self._transform(frames).unflatten(0, (clips, self.clip_length))
            return views.permute(0, 2, 1, 3, 4).contiguous(), label
        views = self._transform(frames)  # (crops, K*T, 3, S, S)
        views = views.unflatten(1, (clips, self.clip_length)).transpose(0, 1).flatten(0, 1)  # (K*crops, T, 3, S, S)
        return views.permute(0, 2, 1, 3, 4).contiguous(), label


def _check_arguments(splits: tuple[str, ...], sampling_name: str, clip_length: int, mode: str,
                     train: TrainParams) -> None:
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty selection of {SPLITS}, got {splits}")
    if sampling_name not in sampling.SAMPLINGS:
        raise ValueError(f"sampling must be one of {sampling.SAMPLINGS}, got {sampling_name!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")


def _check_shards(shards_dir: Path, videos: pd.DataFrame) -> None:
    """Every shard the videos need exists and is long enough (before any worker starts)."""
    raw = videos["offset"] + videos["num_frames"] * videos["height"] * videos["width"] * 3
    # a jpeg shard: at least the video's frame table (the frames' ends are checked on reading)
    end = raw.where(~videos["shard"].map(is_jpeg), videos["offset"] + 8 * (videos["num_frames"] + 1))
    for name, needed in end.groupby(videos["shard"]).max().items():
        path = shards_dir / name
        try:
            size = np.load(path, mmap_mode="r").shape[0]
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: frame shard missing or unreadable ({exc}); {PREPARE_HINT}") from None
        if size < needed:
            raise DataError(f"{path}: holds {size} bytes of frames but videos.csv needs {needed}; {PREPARE_HINT}")


class EpochSampler(Sampler[tuple[int, int, int]]):
    """Keys ``(seed, epoch, index)`` in the order of ``seed`` and ``epoch``; ``set_epoch``
    changes both between passes without restarting the loader's workers.

    Shuffled: a ``DistributedSampler`` over the one permutation every process draws
    alike (rank r takes positions r, r + replicas, ...). In order: the strided share
    ``rank, rank + replicas, ...`` with no padding.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0,
                 replicas: int = 1) -> None:
        self.size, self.shuffle, self.rank, self.replicas = size, shuffle, rank, replicas
        self.set_epoch(seed, epoch)

    def set_epoch(self, seed: int, epoch: int = 0) -> None:
        self.seed, self.epoch = int(seed), int(epoch)

    @property
    def order_seed(self) -> int:
        """Seeds the permutation and the loader's worker seeds."""
        return int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])

    def _indices(self) -> Sequence[int] | Iterator[int]:
        if not self.shuffle:
            return range(self.rank, self.size, self.replicas)
        return iter(DistributedSampler(range(self.size), num_replicas=self.replicas, rank=self.rank, shuffle=True,
                                       seed=self.order_seed))

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return ((self.seed, self.epoch, int(i)) for i in self._indices())

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.size // self.replicas)
        return len(range(self.rank, self.size, self.replicas))


def _init_worker(worker_id: int) -> None:
    """One torch thread per worker (the workers together fill the cores; more threads each
    only contend), and numpy's legacy global generator seeded from torch's per-worker seed."""
    torch.set_num_threads(1)
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset: ClipDataset, batch_size: int, *, shuffle: bool, num_workers: int, seed: int,
                epoch: int = 0, rank: int = 0, replicas: int = 1, pin_memory: bool | None = None,
                prefetch_factor: int | None = None) -> DataLoader:
    """A DataLoader whose order (``shuffle``) and clips depend only on ``seed`` and ``epoch``.

    Its workers persist from one pass to the next: :func:`reseed` sets the next pass's seed
    and epoch, which gives exactly the batches of a new loader made with them.

    With ``replicas`` processes (data-parallel training) each gets its share: when
    shuffling, the union of the ranks' k-th batches is the lone process's k-th batch of
    ``batch_size * replicas`` clips; in order, every ``replicas``-th video (see
    :class:`EpochSampler`). ``pin_memory``: None pins when CUDA is available.
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, replicas=replicas)
    workers = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=_worker_seeds(sampler), worker_init_fn=_init_worker,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **workers)


def reseed(loader: DataLoader, seed: int, epoch: int = 0) -> DataLoader:
    """``loader`` (from :func:`make_loader`) set for the pass of ``seed`` and ``epoch``."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError("reseed needs a loader from make_loader")
    sampler.set_epoch(seed, epoch)
    loader.generator.manual_seed(sampler.order_seed)
    return loader


def _worker_seeds(sampler: EpochSampler) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(sampler.order_seed)
    return generator
