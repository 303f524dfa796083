"""Frame folders: a video shipped as its frames, one image file per frame (docs/operations.md
"Frame folders").

MMAction2's "rawframes" and Something-Something V1 ship videos this way: a folder per video
holding ``img_00001.jpg``, ``img_00002.jpg``, ... (or ``00001.jpg``, ...). The frames are the
folder's image files (JPEG, PNG, BMP, WebP) in *natural* order (``2.jpg`` before ``10.jpg``).
MMAction2 keeps optical flow next to the RGB frames (``flow_x_00001.jpg``, ``flow_y_...``): a
folder with several series of images (names that differ only in their number) uses its
``img`` series and is refused when it has none, rather than interleaving them.

What decodes is what counts, as for video files: a folder without a readable image, or with
an image that does not decode, is a bad video with the reason in a user's terms.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
RGB_SERIES = "img"
"""The series MMAction2 writes RGB frames as (``img_{:05d}.jpg``); flow goes to ``flow_x``/``flow_y``."""
_DIGITS = re.compile(r"(\d+)")
_LAST_NUMBER = re.compile(r"\d+(?=\D*$)")


class FrameFolderError(ValueError):
    """Why a folder gives no frames, in a user's terms."""


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def _series(name: str) -> str:
    """The name without its last number and suffix: ``flow_x_00001.jpg`` -> ``flow_x_``."""
    return _LAST_NUMBER.sub("", Path(name).stem)


def frame_files(folder: str | Path) -> list[Path]:
    """The frame images of ``folder`` in frame order; :class:`FrameFolderError` when it has none
    or holds several series of images without an ``img`` one (which would be mixed up)."""
    folder = Path(folder)
    try:
        names = [e.name for e in os.scandir(folder)
                 if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()]
    except OSError as exc:
        raise FrameFolderError(f"the frame folder cannot be read: {exc.strerror or exc}") from None
    if not names:
        raise FrameFolderError(f"a folder without image files ({', '.join(sorted(IMAGE_SUFFIXES))}), so no frames")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_series(name), []).append(name)
    if len(groups) > 1:
        rgb = [key for key in groups if key.rstrip("_-. ").lower() == RGB_SERIES]
        if len(rgb) != 1:
            shown = ", ".join(f"{key or '(no prefix)'}*" for key in sorted(groups)[:4])
            raise FrameFolderError(f"a frame folder with several image series ({shown}) and no single "
                                   f"'{RGB_SERIES}_' one to read as the frames")
        names = groups[rgb[0]]
    return [folder / name for name in sorted(names, key=_natural_key)]


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``short_side`` and the aspect ratio kept."""
    if height <= width:
        return short_side, max(1, round(width * short_side / height))
    return max(1, round(height * short_side / width)), short_side


def read_frames(folder: str | Path, short_side: int) -> list[np.ndarray]:
    """The frames of ``folder`` as uint8 (H, W, 3) arrays, each resized to the first frame's
    size with short side ``short_side`` (:func:`resized_shape`), like
    decoded video frames; :class:`FrameFolderError` names the first image that does not decode."""
    from PIL import Image, UnidentifiedImageError  # here: only decoding processes need it

    files = frame_files(folder)
    frames, size = [], None
    for number, path in enumerate(files, start=1):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                size = size or resized_shape(image.height, image.width, short_side)
                if image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                frames.append(np.asarray(image, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise FrameFolderError(f"frame {path.name} ({number} of {len(files)}) is not a readable image "
                                   f"({type(exc).__name__}); replace it or remove the folder") from None
    return frames
