"""Frame shards: decoded frames in memory-mapped ``.npy`` files (nanoGPT's habit).

Two codecs (``prepare.codec``, docs/design.md "Frame shards"):
- ``raw``: shards ``frames-NNNNN.npy``, laid out as below;
- ``jpeg``: shards ``jpeg-NNNNN.npy``; one video is, from ``offset`` on, the uint64
  ``SHARED_HEADER``, then ``T + 2`` little-endian uint64 offsets (relative to the end of
  that table) of its frames' common JPEG header (markers up to the end of the start of scan,
  the same for every frame of one size and quality; empty if they differ) and of each
  frame's rest, then those bytes. On 50x40 frames the 623-byte header is half a JPEG frame,
  at 128x171 one sixth. A clip reads the table and then only its frames' byte ranges, puts
  the header before each and decodes them with libjpeg-turbo (``torchvision.io.decode_jpeg``)
  in the loader worker. Shards of the first layout (``T + 1`` offsets of whole JPEG images,
  no marker: a table starts with 0) are read as before. The shard's name says its codec, so
  ``videos.csv`` keeps its columns.

A shard is a flat uint8 array in a ``.npy`` file, ``frames-NNNNN.npy``; one video is
the ``num_frames * height * width * 3`` bytes from ``offset`` on, frames (T, H, W, 3)
RGB, row-major. Videos keep their own size (short side = ``prepare.short_side``,
aspect kept), so a video's ``height`` and ``width`` are stored next to its shard and
offset in ``videos.csv``. Reading a clip touches only its frames' pages.

``checksums.json`` (written by ``prepare`` before ``videos.csv``) holds each shard's
size, SHA-256 and a *sample* digest over 64 evenly spaced 4 KiB windows. Before a
stage trains, :func:`shards_fingerprint` checks every shard's size and sample digest
(a few hundred KiB read per shard, not the frames); ``opplan data verify`` checks the
full SHA-256 on demand. The fingerprint (a digest of ``checksums.json``) is part of
the planning configuration, so re-prepared frames never reuse runs trained on others.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from opplan.errors import DataError
from opplan.fileio import atomic_open, atomic_write_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# torchvision 0.29 deprecates its image codecs in favour of torchcodec (not a dependency here);
# they are libjpeg-turbo and nvJPEG, the fastest at hand (docs/design.md "Frame shards").
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

SHARD_NAME = "frames-{:05d}.npy"
SHARD_NAMES = {"raw": SHARD_NAME, "jpeg": "jpeg-{:05d}.npy"}
SHARD_RE = re.compile(r"(frames|jpeg)-\d{5}\.npy")
CODECS = tuple(SHARD_NAMES)
CHECKSUMS = "checksums.json"
SAMPLE_WINDOWS = 64
SAMPLE_BYTES = 4096
REPREPARE = "rerun `dvc repro prepare --force` (or `opplan data prepare`) to decode the videos again"


class ShardWriter:
    """Appends videos to shards of about ``shard_bytes`` each, every file written atomically.

    A video is never split across shards; one larger than ``shard_bytes`` gets a
    shard of its own.
    """

    def __init__(self, folder: str | Path, shard_bytes: int, codec: str = "raw") -> None:
        if codec not in SHARD_NAMES:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        self.folder = Path(folder)
        self.shard_bytes = shard_bytes
        self.name_format = SHARD_NAMES[codec]
        self.written: list[str] = []
        self.sha256: dict[str, str] = {}
        self.total_bytes = 0
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0

    def full_after(self, video: np.ndarray) -> bool:
        """Whether adding ``video`` (its stored bytes) starts a new shard first."""
        return bool(self._pending) and self._pending_bytes + video.nbytes > self.shard_bytes

    def add(self, video: np.ndarray) -> tuple[str, int]:
        """Queue one video's stored bytes: uint8 (T, H, W, 3) frames (``raw``) or the flat
        uint8 array of :func:`encode_jpeg_video`; returns (shard file name, byte offset in it)."""
        if video.dtype != np.uint8 or video.ndim not in (1, 4) or (video.ndim == 4 and video.shape[-1] != 3):
            raise ValueError(f"expected uint8 (T, H, W, 3) frames or encoded bytes, got {video.dtype} {video.shape}")
        if self.full_after(video):
            self.flush()
        if video.nbytes > self.shard_bytes:
            log.info("a video of %.0f MiB is larger than prepare.shard_mb (%.0f MiB): it gets a shard of its own "
                     "size (videos are never split; prepare.max_frames bounds them)", video.nbytes / 2**20,
                     self.shard_bytes / 2**20)
        offset = self._pending_bytes
        self._pending.append(np.ascontiguousarray(video))
        self._pending_bytes += video.nbytes
        return self.name_format.format(len(self.written)), offset

    def flush(self) -> None:
        """Write the queued videos as the next shard."""
        if not self._pending:
            return
        name = self.name_format.format(len(self.written))
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (self._pending_bytes,)})
        digest = hashlib.sha256(header.getvalue())
        with atomic_open(self.folder / name, "wb") as handle:
            handle.write(header.getvalue())
            for frames in self._pending:
                data = memoryview(frames).cast("B")
                digest.update(data)
                handle.write(data)
        self.sha256[name] = digest.hexdigest()
        log.debug("shards: wrote %s (%.1f MiB)", name, self._pending_bytes / 2**20)
        self.written.append(name)
        self.total_bytes += self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    def write_checksums(self) -> None:
        """``checksums.json`` for the shards written (before ``videos.csv``, which marks completion)."""
        write_checksums(self.folder, {name: self.sha256[name] for name in self.written})

    def remove_stale(self) -> None:
        """Delete shard files of an earlier, larger run that this run did not write."""
        keep = set(self.written)
        for path in self.folder.glob("*.npy"):
            if SHARD_RE.fullmatch(path.name) and path.name not in keep:
                path.unlink()


# --- JPEG frames ---------------------------------------------------------------------------


SHARED_HEADER = 0x3152444848474550
"""First uint64 of a video in a ``jpeg`` shard whose frames share one stored JPEG header
(b"PEGHHDR1"; a table of the first layout starts with offset 0 instead)."""


def encode_jpeg_video(frames: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames -> the flat uint8 bytes a ``jpeg`` shard stores for them
    (marker, offset table, the frames' common header, each frame's rest; libjpeg-turbo, 4:2:0,
    deterministic)."""
    import torch
    from torchvision.io import encode_jpeg

    images = [encode_jpeg(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).contiguous(), quality=quality)
              .numpy() for f in frames]
    cut = _header_length(images[0]) if images else 0
    header = images[0][:cut] if cut and all(np.array_equal(i[:cut], images[0][:cut]) for i in images) else images[0][:0]
    parts = [header, *(i[len(header):] for i in images)]
    ends = np.cumsum([0] + [len(part) for part in parts], dtype="<u8")
    return np.concatenate([np.array([SHARED_HEADER], dtype="<u8").view(np.uint8), ends.view(np.uint8), *parts])


def _header_length(image: np.ndarray) -> int:
    """Bytes of a JPEG image up to the end of its start-of-scan segment (0 if none is found):
    the markers (tables, frame size) that frames of one size and quality share."""
    data = image.tobytes()
    at = data.find(b"\xff\xda")
    return 0 if at < 0 or at + 4 > len(data) else at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")


def decode_jpeg_frames(blobs: list[np.ndarray], device: str = "cpu") -> np.ndarray:
    """JPEG images (uint8 arrays) -> uint8 (N, H, W, 3); ``device="cuda"`` decodes the batch on the GPU
    (nvJPEG) and returns the frames to the host."""
    return decode_jpeg_chw(blobs, device).permute(0, 2, 3, 1).cpu().numpy()


def decode_jpeg_chw(blobs: list[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """JPEG images (uint8 arrays) -> contiguous uint8 (N, 3, H, W) on ``device``, the layout the
    decoder gives: no transposing copy to (N, H, W, 3), which costs as much as the decoding."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.from_numpy(b if b.flags.owndata and b.flags.writeable else np.array(b)) for b in blobs]  # maps: copied
    return torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


# --- checksums ---------------------------------------------------------------------------


def sample_digest(path: Path, size: int) -> str:
    """SHA-256 of ``SAMPLE_WINDOWS`` evenly spaced ``SAMPLE_BYTES`` windows (the whole file when small)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= SAMPLE_WINDOWS * SAMPLE_BYTES:
            digest.update(handle.read())
            return digest.hexdigest()
        for k in range(SAMPLE_WINDOWS):
            handle.seek(k * (size - SAMPLE_BYTES) // (SAMPLE_WINDOWS - 1))
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def full_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path, sha256: dict[str, str]) -> None:
    """``checksums.json``: name -> bytes, sha256 and sample digest of each shard in ``folder``."""
    folder = Path(folder)
    table = {}
    for name, digest in sorted(sha256.items()):
        size = (folder / name).stat().st_size
        table[name] = {"bytes": size, "sha256": digest, "sample": sample_digest(folder / name, size)}
    atomic_write_json(folder / CHECKSUMS, table)


def read_checksums(folder: Path) -> dict[str, dict]:
    path = folder / CHECKSUMS
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: these shards predate shard checksums or were not made by "
                        f"`prepare`; {REPREPARE}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable shard checksums ({str(exc)[:200]}); {REPREPARE}") from None
    if not isinstance(table, dict) or not all(
            isinstance(v, dict) and {"bytes", "sha256", "sample"} <= v.keys() for v in table.values()):
        raise DataError(f"{path}: not a table of shard checksums; {REPREPARE}")
    return table


def verify_shards(folder: str | Path, *, full: bool = False, names: Iterable[str] | None = None) -> str:
    """Check every shard against ``checksums.json`` (size and sample digest; the whole
    SHA-256 with ``full``); returns the shards' fingerprint. Raises :class:`DataError`
    naming the first shard that differs."""
    folder = Path(folder)
    table = read_checksums(folder)
    for name in sorted(table if names is None else names):
        path, want = folder / name, table.get(name)
        if want is None:
            raise DataError(f"{path}: not listed in {folder / CHECKSUMS}; {REPREPARE}")
        try:
            size = path.stat().st_size
            ok = size == want["bytes"] and sample_digest(path, size) == want["sample"] and (
                not full or full_digest(path) == want["sha256"])
        except OSError as exc:
            raise DataError(f"{path}: cannot read frame shard ({exc.strerror or exc}); {REPREPARE}") from None
        if not ok:
            raise DataError(f"{path}: frame shard differs from what `prepare` wrote "
                            f"({'size' if size != want['bytes'] else 'content'} changed); {REPREPARE}")
    return shards_digest(table)


def shards_digest(table: dict[str, dict]) -> str:
    """One digest of every shard's full SHA-256 (what the planning configuration records)."""
    return hashlib.sha256(json.dumps({k: v["sha256"] for k, v in table.items()}, sort_keys=True).encode()).hexdigest()


def shards_fingerprint(folder: str | Path) -> str:
    """The cheap check before training, and the digest a planning configuration includes."""
    return verify_shards(folder)


class ShardReader:
    """Random access to frames; memory maps are opened on first use in each process
    (so a reader pickled into a DataLoader worker opens its own)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._maps: dict[str, np.ndarray] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])

    def shard(self, name: str) -> np.ndarray:
        """The flat uint8 memory map of one shard file."""
        if self._pid != os.getpid():  # forked: do not share the parent's maps
            self._maps, self._pid = {}, os.getpid()
        array = self._maps.get(name)
        if array is None:
            path = self.folder / name
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot open frame shard ({exc}); rerun `dvc repro prepare`") from None
            self._maps[name] = array
        return array

    def jpeg_images(self, name: str, offset: int, num_frames: int, indices: np.ndarray) -> list[np.ndarray]:
        """The JPEG images of the chosen frames of one video in a ``jpeg`` shard (each the shared
        header and the frame's rest, copied; views of the map in a shard of the first layout)."""
        flat = self.shard(name)
        shared = offset + 8 <= flat.size and int(flat[offset : offset + 8].view("<u8")[0]) == SHARED_HEADER
        start, count = (offset + 8, num_frames + 2) if shared else (offset, num_frames + 1)
        table = start + 8 * count
        ends = np.frombuffer(flat[start:table].tobytes(), dtype="<u8").astype(np.int64) if table <= flat.size else []
        steps = np.diff(ends)
        if (len(ends) != count or ends[0] != 0 or table + int(ends[-1]) > flat.size or np.any(steps[shared:] <= 0)
                or steps[0] < 0):
            raise DataError(f"{self.folder / name}: shard is shorter than videos.csv says or its frame table "
                            "is damaged; rerun `dvc repro prepare`")
        if not shared:
            return [flat[table + ends[i] : table + ends[i + 1]] for i in np.asarray(indices)]
        header = flat[table : table + ends[1]]
        return [np.concatenate([header, flat[table + ends[i + 1] : table + ends[i + 2]]]) for i in np.asarray(indices)]

    def video(self, name: str, offset: int, num_frames: int, height: int, width: int) -> np.ndarray:
        """All frames of one video as a read-only (T, H, W, 3) uint8 view of the map (decoded
        copies for a ``jpeg`` shard)."""
        if is_jpeg(name):
            return self.frames(name, offset, (num_frames, height, width), np.arange(num_frames))
        size = num_frames * height * width * 3
        flat = self.shard(name)[offset : offset + size]
        if flat.size != size:
            raise DataError(f"{self.folder / name}: shard is shorter than videos.csv says; rerun `dvc repro prepare`")
        return flat.reshape(num_frames, height, width, 3)

    def frames(self, name: str, offset: int, shape: tuple[int, int, int], indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) copies of the chosen frames of one video."""
        if is_jpeg(name):
            return self.frames_chw(name, offset, shape, indices).permute(0, 2, 3, 1).numpy()
        return np.asarray(self.video(name, offset, *shape)[indices])

    def frames_chw(self, name: str, offset: int, shape: tuple[int, int, int], indices: np.ndarray) -> torch.Tensor:
        """The chosen frames of one video as a uint8 (len(indices), 3, H, W) tensor, the shape the
        transforms take: raw frames as a channels-last view of their copy (``frames``), JPEG frames
        as decoded, contiguous (2x faster than through (N, H, W, 3): docs/design.md §1b)."""
        import torch

        if not is_jpeg(name):
            return torch.from_numpy(np.ascontiguousarray(self.frames(name, offset, shape, indices))).permute(0, 3, 1, 2)
        indices = np.asarray(indices).reshape(-1)
        unique, inverse = np.unique(indices, return_inverse=True)  # a frame used twice is decoded once
        decoded = decode_jpeg_chw(self.jpeg_images(name, offset, shape[0], unique))
        if tuple(decoded.shape[2:]) != tuple(shape[1:]):
            raise DataError(f"{self.folder / name}: frames of {decoded.shape[3]}x{decoded.shape[2]}, videos.csv "
                            f"says {shape[2]}x{shape[1]}; rerun `dvc repro prepare`")
        return decoded if np.array_equal(unique, indices) else decoded[torch.from_numpy(inverse.reshape(-1))]


def is_jpeg(shard_name: str) -> bool:
    """Whether a shard file holds JPEG frames (its name says so)."""
    return shard_name.startswith("jpeg-")
