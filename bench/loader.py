"""Clips per second per core: raw frame shards vs JPEG frame shards vs decoding the videos on the fly.

Usage: ``python bench/loader.py [--seconds S] [--quality Q]``. Synthesises small datasets
at the paper's shapes in a temporary folder (docs/design.md "Frame shards"):
16x112² clips cropped from 128x171 frames (C3D/R(2+1)D style) and 16x224² clips from
frames at short side 256 (the paper's), prepares each twice (``prepare.codec: raw`` and
``jpeg``), then reads the same training clips (same videos, same frame indices) every way,
in one process with one torch thread (one DataLoader worker = one core): uint8 frames
only, and full training clips (scale jitter, crop, flip, normalise). Also the mp4 files
re-encoded at that size, decoded on the fly with decord. Prints clips/s side by side, the
bytes per frame, and with a GPU the nvJPEG batch decode rate (frames/s).
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
from torchvision import tv_tensors

from opplan.config import PrepareParams, TrainParams
from opplan.data import sampling
from opplan.data.dataset import read_videos
from opplan.data.prepare import prepare_dataset
from opplan.data.shards import ShardReader, decode_jpeg_frames
from opplan.data.synth import SynthConfig, synthesize
from opplan.data.transforms import to_video, train_transform

SETTINGS = {
    # name: (synth config (frames already at the stored size), prepare.short_side, train params, clip length)
    "16x112² (from 128x171)": (
        SynthConfig(seed=1, train_per_class=2, test_per_class=0, num_classes=4, width=170, height=128,
                    min_frames=48, max_frames=64),
        128, TrainParams(crop_size=112, scale_jitter=(128, 128), eval_short_side=128), 16),
    "16x224² (from short side 256)": (
        SynthConfig(seed=1, train_per_class=2, test_per_class=0, num_classes=4, width=342, height=256,
                    min_frames=48, max_frames=64),
        256, TrainParams(crop_size=224, scale_jitter=(256, 320), eval_short_side=256), 16),
}


def clip_plan(frame_counts: list[int], clip_length: int, count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` (video, frame indices) pairs, seeded: the clips every reader fetches."""
    rng = np.random.default_rng(0)
    videos = rng.integers(0, len(frame_counts), count)
    return [(int(v), sampling.train_clip(frame_counts[v], clip_length, "cs", rng)) for v in videos]


def rate(read: Callable[[int, np.ndarray], object], plan: list[tuple[int, np.ndarray]], seconds: float) -> float:
    """Clips per second over the plan (cycled until ``seconds`` have passed)."""
    read(*plan[0])  # warm up (imports, first map)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        read(*plan[done % len(plan)])
        done += 1
    return done / (time.perf_counter() - start)


def bench_setting(work: Path, label: str, seconds: float, quality: int) -> list[str]:
    config, short_side, train, length = SETTINGS[label]
    data = work / f"data{short_side}"
    synthesize(data, config)
    readers, frames_total, stored = {}, 0, {}
    for codec in ("raw", "jpeg"):
        out = work / f"{codec}{short_side}"
        summary = prepare_dataset(data, out, PrepareParams(short_side=short_side, workers=2, val_size=1, codec=codec,
                                                           quality=quality), seed=0)
        frames_total, stored[codec] = summary["frames"]["total"], summary["shard_bytes"]
        readers[codec] = (ShardReader(out), read_videos(out))
    videos = readers["raw"][1]
    shapes = videos[["offset", "num_frames", "height", "width"]].to_numpy()
    paths = [str(data / p) for p in videos["path"]]
    transform = train_transform(train)

    def shard_reader(codec: str, chw: bool = False) -> Callable[[int, np.ndarray], np.ndarray | torch.Tensor]:
        """uint8 (T, H, W, 3) frames; ``chw``: the (T, 3, H, W) video the training loader transforms."""
        reader, table = readers[codec]
        rows = table[["shard", "offset", "num_frames", "height", "width"]].to_numpy()

        def read(v: int, idx: np.ndarray) -> np.ndarray | torch.Tensor:
            shard, offset, n, h, w = rows[v]
            if chw:
                return tv_tensors.Video(reader.frames_chw(shard, int(offset), (int(n), int(h), int(w)), idx))
            return reader.frames(shard, int(offset), (int(n), int(h), int(w)), idx)
        return read

    def from_mp4(v: int, idx: np.ndarray) -> np.ndarray:
        h, w = int(shapes[v][2]), int(shapes[v][3])
        return decord.VideoReader(paths[v], num_threads=1, width=w, height=h).get_batch(idx.tolist()).asnumpy()

    plan = clip_plan(list(videos["num_frames"]), length, 100)
    readers_by_name = {"raw": shard_reader("raw"), "jpeg": shard_reader("jpeg"), "mp4": from_mp4}
    videos_by_name = {"raw": shard_reader("raw", chw=True), "jpeg": shard_reader("jpeg", chw=True),
                      "mp4": lambda v, i: to_video(from_mp4(v, i))}  # as ClipDataset gives them to the transform
    lines = [f"{label}: bytes/frame raw {stored['raw'] / frames_total:,.0f}, jpeg q{quality} "
             f"{stored['jpeg'] / frames_total:,.0f} (1/{stored['raw'] / stored['jpeg']:.1f})"]
    for what in ("frames", "clips"):
        rates = {}
        for name, read in readers_by_name.items():
            fn = read if what == "frames" else (lambda f: lambda v, i: transform(f(v, i)))(videos_by_name[name])
            rates[name] = rate(fn, plan, seconds)
        lines.append(f"  {what:6s} clips/s per core: raw {rates['raw']:7.1f}  jpeg {rates['jpeg']:7.1f}  "
                     f"mp4 (decord) {rates['mp4']:6.1f}   raw/jpeg x{rates['raw'] / rates['jpeg']:.2f}")
    if torch.cuda.is_available():
        reader, table = readers["jpeg"]
        row = table.iloc[0]
        blobs = reader.jpeg_images(row["shard"], int(row["offset"]), int(row["num_frames"]), np.arange(length))
        for _ in range(3):
            decode_jpeg_frames(blobs, device="cuda")
        torch.cuda.synchronize()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            decode_jpeg_frames(blobs, device="cuda")
            done += 1
        lines.append(f"  GPU (nvJPEG) batch decode of {length} frames: "
                     f"{done * length / (time.perf_counter() - start):,.0f} frames/s (to host)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Time per measurement.")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (prepare.quality).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    decord.logging.set_level(decord.logging.QUIET)
    with tempfile.TemporaryDirectory() as tmp:
        lines = [line for label in SETTINGS for line in bench_setting(Path(tmp), label, args.seconds, args.quality)]
    print("one process, one torch thread (= one loader worker, one core); 'frames' = uint8 frames only, "
          "'clips' = + training transform (jitter, crop, flip, normalise)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
