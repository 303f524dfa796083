"""Clips per second: frame shards vs decoding the mp4 files with decord on the fly.

Usage: ``python bench/loader.py [--seconds S]``. Synthesises two small datasets in a
temporary folder (the demo's 80x64 videos, and 160x128 ones), prepares them, then
reads the same training clips (same videos, same frame indices) both ways, in one
process: raw uint8 frames, and full training clips (scale jitter, crop, flip,
normalise). Prints clips/s and the shard/decord ratio for each, and what
``ClipDataset.__getitem__`` delivers end to end. One torch thread, as in a DataLoader worker.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import decord
import numpy as np
import torch

from opplan.config import PrepareParams, TrainParams
from opplan.data import sampling
from opplan.data.dataset import ClipDataset, read_videos
from opplan.data.prepare import prepare_dataset
from opplan.data.shards import ShardReader
from opplan.data.synth import SynthConfig, synthesize
from opplan.data.transforms import to_video, train_transform

SETTINGS = {
    # name: (synth config, prepare.short_side, train params, clip length)
    "demo 8x32² (80x64 -> short side 40)": (
        SynthConfig(seed=1, train_per_class=6, test_per_class=0, num_classes=4),
        40, TrainParams(crop_size=32, scale_jitter=(32, 40), eval_short_side=36), 8),
    "16x112² (160x128 -> short side 128)": (
        SynthConfig(seed=1, train_per_class=3, test_per_class=0, num_classes=4, width=160, height=128,
                    min_frames=64, max_frames=96),
        128, TrainParams(crop_size=112, scale_jitter=(128, 160), eval_short_side=128), 16),
}


def clip_plan(frame_counts: list[int], clip_length: int, name: str, count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` (video, frame indices) pairs, seeded: the clips both readers fetch."""
    rng = np.random.default_rng(0)
    videos = rng.integers(0, len(frame_counts), count)
    return [(int(v), sampling.train_clip(frame_counts[v], clip_length, name, rng)) for v in videos]


def rate(read: Callable[[int, np.ndarray], object], plan: list[tuple[int, np.ndarray]], seconds: float) -> float:
    """Clips per second over the plan (cycled until ``seconds`` have passed)."""
    read(*plan[0])  # warm up (imports, first map)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        read(*plan[done % len(plan)])
        done += 1
    return done / (time.perf_counter() - start)


def bench_setting(work: Path, label: str, seconds: float) -> list[str]:
    config, short_side, train, length = SETTINGS[label]
    data, shards = work / f"data{short_side}", work / f"shards{short_side}"
    synthesize(data, config)
    prepare_dataset(data, shards, PrepareParams(short_side=short_side, workers=2, val_size=1), seed=0)
    videos = read_videos(shards)
    reader, transform = ShardReader(shards), train_transform(train)
    shapes = videos[["shard", "offset", "num_frames", "height", "width"]].to_numpy()
    paths = [str(data / p) for p in videos["path"]]

    def from_shards(v: int, idx: np.ndarray) -> np.ndarray:
        shard, offset, n, h, w = shapes[v]
        return reader.frames(shard, int(offset), (int(n), int(h), int(w)), idx)

    def from_mp4(v: int, idx: np.ndarray) -> np.ndarray:
        h, w = int(shapes[v][3]), int(shapes[v][4])
        return decord.VideoReader(paths[v], num_threads=1, width=w, height=h).get_batch(idx.tolist()).asnumpy()

    lines = []
    for name in ("cs", "us"):
        plan = clip_plan(list(videos["num_frames"]), length, name, 200)
        for what, wrap in (("frames", lambda f: f), ("clips", lambda f: lambda v, i: transform(to_video(f(v, i))))):
            fast, slow = rate(wrap(from_shards), plan, seconds), rate(wrap(from_mp4), plan, seconds)
            lines.append(f"{label:38s} {name}  {what:6s}  shards {fast:8.1f}/s  decord {slow:7.1f}/s  "
                         f"x{fast / slow:5.1f}")
        dataset = ClipDataset(shards, ["train", "val"], sampling=name, clip_length=length, mode="train", train=train)
        whole = rate(lambda v, _: dataset[v], plan, seconds)
        lines.append(f"{label:38s} {name}  ClipDataset[i] (seeded sampling + transform)  {whole:8.1f}/s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    decord.logging.set_level(decord.logging.QUIET)
    with tempfile.TemporaryDirectory() as tmp:
        lines = [line for label in SETTINGS for line in bench_setting(Path(tmp), label, args.seconds)]
    print("one process, one thread; 'frames' = uint8 frames only, "
          "'clips' = + training transform (jitter, crop, flip, normalise)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
