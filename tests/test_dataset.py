"""ClipDataset, transforms and loaders over the tiny prepared dataset."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader, DistributedSampler

from opplan.config import EvaluateParams, TrainParams
from opplan.data import sampling
from opplan.data.dataset import ClipDataset, make_loader, num_classes, read_videos, reseed
from opplan.data.shards import ShardReader
from opplan.data.transforms import MEAN, STD, MultiCrop, ScaleJitterCrop, to_video
from opplan.errors import DataError

TRAIN = TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=36, flip=True)


def dataset(shards: Path, splits: str | list[str] = "train", **kwargs: object) -> ClipDataset:
    options = {"sampling": "cs", "clip_length": 8, "mode": "train", "train": TRAIN, **kwargs}
    return ClipDataset(shards, splits, **options)


def unnormalise(clip: torch.Tensor) -> np.ndarray:
    """(3, T, S, S) float -> uint8 (T, S, S, 3)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
    return (clip * std + mean).mul(255).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()


def video_frames(shards: Path, index: int) -> np.ndarray:
    row = read_videos(shards).iloc[index]
    return ShardReader(shards).video(row["shard"], row["offset"], row["num_frames"], row["height"], row["width"])


def test_read_videos_and_num_classes(tiny_shards: Path) -> None:
    videos = read_videos(tiny_shards)
    assert len(videos) == 16 and num_classes(tiny_shards) == 4
    assert sorted(videos["split"].value_counts().items()) == [("test", 4), ("train", 8), ("val", 4)]
    assert set(videos["height"]) == {40} and set(videos["width"]) == {50}


@pytest.mark.parametrize("name", ["cs", "us"])
def test_shapes_per_mode(tiny_shards: Path, name: str) -> None:
    clip, label = dataset(tiny_shards, ["train", "val"], sampling=name)[0]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32 and isinstance(label, int)
    assert len(dataset(tiny_shards, ["train", "val"])) == 12
    clip, _ = dataset(tiny_shards, "val", sampling=name, mode="val")[1]
    assert clip.shape == (3, 8, 32, 32)
    views, _ = dataset(tiny_shards, "test", sampling=name, mode="test", clip_length=4,
                       evaluate=EvaluateParams(clips=5, crops=3))[0]
    assert views.shape == (15, 3, 4, 32, 32)
    views, _ = dataset(tiny_shards, "test", sampling=name, mode="test", evaluate=EvaluateParams(clips=2, crops=1))[0]
    assert views.shape == (2, 3, 8, 32, 32)


def test_val_clip_is_the_centre_clip_centre_crop(tiny_shards: Path) -> None:
    ds = dataset(tiny_shards, "val", sampling="us", mode="val", train=TrainParams(
        crop_size=32, scale_jitter=(32, 40), eval_short_side=40))  # no resize: pixels compare exactly
    index = int(np.flatnonzero(read_videos(tiny_shards)["split"] == "val")[0])
    video = video_frames(tiny_shards, index)
    expected = video[sampling.centre_clip(len(video), 8, "us"), 4:36, 9:41]
    np.testing.assert_array_equal(unnormalise(ds[0][0]), expected)


def test_test_views_are_spaced_clips_times_three_crops(tiny_shards: Path) -> None:
    train = TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=40)
    ds = dataset(tiny_shards, "test", sampling="cs", mode="test", train=train, evaluate=EvaluateParams(clips=2))
    index = int(np.flatnonzero(read_videos(tiny_shards)["split"] == "test")[0])
    video = video_frames(tiny_shards, index)
    views = ds[0][0]
    clips = sampling.spaced_clips(len(video), 8, "cs", 2)
    for k in range(2):
        for c, left in enumerate((0, 9, 18)):  # left, centre, right of a 50-pixel-wide frame
            np.testing.assert_array_equal(unnormalise(views[3 * k + c]), video[clips[k], 4:36, left : left + 32])


def test_training_clip_is_a_window_of_the_video(tiny_shards: Path) -> None:
    """No scaling, no flip: the clip is l consecutive frames at some crop offset."""
    train = TrainParams(crop_size=40, scale_jitter=(40, 40), eval_short_side=40, flip=False)
    ds = dataset(tiny_shards, "train", train=train)
    video = video_frames(tiny_shards, int(np.flatnonzero(read_videos(tiny_shards)["split"] == "train")[0]))
    clip = unnormalise(ds[0][0])
    matches = [(s, x) for s in range(len(video) - 7) for x in range(11)
               if np.array_equal(video[s : s + 8, :, x : x + 40], clip)]
    assert len(matches) >= 1


def test_multicrop_on_portrait_frames() -> None:
    frames = np.arange(2 * 50 * 40 * 3, dtype=np.int64).reshape(2, 50, 40, 3).astype(np.uint8)
    views = MultiCrop(TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=40), crops=3)(to_video(frames))
    assert views.shape == (3, 2, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    top_left = (views[0, 0] * std + mean).mul(255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(top_left, frames[0, 0:32, 4:36])  # top crop, centred horizontally


def test_same_seed_and_epoch_same_clips_with_any_workers(tiny_shards: Path) -> None:
    ds = dataset(tiny_shards, ["train", "val"], sampling="us")

    def batches(workers: int, seed: int, epoch: int) -> list[torch.Tensor]:
        loader = make_loader(ds, 4, shuffle=True, num_workers=workers, seed=seed, epoch=epoch)
        return [torch.cat([clip.flatten(), label.float()]) for clip, label in loader]

    reference = batches(0, seed=7, epoch=1)
    assert len(reference) == 3
    assert all(torch.equal(a, b) for a, b in zip(reference, batches(2, seed=7, epoch=1)))
    assert not torch.equal(torch.cat(reference), torch.cat(batches(0, seed=7, epoch=2)))
    assert not torch.equal(torch.cat(reference), torch.cat(batches(0, seed=8, epoch=1)))


def todays_loader(ds: ClipDataset, batch_size: int, seed: int, epoch: int = 0, rank: int = 0,
                  replicas: int = 1) -> DataLoader:
    """The loader of earlier versions (a new one per epoch, no persistent workers): what a
    persistent loader reseeded for ``seed`` and ``epoch`` must reproduce exactly."""
    order_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    sampler = DistributedSampler(ds, num_replicas=replicas, rank=rank, shuffle=True, seed=order_seed)
    return DataLoader(ds.reseeded(seed, epoch), batch_size=batch_size, sampler=sampler, num_workers=0)


def flat(loader: Iterable) -> list[torch.Tensor]:
    return [torch.cat([clip.flatten(), label.float()]) for clip, label in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_persistent_loader_gives_todays_clips_for_every_epoch_and_seed(tiny_shards: Path, workers: int) -> None:
    ds = dataset(tiny_shards, ["train", "val"], sampling="us")
    loader = make_loader(ds, 4, shuffle=True, num_workers=workers, seed=0)
    assert loader.persistent_workers is (workers > 0)
    worker_pids = set()
    for seed in (11, 2**62 + 5, 11, 3):  # epoch seeds as transition.epoch_seed makes them (63-bit)
        batches = flat(reseed(loader, seed))
        expected = flat(todays_loader(ds, 4, seed))
        assert len(batches) == len(expected) == 3
        assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))
        if workers:
            worker_pids.add(tuple(sorted(w.pid for w in loader._iterator._workers)))
    assert len(worker_pids) <= 1  # the same worker processes served every epoch


def test_a_reseeded_share_per_rank_is_todays(tiny_shards: Path) -> None:
    ds = dataset(tiny_shards, ["train", "val"])
    loaders = [make_loader(ds, 2, shuffle=True, num_workers=0, seed=0, rank=r, replicas=2) for r in range(2)]
    for seed in (5, 6):
        for rank, loader in enumerate(loaders):
            expected = flat(todays_loader(ds, 2, seed, rank=rank, replicas=2))
            assert all(torch.equal(a, b) for a, b in zip(flat(reseed(loader, seed)), expected, strict=True))


def test_loader_workers_run_one_torch_thread(tiny_shards: Path) -> None:
    class Threads(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, key: object) -> int:
            return torch.get_num_threads()

    loader = make_loader(Threads(), 1, shuffle=False, num_workers=2, seed=0)  # type: ignore[arg-type]
    assert [int(n) for n in loader] == [1, 1]


def test_evaluation_is_deterministic_and_pickles(tiny_shards: Path) -> None:
    ds = dataset(tiny_shards, "val", mode="val")
    first = ds[2][0]
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(first, copy[2][0]) and torch.equal(first, ds.reseeded(5, 9)[2][0])


def test_errors_are_clear_and_early(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared dataset here; run the prepare stage"):
        dataset(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_shards, broken)
    videos = read_videos(broken)
    videos[videos["split"] != "val"].to_csv(broken / "videos.csv", index=False)
    with pytest.raises(DataError, match="split.* val hold no videos"):
        dataset(broken, "val")
    for shard in broken.glob("frames-*.npy"):
        shard.unlink()
    with pytest.raises(DataError, match="frame shard missing"):
        dataset(broken, "train")
    with pytest.raises(ValueError, match="splits"):
        dataset(tiny_shards, "validation")
    with pytest.raises(ValidationError, match="eval_short_side"):  # refused when params are read
        TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=30)


def test_scale_jitter_crop_is_resize_then_crop() -> None:
    """Short side 40 -> 80 then a 32-pixel crop: the crop covers 16 input pixels."""
    ramp = np.broadcast_to(np.arange(50, dtype=np.uint8)[None, None, :, None] * 5, (2, 40, 50, 3))
    torch.manual_seed(0)
    for _ in range(5):
        out = ScaleJitterCrop((80, 80), 32)(to_video(ramp))
        assert out.shape == (2, 3, 32, 32)
        row = out[0, 0, 0].int()
        assert 14 * 5 <= row.max() - row.min() <= 16 * 5 and torch.all(row.diff() >= 0)
    exact = ScaleJitterCrop((40, 40), 32)(to_video(ramp))[0, 0, 0]  # no scaling: a plain crop
    assert exact.diff().tolist() == [5] * 31


def test_test_crop_size_is_its_own_setting(tiny_shards: Path) -> None:
    """The paper tests on 256² crops of frames at short side 256 while training on 224²: with
    evaluate.crop_size the test views are larger than the training crops."""
    train = TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=40)
    ds = dataset(tiny_shards, "test", sampling="cs", mode="test", train=train,
                 evaluate=EvaluateParams(clips=1, crops=3, crop_size=40))
    index = int(np.flatnonzero(read_videos(tiny_shards)["split"] == "test")[0])
    video = video_frames(tiny_shards, index)
    views = ds[0][0]
    assert views.shape == (3, 3, 8, 40, 40)
    clip = sampling.spaced_clips(len(video), 8, "cs", 1)[0]
    np.testing.assert_array_equal(unnormalise(views[2]), video[clip, :, 10:50])  # the right-hand crop
    assert dataset(tiny_shards, "val", mode="val", train=train,
                   evaluate=EvaluateParams(crop_size=40))[0][0].shape[-1] == 32  # validation: train's crop
    with pytest.raises(ValueError, match="eval_short_side"):
        MultiCrop(train, 3, size=48)


def test_uniform_clips_take_snippets(tiny_shards: Path) -> None:
    train = TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=40, snippet_length=4)
    ds = dataset(tiny_shards, "val", sampling="us", mode="val", train=train)
    index = int(np.flatnonzero(read_videos(tiny_shards)["split"] == "val")[0])
    video = video_frames(tiny_shards, index)
    expected = video[sampling.centre_clip(len(video), 8, "us", snippet=4), 4:36, 9:41]
    np.testing.assert_array_equal(unnormalise(ds[0][0]), expected)
