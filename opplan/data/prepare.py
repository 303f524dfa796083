"""The ``prepare`` stage: decode every video once into frame shards, split, report.

1. Read the dataset folder (``manifest.csv`` + ``classes.txt``); bad rows are bad videos.
2. Decode each video with decord, in ``prepare.workers`` processes, resized so its
   short side is ``prepare.short_side`` (aspect kept). We trust what decodes, not the
   header: frames are read one by one until the stream ends or the first error, and
   the frames actually decoded are what counts (a stream with an error is decoded again
   with PyAV, which stops at the same frame every run). Unopenable or zero frames: a bad video.
3. Append the frames (optionally ``prepare.max_frames`` of them, uniformly) to shards.
4. Split the original training set into internal train / val (docs/design.md §5), stratified
   and seeded.
5. Write ``checksums.json`` (see :mod:`opplan.data.shards`), ``videos.csv``, ``classes.txt``,
   ``bad_videos.csv``, ``prepare.json``.

``videos.csv`` is removed first and written last, so an interrupted run never leaves
an index that points into half-written shards.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from opplan.config import Params, PrepareParams
from opplan.data.manifest import CLASSES, Entry, read_manifest, write_csv
from opplan.data.shards import ShardWriter
from opplan.data.splits import check_classes, stratified_split, validation_count
from opplan.errors import DataError
from opplan.fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

VIDEOS_CSV = "videos.csv"
BAD_VIDEOS_CSV = "bad_videos.csv"
SUMMARY_JSON = "prepare.json"
VIDEO_COLUMNS = ("index", "path", "label", "label_index", "split", "num_frames", "shard", "offset", "height", "width")


@dataclass(frozen=True)
class Decoded:
    """One video's frames (uint8 (T, H, W, 3)) or why there are none."""

    frames: np.ndarray | None
    reason: str = ""
    header_frames: int = 0
    """Frame count the container claims (for the log; never trusted)."""


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``short_side`` and the aspect ratio kept."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def decode_video(path: str, short_side: int, max_frames: int | None = None) -> Decoded:
    """Decode ``path`` frame by frame, resized; stop at the end or at the first failure.

    decord decodes in a worker thread and raises on its first error however many decoded
    frames are still queued, so on a corrupt stream it keeps 0..all of the good frames at
    random (0 to 28 of 28 for one test file under load), even the first. A stream decord
    fails on is therefore decoded again with PyAV, in this thread, one packet at a time:
    the same frames every run.
    """
    import decord  # here, not at import time: only decoding processes need it

    decord.logging.set_level(decord.logging.QUIET)
    try:
        height, width = decord.VideoReader(path, num_threads=1)[0].shape[:2]
        size = resized_shape(height, width, short_side)
        reader = decord.VideoReader(path, num_threads=1, width=size[1], height=size[0])
        header = len(reader)
        frames = []
        with contextlib.suppress(StopIteration):
            while True:
                frames.append(reader.next().asnumpy())
    except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError/IndexError alike
        log.debug("%s: decord failed (%s); decoding it with PyAV", path, _first_line(exc))
        header, frames = decode_until_error(path, short_side)
        if header is None:
            return Decoded(None, f"cannot open or decode the first frame: {_first_line(exc)}")
    if not frames:
        return Decoded(None, "no frame could be decoded", header)
    if max_frames is not None and len(frames) > max_frames:
        keep = ((2 * np.arange(max_frames) + 1) * len(frames)) // (2 * max_frames)
        frames = [frames[i] for i in keep]
    return Decoded(np.stack(frames), header_frames=header)


def decode_until_error(path: str, short_side: int) -> tuple[int | None, list[np.ndarray]]:
    """(frame count the header claims, frames resized like decord's) of ``path`` up to its
    first undecodable packet; ``(None, [])`` when not even a first frame decodes."""
    import av  # here, not at import time: only decoding processes need it

    frames: list[np.ndarray] = []
    header, size = None, None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            header = stream.frames
            for packet in container.demux(stream):
                for frame in packet.decode():
                    size = size or resized_shape(frame.height, frame.width, short_side)  # the first frame's
                    frames.append(frame.to_ndarray(width=size[1], height=size[0], format="rgb24"))
    except (av.FFmpegError, IndexError, ValueError) as exc:  # the first corrupt packet ends the video
        log.debug("%s: decoding stopped after %d frames: %s", path, len(frames), _first_line(exc))
    return (header if frames or header else None), frames


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _decode_all(paths: list[str], cfg: PrepareParams) -> Iterator[Decoded]:
    """Decoded videos in order; ``cfg.workers`` processes, a bounded number in flight."""
    if cfg.workers == 1:
        yield from (decode_video(p, cfg.short_side, cfg.max_frames) for p in paths)
        return
    # spawn: no fork of a parent that may hold torch/OpenMP threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=context) as pool:

        def submit(path: str) -> tuple[str, Future]:
            return path, pool.submit(decode_video, path, cfg.short_side, cfg.max_frames)

        queue = iter(paths)
        pending = deque(submit(p) for p in islice(queue, 4 * cfg.workers))
        while pending:
            path, future = pending.popleft()
            try:
                decoded = future.result()
            except BrokenProcessPool:
                raise DataError(f"a decoding process died (decord crashed?) on or near {path}; "
                                "set prepare.workers: 1 to find the file") from None
            pending.extend(submit(p) for p in islice(queue, 1))
            yield decoded


class _Progress:
    """Logs every ``every`` items, every ``seconds`` and at the end, with rate and ETA."""

    def __init__(self, total: int, every: int, seconds: float = 15.0) -> None:
        self.total, self.every, self.seconds = total, max(1, every), seconds
        self.start = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if done % self.every and done != self.total and now - self.last < self.seconds:
            return
        self.last, elapsed = now, now - self.start
        rate = done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - done) / rate if rate > 0 else 0.0
        log.info("prepare: %d/%d videos decoded, %.1f videos/s, ETA %.0f s", done, self.total, rate, eta)


def prepare_dataset(root: str | Path, out: str | Path, cfg: PrepareParams, *, seed: int) -> dict:
    """Decode the dataset folder ``root`` into shards in ``out``; returns the summary
    written to ``prepare.json``. Raises :class:`DataError` when the dataset is missing
    or more than ``cfg.max_bad_fraction`` of its videos are unusable."""
    root, out = Path(root), Path(out)
    entries, classes, problems = read_manifest(root)
    check_classes(*_labels(entries), warn=False)  # before decoding: a one-class dataset fails fast
    out.mkdir(parents=True, exist_ok=True)
    (out / VIDEOS_CSV).unlink(missing_ok=True)
    log.info("prepare: %d videos of %d classes in %s -> %s (short side %d, %d worker(s))",
             len(entries), len(classes), root, out, cfg.short_side, cfg.workers)
    writer = ShardWriter(out, cfg.shard_mb * 2**20)
    rows, bad = _decode_into(writer, entries, root, cfg, classes)
    writer.flush()
    writer.write_checksums()
    bad = [(f"{p.file}:{p.line}", p.reason) for p in problems] + bad
    write_csv(out / BAD_VIDEOS_CSV, ("path", "reason"), bad)
    _check_losses(len(bad), len(entries) + len(problems), cfg.max_bad_fraction, out, bad)
    check_classes(*_labels(rows))  # bad videos may have taken a class's last ones
    _assign_splits(rows, cfg, seed)
    atomic_write_text(out / CLASSES, "".join(f"{c}\n" for c in classes))
    write_csv(out / VIDEOS_CSV, VIDEO_COLUMNS, ([i, *(r[c] for c in VIDEO_COLUMNS[1:])] for i, r in enumerate(rows)))
    writer.remove_stale()
    summary = _summary(rows, bad, classes, writer, cfg, seed)
    atomic_write_json(out / SUMMARY_JSON, summary)
    log.info("prepare: %d usable videos (%s), %d bad, %d shard(s), %.1f MiB",
             len(rows), ", ".join(f"{k} {v}" for k, v in summary["splits"].items()), len(bad),
             len(writer.written), writer.total_bytes / 2**20)
    return summary


def _decode_into(writer: ShardWriter, entries: list[Entry], root: Path, cfg: PrepareParams,
                 classes: list[str]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Decode every entry into ``writer``; usable rows and (path, reason) of bad ones."""
    label_index = {name: i for i, name in enumerate(classes)}
    progress = _Progress(len(entries), every=max(len(entries) // 10, 1))
    rows, bad, truncated = [], [], 0
    for done, (entry, decoded) in enumerate(zip(entries, _decode_all([str(root / e.path) for e in entries], cfg)), 1):
        progress.step(done)
        if decoded.frames is None:
            bad.append((entry.path, decoded.reason))
            continue
        n, h, w = decoded.frames.shape[:3]
        truncated += cfg.max_frames is None and n < decoded.header_frames
        shard, offset = writer.add(decoded.frames)
        rows.append({"path": entry.path, "label": entry.label, "label_index": label_index[entry.label],
                     "split": entry.split, "num_frames": n, "shard": shard, "offset": offset, "height": h, "width": w})
    if truncated:
        log.warning("prepare: %d video(s) decoded fewer frames than their headers claim (kept what decoded)", truncated)
    return rows, bad


def _labels(rows: list) -> tuple[list[str], list[str]]:
    """Labels of the train and of the test rows (``Entry`` objects or row dicts)."""
    pairs = [(r.label, r.split) if isinstance(r, Entry) else (r["label"], r["split"]) for r in rows]
    return [label for label, split in pairs if split == "train"], [label for label, split in pairs if split == "test"]


def _check_losses(num_bad: int, total: int, max_fraction: float, out: Path, bad: list[tuple[str, str]]) -> None:
    if total and num_bad / total > max_fraction:
        shown = "\n".join(f"  {path}: {reason}" for path, reason in bad[:5])
        raise DataError(f"{num_bad} of {total} videos are unusable ({num_bad / total:.1%} > prepare.max_bad_fraction "
                        f"{max_fraction:.1%}); all listed in {out / BAD_VIDEOS_CSV}, first:\n{shown}")


def _assign_splits(rows: list[dict], cfg: PrepareParams, seed: int) -> None:
    """Turn part of the original ``train`` rows into ``val`` (in place)."""
    train = [r for r in rows if r["split"] == "train"]
    if not train:
        raise DataError("no usable training video: the manifest needs rows with split 'train'")
    wanted = validation_count(cfg.val_size, len(train), sum(r["split"] == "test" for r in rows))
    is_val = stratified_split([r["label_index"] for r in train], wanted, seed)
    if not is_val.any():
        raise DataError(f"the internal validation split is empty (prepare.val_size {cfg.val_size!r} gives {wanted}; "
                        "a class needs two training videos to give one to validation)")
    for row, val in zip(train, is_val):
        row["split"] = "val" if val else "train"


def _summary(rows: list[dict], bad: list, classes: list[str], writer: ShardWriter, cfg: PrepareParams,
             seed: int) -> dict:
    """Counts and settings for ``prepare.json`` (no timings: same inputs, same file)."""
    frames = np.array([r["num_frames"] for r in rows])
    return {
        "videos": len(rows),
        "bad_videos": len(bad),
        "classes": len(classes),
        "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")},
        "frames": {"total": int(frames.sum()), "min": int(frames.min()), "mean": round(float(frames.mean()), 2),
                   "max": int(frames.max())},
        "shards": len(writer.written),
        "shard_bytes": writer.total_bytes,
        "short_side": cfg.short_side,
        "max_frames": cfg.max_frames,
        "val_size": cfg.val_size,
        "seed": seed,
    }


def prepare_from_params(params: Params) -> dict:
    """``prepare_dataset`` with the paths and settings of ``params.yaml``."""
    return prepare_dataset(params.data.root, params.prepare.out, params.prepare, seed=params.seed)
