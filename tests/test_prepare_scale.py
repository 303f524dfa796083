"""Paper-scale prepare: JPEG shards, frame-rate resampling, the disk estimate and resuming
after a kill (docs/design.md "Frame shards")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opplan.config import PrepareParams, TrainParams
from opplan.data import shards
from opplan.data.dataset import ClipDataset, read_videos
from opplan.data.prepare import (
    KILL_AFTER_ENV,
    PARTIAL_JSON,
    decode_video,
    estimate_dataset,
    prepare_dataset,
    resample_indices,
)
from opplan.data.shards import ShardReader, verify_shards
from opplan.data.synth import SynthConfig, synthesize
from opplan.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "data"
    synthesize(root, SynthConfig(seed=3, train_per_class=4, test_per_class=1, num_classes=3, min_frames=20,
                                 max_frames=40))
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_jpeg_shards_read_back_close_to_raw_and_smaller(dataset: Path, tmp_path: Path) -> None:
    raw, jpeg = tmp_path / "raw", tmp_path / "jpeg"
    prepare_dataset(dataset, raw, PrepareParams(short_side=64, workers=1, val_size=2), seed=0)
    summary = prepare_dataset(dataset, jpeg, PrepareParams(short_side=64, workers=1, val_size=2, codec="jpeg",
                                                           quality=90), seed=0)
    assert summary["codec"] == "jpeg" and sorted(p.name for p in jpeg.glob("*.npy")) == ["jpeg-00000.npy"]
    verify_shards(jpeg, full=True)
    a, b = read_videos(raw), read_videos(jpeg)
    assert (a[["path", "num_frames", "height", "width", "split"]] == b[["path", "num_frames", "height", "width",
                                                                        "split"]]).all().all()
    assert sum(p.stat().st_size for p in jpeg.glob("*.npy")) * 4 < sum(p.stat().st_size for p in raw.glob("*.npy"))
    ra, rb = ShardReader(raw), ShardReader(jpeg)
    for row_a, row_b in zip(a.itertuples(), b.itertuples()):
        idx = np.array([row_a.num_frames - 1, 0, 3, 3])
        shape = (row_a.num_frames, row_a.height, row_a.width)
        fa = ra.frames(row_a.shard, row_a.offset, shape, idx).astype(int)
        fb = rb.frames(row_b.shard, row_b.offset, shape, idx).astype(int)
        assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 6, row_a.path
        assert (fb[2] == fb[3]).all()
        for reader, row in ((ra, row_a), (rb, row_b)):  # the transforms' (N, 3, H, W): the same frames, any order
            for order in (idx, idx[:3], np.sort(idx[:3])):
                chw = reader.frames_chw(row.shard, row.offset, shape, order).numpy()
                assert (chw.transpose(0, 2, 3, 1) == reader.frames(row.shard, row.offset, shape, order)).all()
    train = TrainParams(crop_size=32, scale_jitter=(40, 48), eval_short_side=40)
    clips = [ClipDataset(d, "train", sampling="cs", clip_length=8, mode="train", train=train)[1][0] for d in (raw, jpeg)]
    assert clips[0].shape == clips[1].shape == (3, 8, 32, 32)


def _old_layout(frames: np.ndarray, quality: int) -> np.ndarray:
    """A video as the first ``jpeg`` layout stored it: T + 1 offsets, then whole JPEG images."""
    import torch
    from torchvision.io import encode_jpeg

    images = [encode_jpeg(torch.from_numpy(f).permute(2, 0, 1).contiguous(), quality=quality).numpy() for f in frames]
    return np.concatenate([np.cumsum([0] + [len(i) for i in images], dtype="<u8").view(np.uint8), *images])


def test_frames_of_a_video_share_one_stored_jpeg_header_and_old_shards_still_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 50)[None, None, :, None] + np.linspace(0, 50, 40)[None, :, None, None]
    frames = np.clip(ramp + rng.normal(0, 4, (6, 40, 50, 3)) + [[[[0, 30, 60]]]], 0, 255).astype(np.uint8)
    new, old = shards.encode_jpeg_video(frames, 90), _old_layout(frames, 90)
    header = shards._header_length(old[7 * 8:])  # the first image's markers up to its start of scan
    assert 500 < header < 700 and new.size == old.size + 8 + 8 - 5 * header  # stored once, not six times
    monkeypatch.setattr(shards, "_header_length", lambda image: 0)  # no common header found: whole images
    whole = shards.encode_jpeg_video(frames, 90)
    assert whole.size == old.size + 16
    monkeypatch.undo()

    videos = [new, old, whole]
    np.save(tmp_path / "jpeg-00000.npy", np.concatenate(videos))
    reader, offsets = ShardReader(tmp_path), np.cumsum([0] + [v.size for v in videos[:-1]])
    order = np.array([5, 0, 2, 2])
    got = [reader.frames("jpeg-00000.npy", int(o), (6, 40, 50), order) for o in offsets]
    assert (got[0] == got[1]).all() and (got[0] == got[2]).all()  # the same pixels from every layout
    assert np.abs(got[0].astype(int) - frames[order]).mean() < 6  # and they are the frames (lossy)


def test_damaged_jpeg_table_is_named(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "jpeg"
    prepare_dataset(dataset, out, PrepareParams(short_side=48, workers=1, val_size=2, codec="jpeg"), seed=0)
    row = read_videos(out).iloc[0]
    with pytest.raises(DataError, match=r"jpeg-00000\.npy: shard is shorter"):
        ShardReader(out).frames(row.shard, int(row.offset), (int(row.num_frames) + 10**9, 48, 60), np.array([0]))


def test_fps_resamples_to_the_target_rate(dataset: Path) -> None:
    assert resample_indices(10, 30.0, 15.0).tolist() == [0, 2, 4, 6, 8]
    assert resample_indices(10, 25.0, 10.0).tolist() == [0, 2, 5, 7]  # times 0, .1, .2, .3 s
    video = str(next(dataset.rglob("*.mp4")))
    full = decode_video(video, 40).frames
    half = decode_video(video, 40, fps=12.5).frames  # the synthetic videos are 25 fps
    assert len(half) == -(-len(full) // 2) and (half == full[::2]).all()
    assert len(decode_video(video, 40, fps=60.0).frames) == len(full)  # never upsampled


def test_estimate_and_refusal(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PrepareParams(short_side=64, workers=1, val_size=2)
    estimate = estimate_dataset(dataset, tmp_path / "out", cfg)
    summary = prepare_dataset(dataset, tmp_path / "out", cfg, seed=0)
    assert 0.7 < estimate.bytes / summary["shard_bytes"] < 1.4 and estimate.sampled == 8
    import opplan.data.prepare as prepare

    monkeypatch.setattr(prepare.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(DataError) as info:
        prepare_dataset(dataset, tmp_path / "other", cfg, seed=0)
    message = str(info.value)
    assert "\n" not in message and "the shards need about" in message and "1000" not in message
    assert "0.0 MiB free" in message and "not enough space" in message


def run_prepare(dataset: Path, out: Path, kill_after: int | None, codec: str) -> int:
    code = ("import logging, sys; from opplan.config import PrepareParams; "
            "from opplan.data.prepare import prepare_dataset; "
            f"prepare_dataset(sys.argv[1], sys.argv[2], PrepareParams(short_side=112, workers=1, val_size=2, "
            f"shard_mb=1, codec={codec!r}, quality=95), seed=0)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(KILL_AFTER_ENV, None)
    if kill_after is not None:
        env[KILL_AFTER_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-c", code, str(dataset), str(out)], env=env, check=False).returncode


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_resume_after_kills_gives_identical_output(dataset: Path, tmp_path: Path, codec: str) -> None:
    """Killed (SIGKILL) after a seeded random number of videos, twice, then run to the end:
    the same files, byte for byte, as one uninterrupted run."""
    assert run_prepare(dataset, tmp_path / "once", None, codec) == 0
    reference = files(tmp_path / "once")
    assert len([n for n in reference if n.endswith(".npy")]) > (2 if codec == "raw" else 0)
    out = tmp_path / "killed"
    first, second = sorted(np.random.default_rng(len(codec)).choice(np.arange(2, 15), 2, replace=False))
    for kill in (first, second):
        assert run_prepare(dataset, out, int(kill), codec) == -9
        assert (out / PARTIAL_JSON).is_file() or codec == "jpeg"
    assert run_prepare(dataset, out, None, codec) == 0
    assert files(out) == reference
