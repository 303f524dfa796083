"""The ``prepare`` stage: decode every video once into frame shards, split, report.

1. Read the dataset folder (``manifest.csv`` + ``classes.txt``); bad rows are bad videos.
2. Decode each video with decord (a frame folder: its images, :mod:`opplan.data.frames`), in
   ``prepare.workers`` processes, resized so its short side is ``prepare.short_side`` (aspect
   kept). We trust what decodes, not the header: frames are read one by one until the stream
   ends or the first error, and the frames actually decoded are what counts (a stream with an
   error is decoded again with PyAV, which stops at the same frame every run). Unopenable or
   zero frames: a bad video.
3. Append the frames (resampled to ``prepare.fps``, then optionally ``prepare.max_frames``
   of them, uniformly) to shards, raw or as JPEG (``prepare.codec``, encoded in the workers).
4. Split the original training set into internal train / val (docs/design.md §5), stratified
   and seeded.
5. Write ``checksums.json`` (see :mod:`opplan.data.shards`), ``videos.csv``, ``classes.txt``,
   ``bad_videos.csv``, ``prepare.json``.

``videos.csv`` is removed first and written last, so an interrupted run never leaves
an index that points into half-written shards.

Before decoding, the shards' size is estimated from a sample of videos and a dataset the
disk cannot hold is refused (:func:`estimate_dataset`). Each finished shard is recorded in
``prepare.partial.json`` with the rows so far; a killed or failed run with the same inputs
and settings keeps the shards it lists (full SHA-256 checked), skips their videos and redoes
the rest, giving the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from opplan.config import Params, PrepareParams
from opplan.data.frames import FrameFolderError, read_frames, resized_shape
from opplan.data.manifest import CLASSES, Entry, read_manifest, write_csv
from opplan.data.shards import SHARD_RE, SHARED_HEADER, ShardWriter, encode_jpeg_video, full_digest
from opplan.data.splits import check_classes, stratified_split, validation_count
from opplan.errors import DataError
from opplan.fileio import atomic_write_json, atomic_write_text
from opplan.progress import Progress

log = logging.getLogger(__name__)

VIDEOS_CSV = "videos.csv"
BAD_VIDEOS_CSV = "bad_videos.csv"
SUMMARY_JSON = "prepare.json"
PARTIAL_JSON = "prepare.partial.json"
ESTIMATE_SAMPLE = 8
"""Videos decoded (evenly spaced through the manifest) to estimate the shards' size."""
KILL_AFTER_ENV = "OPPLAN_PREPARE_KILL_AFTER"
"""Test hook: SIGKILL this process after that many videos are stored (the resume test)."""
PROGRESS_SECONDS = 15.0
"""Decoding progress in the log at most this often, and when the last video is done."""
VIDEO_COLUMNS = ("index", "path", "label", "label_index", "split", "num_frames", "shard", "offset", "height", "width")


@dataclass(frozen=True)
class Decoded:
    """One video's frames (uint8 (T, H, W, 3)) or why there are none."""

    frames: np.ndarray | None
    reason: str = ""
    header_frames: int = 0
    """Frame count the container claims (for the log; never trusted)."""


IMAGE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
"""File signatures of still images, refused even when renamed ``.mp4`` (FFmpeg would read them
as a one-frame video)."""
IMAGE_CODECS = {"png", "mjpeg", "bmp", "tiff", "webp", "jpeg2000", "gif"}


def unusable_reason(path: str) -> str | None:
    """Why ``path`` is no video, in a user's terms, or ``None`` when it has a video stream
    of more than one frame; FFmpeg's own words go to the debug log."""
    import av  # here, not at import time: only decoding processes need it

    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head:
        return "an empty file (0 bytes), not a video"
    for magic, kind in IMAGE_MAGIC.items():
        if head.startswith(magic):
            return f"an image ({kind}), not a video"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "an image (WebP), not a video"
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return "no video stream (audio or data only)"
            stream = container.streams.video[0]
            if stream.codec_context.name in IMAGE_CODECS and (stream.frames or 0) <= 1:
                return f"an image ({stream.codec_context.name.upper()}), not a video"
    except (av.FFmpegError, ValueError, IndexError) as exc:
        log.debug("%s: FFmpeg cannot open it: %s", path, _first_line(exc))
        return "not a video file that can be opened (an unknown format, or a damaged or truncated header)"
    return None


@contextlib.contextmanager
def _library_stderr_to_debug(path: str) -> Iterator[None]:
    """decord's C++ writes lines such as ``ERROR opening`` to the process's stderr (file
    descriptor 2) before raising; they go to the debug log instead of the user's terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("%s: decord said: %s", path, text[:2000])


def decode_video(path: str, short_side: int, max_frames: int | None = None, fps: float | None = None) -> Decoded:
    """Decode ``path`` frame by frame, resized; stop at the end or at the first failure.

    decord decodes in a worker thread and raises on its first error however many decoded
    frames are still queued, so on a corrupt stream it keeps 0..all of the good frames at
    random (0 to 28 of 28 for one test file under load), even the first. A stream decord
    fails on is therefore decoded again with PyAV, in this thread, one packet at a time:
    the same frames every run. A file that is no video (an image, audio only, an unknown
    format) is refused first, with the reason in a user's terms (:func:`unusable_reason`).
    A folder is a frame folder (:func:`decode_frame_folder`).
    """
    if os.path.isdir(path):
        return decode_frame_folder(path, short_side, max_frames, fps)
    import decord  # here, not at import time: only decoding processes need it

    reason = unusable_reason(path)
    if reason is not None:
        return Decoded(None, reason)
    decord.logging.set_level(decord.logging.QUIET)
    try:
        with _library_stderr_to_debug(path):
            height, width = decord.VideoReader(path, num_threads=1)[0].shape[:2]
            size = resized_shape(height, width, short_side)
            reader = decord.VideoReader(path, num_threads=1, width=size[1], height=size[0])
            header, rate = len(reader), reader.get_avg_fps()
            frames = []
            with contextlib.suppress(StopIteration):
                while True:
                    frames.append(reader.next().asnumpy())
    except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError/IndexError alike
        log.debug("%s: decord failed (%s); decoding it with PyAV", path, _first_line(exc))
        header, frames, rate = decode_until_error(path, short_side)
        if header is None:
            return Decoded(None, "zero frames decode (the video stream is damaged from its first frame)")
        if frames and header and len(frames) < header:
            log.info("%s: truncated at frame %d (its header says %d frames); keeping the %d that decode", path,
                     len(frames), header, len(frames))
    if not frames:
        return Decoded(None, "zero frames (the video stream holds no decodable frame)", header)
    if fps is not None and rate and fps < rate:
        frames = [frames[i] for i in resample_indices(len(frames), rate, fps)]
    return Decoded(np.stack(_at_most(frames, max_frames)), header_frames=header)


def _at_most(frames: list[np.ndarray], max_frames: int | None) -> list[np.ndarray]:
    """``max_frames`` of ``frames``, uniformly spaced (all of them when there are no more)."""
    if max_frames is None or len(frames) <= max_frames:
        return frames
    keep = ((2 * np.arange(max_frames) + 1) * len(frames)) // (2 * max_frames)
    return [frames[i] for i in keep]


FOLDER_FPS = ("a frame folder has no frame rate, so prepare.fps cannot resample it; set prepare.fps: null "
              "(prepare.max_frames bounds the length)")


def decode_frame_folder(path: str, short_side: int, max_frames: int | None = None,
                        fps: float | None = None) -> Decoded:
    """A frame folder's images as one video (:mod:`opplan.data.frames`), resized and thinned
    like :func:`decode_video`'s frames; its reason when no frame or a bad image is found."""
    if fps is not None:
        return Decoded(None, FOLDER_FPS)
    try:
        frames = read_frames(path, short_side)
    except FrameFolderError as exc:
        return Decoded(None, str(exc))
    return Decoded(np.stack(_at_most(frames, max_frames)))


def resample_indices(count: int, rate: float, fps: float) -> np.ndarray:
    """Indices of the frames shown at times ``k / fps`` of a ``count``-frame video at ``rate``
    frames/s (each the latest frame at or before that time), as the Kinetics recipes resample."""
    keep = int(np.ceil(count * fps / rate - 1e-9))
    return np.minimum(np.floor(np.arange(keep) * rate / fps + 1e-9).astype(np.int64), count - 1)


def decode_until_error(path: str, short_side: int) -> tuple[int | None, list[np.ndarray], float]:
    """(frame count the header claims, frames resized like decord's, frame rate) of ``path`` up
    to its first undecodable packet; ``(None, [], 0)`` when not even a first frame decodes."""
    import av  # here, not at import time: only decoding processes need it

    frames: list[np.ndarray] = []
    header, size, rate = None, None, 0.0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            header, rate = stream.frames, float(stream.average_rate or 0)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    size = size or resized_shape(frame.height, frame.width, short_side)  # the first frame's
                    frames.append(frame.to_ndarray(width=size[1], height=size[0], format="rgb24"))
    except (av.FFmpegError, IndexError, ValueError) as exc:  # the first corrupt packet ends the video
        log.debug("%s: decoding stopped after %d frames: %s", path, len(frames), _first_line(exc))
    return (header if frames or header else None), frames, rate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


@dataclass(frozen=True)
class Stored:
    """One video as a shard stores it (``data``: frames or JPEG bytes), or why there is none."""

    data: np.ndarray | None
    shape: tuple[int, int, int] = (0, 0, 0)
    """(T, H, W) of the frames."""
    reason: str = ""
    header_frames: int = 0


def store_video(path: str, cfg: PrepareParams) -> Stored:
    """Decode ``path`` (:func:`decode_video`) and encode it as ``cfg.codec`` says (in the worker)."""
    decoded = decode_video(path, cfg.short_side, cfg.max_frames, cfg.fps)
    if decoded.frames is None:
        return Stored(None, reason=decoded.reason, header_frames=decoded.header_frames)
    data = decoded.frames if cfg.codec == "raw" else encode_jpeg_video(decoded.frames, cfg.quality)
    return Stored(data, decoded.frames.shape[:3], header_frames=decoded.header_frames)


def _decode_all(paths: list[str], cfg: PrepareParams) -> Iterator[Stored]:
    """Stored videos in order; ``cfg.workers`` processes, a bounded number in flight."""
    if cfg.workers == 1:
        yield from (store_video(p, cfg) for p in paths)
        return
    # spawn: no fork of a parent that may hold torch/OpenMP threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=context) as pool:

        def submit(path: str) -> tuple[str, Future]:
            return path, pool.submit(store_video, path, cfg)

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


def prepare_dataset(root: str | Path, out: str | Path, cfg: PrepareParams, *, seed: int) -> dict:
    """Decode the dataset folder ``root`` into shards in ``out``; returns the summary
    written to ``prepare.json``. Raises :class:`DataError` when the dataset is missing
    or more than ``cfg.max_bad_fraction`` of its videos are unusable."""
    root, out = Path(root), Path(out)
    entries, classes, problems = read_manifest(root)
    check_classes(*_labels(entries), warn=False)  # before decoding: a one-class dataset fails fast
    check_fps(root, entries, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / VIDEOS_CSV).unlink(missing_ok=True)
    log.info("prepare: %d videos of %d classes in %s -> %s (short side %d, %s, %d worker(s))",
             len(entries), len(classes), root, out, cfg.short_side, cfg.codec, cfg.workers)
    writer = ShardWriter(out, cfg.shard_mb * 2**20, cfg.codec)
    key = _resume_key(root, entries, cfg)
    resumed = _resume(out, key, writer)
    if resumed is None:
        check_disk(estimate_dataset(root, out, cfg, entries))
    rows, bad = _decode_into(writer, entries, root, cfg, classes, key, resumed)
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
    (out / PARTIAL_JSON).unlink(missing_ok=True)
    summary = _summary(rows, bad, classes, writer, cfg, seed)
    atomic_write_json(out / SUMMARY_JSON, summary)
    log.info("prepare: %d usable videos (%s), %d bad, %d shard(s), %.1f MiB",
             len(rows), ", ".join(f"{k} {v}" for k, v in summary["splits"].items()), len(bad),
             len(writer.written), writer.total_bytes / 2**20)
    return summary


def _decode_into(writer: ShardWriter, entries: list[Entry], root: Path, cfg: PrepareParams, classes: list[str],
                 key: str, resumed: dict | None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Decode every entry into ``writer`` (after those a resumed run kept); usable rows and
    (path, reason) of bad ones. Records each finished shard in ``prepare.partial.json``."""
    label_index = {name: i for i, name in enumerate(classes)}
    start = resumed["consumed"] if resumed else 0
    rows = resumed["rows"] if resumed else []
    bad = [tuple(b) for b in resumed["bad"]] if resumed else []
    progress = Progress("prepare: decoded ", len(entries), PROGRESS_SECONDS, unit="videos", done=start, at_end=True)
    kill_after = int(os.environ.get(KILL_AFTER_ENV, 0))
    truncated = 0
    todo = entries[start:]
    for done, (entry, stored) in enumerate(zip(todo, _decode_all([str(root / e.path) for e in todo], cfg)), start + 1):
        progress.update(1)
        if stored.data is None:
            bad.append((entry.path, stored.reason))
            continue
        n, h, w = stored.shape
        truncated += cfg.max_frames is None and cfg.fps is None and n < stored.header_frames
        if writer.full_after(stored.data):
            writer.flush()
            _record(writer, key, done - 1, rows, bad)
        shard, offset = writer.add(stored.data)
        rows.append({"path": entry.path, "label": entry.label, "label_index": label_index[entry.label],
                     "split": entry.split, "num_frames": n, "shard": shard, "offset": offset, "height": h, "width": w})
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    if truncated:
        log.warning("prepare: %d video(s) decoded fewer frames than their headers claim (kept what decoded)", truncated)
    return rows, bad


def _resume_key(root: Path, entries: list[Entry], cfg: PrepareParams) -> str:
    """Digest of what the shards depend on: the settings that shape them and every video's
    path, label, split, size and modification time (of a frame folder: the folder's own, which
    changes when a frame is added, removed or renamed)."""
    settings = {k: getattr(cfg, k) for k in ("short_side", "max_frames", "fps", "codec", "quality", "shard_mb")}
    if cfg.codec == "jpeg":  # shards of the first layout (no shared header) are not resumed into
        settings["jpeg_layout"] = SHARED_HEADER
    videos = []
    for e in entries:
        try:
            stat = (root / e.path).stat()
            videos.append((e.path, e.label, e.split, stat.st_size, stat.st_mtime_ns))
        except OSError:
            videos.append((e.path, e.label, e.split, None, None))
    return hashlib.sha256(json.dumps([settings, str(root.resolve()), videos]).encode()).hexdigest()


def _record(writer: ShardWriter, key: str, consumed: int, rows: list[dict], bad: list) -> None:
    """``prepare.partial.json``: the shards written so far and the rows and bad videos of the
    first ``consumed`` manifest entries (all inside those shards)."""
    atomic_write_json(writer.folder / PARTIAL_JSON, {
        "key": key, "consumed": consumed, "shards": {n: writer.sha256[n] for n in writer.written},
        "total_bytes": writer.total_bytes, "rows": rows, "bad": bad})


def _resume(out: Path, key: str, writer: ShardWriter) -> dict | None:
    """The state of an interrupted run with the same inputs whose shards are intact, set into
    ``writer``; None (start afresh) otherwise."""
    for tmp in out.glob(".*.tmp"):  # a shard half-written when the run was killed
        if SHARD_RE.fullmatch(tmp.name[1:].rsplit(".", 2)[0]):
            tmp.unlink()
    try:
        state = json.loads((out / PARTIAL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        log.info("prepare: %s is from other inputs or settings; starting afresh", out / PARTIAL_JSON)
        return None
    for name, digest in state["shards"].items():
        path = out / name
        if not path.is_file() or full_digest(path) != digest:
            log.warning("prepare: %s differs from what the interrupted run wrote; starting afresh", path)
            return None
    writer.written = list(state["shards"])
    writer.sha256 = dict(state["shards"])
    writer.total_bytes = state["total_bytes"]
    log.info("prepare: resuming after %d videos (%d shard(s) kept and verified)", state["consumed"],
             len(writer.written))
    return state


@dataclass(frozen=True)
class Estimate:
    """The shards' size estimated from a sample of videos, and the disk space for them."""

    bytes: int
    videos: int
    sampled: int
    usable: int
    free: int
    out: Path

    def line(self) -> str:
        return (f"{self.out}: the shards need about {_gib(self.bytes)} for {self.videos} videos (estimated from "
                f"{self.usable} of {self.sampled} sampled videos); {_gib(self.free)} free there")


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.1f} MiB"


def estimate_dataset(root: str | Path, out: str | Path, cfg: PrepareParams,
                     entries: list[Entry] | None = None) -> Estimate:
    """Decode ``ESTIMATE_SAMPLE`` evenly spaced videos as ``prepare`` would and scale their
    stored bytes to the whole manifest; ``free``: the free space where ``out`` goes plus
    the shards already there (each is replaced as its successor is written)."""
    root, out = Path(root), Path(out)
    if entries is None:
        entries = read_manifest(root)[0]
        check_fps(root, entries, cfg)
    picks = sorted({(2 * k + 1) * len(entries) // (2 * ESTIMATE_SAMPLE) for k in range(ESTIMATE_SAMPLE)})
    picks = [i for i in picks if i < len(entries)]
    sizes = [s.data.nbytes for s in _decode_all([str(root / entries[i].path) for i in picks], cfg) if s.data is not None]
    total = round(np.mean(sizes) * len(entries) * 1.02) if sizes else 0  # + npy headers, JPEG size spread
    where = out
    while not where.exists():
        where = where.parent
    existing = sum(p.stat().st_size for p in out.glob("*.npy") if SHARD_RE.fullmatch(p.name)) if out.is_dir() else 0
    return Estimate(total, len(entries), len(picks), len(sizes), shutil.disk_usage(where).free + existing, out)


def check_fps(root: Path, entries: list[Entry], cfg: PrepareParams) -> None:
    """Refuse, in one line, ``prepare.fps`` for a dataset with frame folders (they carry no rate)."""
    if cfg.fps is None:
        return
    folder = next((e for e in entries if (root / e.path).is_dir()), None)
    if folder is not None:
        raise DataError(f"{root / folder.path}: {FOLDER_FPS}")


def check_disk(estimate: Estimate) -> None:
    """Refuse, in one line, a dataset whose shards the disk cannot hold."""
    log.info("prepare: %s", estimate.line())
    if estimate.bytes > estimate.free:
        raise DataError(f"{estimate.line()}: not enough space; free some, or set prepare.codec: jpeg, a smaller "
                        "prepare.short_side, prepare.fps or prepare.max_frames")


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
        **({"fps": cfg.fps} if cfg.fps is not None else {}),
        **({"codec": cfg.codec, "quality": cfg.quality} if cfg.codec != "raw" else {}),
        "val_size": cfg.val_size,
        "seed": seed,
    }


def prepare_from_params(params: Params) -> dict:
    """``prepare_dataset`` with the paths and settings of ``params.yaml``."""
    return prepare_dataset(params.data.root, params.prepare.out, params.prepare, seed=params.seed)
