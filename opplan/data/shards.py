"""Frame shards: decoded uint8 frames in memory-mapped ``.npy`` files (nanoGPT's habit).

A shard is a flat uint8 array in a ``.npy`` file, ``frames-NNNNN.npy``; one video is
the ``num_frames * height * width * 3`` bytes from ``offset`` on, frames (T, H, W, 3)
RGB, row-major. Videos keep their own size (short side = ``prepare.short_side``,
aspect kept), so a video's ``height`` and ``width`` are stored next to its shard and
offset in ``videos.csv``. Reading a clip touches only its frames' pages.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from opplan.errors import DataError
from opplan.fileio import atomic_open

log = logging.getLogger(__name__)

SHARD_NAME = "frames-{:05d}.npy"
SHARD_RE = re.compile(r"frames-\d{5}\.npy")


class ShardWriter:
    """Appends videos to shards of about ``shard_bytes`` each, every file written atomically.

    A video is never split across shards; one larger than ``shard_bytes`` gets a
    shard of its own.
    """

    def __init__(self, folder: str | Path, shard_bytes: int) -> None:
        self.folder = Path(folder)
        self.shard_bytes = shard_bytes
        self.written: list[str] = []
        self.total_bytes = 0
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0

    def add(self, frames: np.ndarray) -> tuple[str, int]:
        """Queue uint8 (T, H, W, 3) frames; returns (shard file name, byte offset in it)."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
        if self._pending and self._pending_bytes + frames.nbytes > self.shard_bytes:
            self.flush()
        offset = self._pending_bytes
        self._pending.append(np.ascontiguousarray(frames))
        self._pending_bytes += frames.nbytes
        return SHARD_NAME.format(len(self.written)), offset

    def flush(self) -> None:
        """Write the queued videos as the next shard."""
        if not self._pending:
            return
        name = SHARD_NAME.format(len(self.written))
        with atomic_open(self.folder / name, "wb") as handle:
            header = {"descr": "|u1", "fortran_order": False, "shape": (self._pending_bytes,)}
            np.lib.format.write_array_header_1_0(handle, header)
            for frames in self._pending:
                handle.write(memoryview(frames).cast("B"))
        log.debug("shards: wrote %s (%.1f MiB)", name, self._pending_bytes / 2**20)
        self.written.append(name)
        self.total_bytes += self._pending_bytes
        self._pending, self._pending_bytes = [], 0

    def remove_stale(self) -> None:
        """Delete shard files of an earlier, larger run that this run did not write."""
        keep = set(self.written)
        for path in self.folder.glob("frames-*.npy"):
            if SHARD_RE.fullmatch(path.name) and path.name not in keep:
                path.unlink()


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

    def video(self, name: str, offset: int, num_frames: int, height: int, width: int) -> np.ndarray:
        """All frames of one video as a read-only (T, H, W, 3) uint8 view of the map."""
        size = num_frames * height * width * 3
        flat = self.shard(name)[offset : offset + size]
        if flat.size != size:
            raise DataError(f"{self.folder / name}: shard is shorter than videos.csv says; rerun `dvc repro prepare`")
        return flat.reshape(num_frames, height, width, 3)

    def frames(self, name: str, offset: int, shape: tuple[int, int, int], indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) copies of the chosen frames of one video."""
        return np.asarray(self.video(name, offset, *shape)[indices])
