"""Which frames make a clip: consecutive (``cs``) and uniform (``us``) sampling (paper §3.1).

Pure numpy; randomness only through the generator passed in. All functions return
int64 frame indices in ``[0, num_frames)``.

- consecutive: ``l`` contiguous frames from a random start (training), the centre
  window (validation), or ``K`` windows with evenly spaced starts (testing). Videos
  shorter than ``l`` loop from their first frame: ``0, 1, …, n-1, 0, 1, …``.
- uniform: the video cut into ``l`` equal segments ``[i·n/l, (i+1)·n/l)``, one frame
  from each: a random one (training), the middle one (validation), or for test clip
  ``k`` of ``K`` the one at fraction ``(k + ½)/K`` of the segment. Videos shorter than
  ``l`` repeat frames.

Clip ``k`` of ``K`` sits at fraction ``(k + ½)/K`` of the free range, so ``K = 1`` is the
validation clip. (The authors' ``VideoTestDataset`` uses ``k/K``; centring keeps the
test clips symmetric about the validation clip.)
"""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("cs", "us")


def consecutive(num_frames: int, clip_length: int, rng: np.random.Generator) -> np.ndarray:
    """(l,) contiguous frames from a random start; short videos loop from frame 0."""
    _check(num_frames, clip_length)
    start = int(rng.integers(0, num_frames - clip_length + 1)) if num_frames >= clip_length else 0
    return _window(num_frames, clip_length, start)


def uniform(num_frames: int, clip_length: int, rng: np.random.Generator) -> np.ndarray:
    """(l,) one random frame from each of ``l`` equal segments."""
    _check(num_frames, clip_length)
    i = np.arange(clip_length)
    low = i * num_frames // clip_length
    high = np.maximum((i + 1) * num_frames // clip_length, low + 1)  # short videos: a segment of one frame
    return rng.integers(low, high).astype(np.int64)


def spaced_clips(num_frames: int, clip_length: int, sampling: str, num_clips: int) -> np.ndarray:
    """(K, l) the frames of ``K`` evenly spaced clips; ``K = 1`` is the validation clip."""
    _check(num_frames, clip_length)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    k = np.arange(num_clips)
    if sampling == "cs":
        starts = (max(num_frames - clip_length, 0) * (2 * k + 1)) // (2 * num_clips)
        return np.stack([_window(num_frames, clip_length, int(s)) for s in starts])
    if sampling == "us":
        i = np.arange(clip_length)
        # frame floor((i + (2k+1)/(2K)) * n / l), in integers
        return ((2 * num_clips * i[None, :] + 2 * k[:, None] + 1) * num_frames) // (2 * num_clips * clip_length)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def centre_clip(num_frames: int, clip_length: int, sampling: str) -> np.ndarray:
    """(l,) the single centre clip used for validation while planning (SPEC §5)."""
    return spaced_clips(num_frames, clip_length, sampling, 1)[0]


def train_clip(num_frames: int, clip_length: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """(l,) a random training clip with ``sampling`` (``cs`` or ``us``)."""
    if sampling == "cs":
        return consecutive(num_frames, clip_length, rng)
    if sampling == "us":
        return uniform(num_frames, clip_length, rng)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def _window(num_frames: int, clip_length: int, start: int) -> np.ndarray:
    return (start + np.arange(clip_length, dtype=np.int64)) % num_frames


def _check(num_frames: int, clip_length: int) -> None:
    if num_frames < 1 or clip_length < 1:
        raise ValueError(f"need num_frames >= 1 and clip_length >= 1, got {num_frames}, {clip_length}")
