"""Which frames make a clip: consecutive (``cs``) and uniform (``us``) sampling (paper §3.1).

Pure numpy; randomness only through the generator passed in. All functions return
int64 frame indices in ``[0, num_frames)``.

- consecutive: ``l`` contiguous frames from a random start (training), the centre
  window (validation), or ``K`` windows with evenly spaced starts (testing). Videos
  shorter than ``l`` loop from their first frame: ``0, 1, …, n-1, 0, 1, …``.
- uniform: the video cut into ``g = l / s`` equal segments ``[i·n/g, (i+1)·n/g)``, a
  snippet of ``s`` consecutive frames from each (``s = 1``: one frame, TSN-style): at a
  random start (training), about the middle of the segment (validation), or for test
  clip ``k`` of ``K`` about fraction ``(k + ½)/K`` of it. Videos too short repeat frames.
  The authors' uniform sampling takes snippets of 4 frames, the stem's temporal stride, so
  the stem sees consecutive frames (docs/fidelity.md).

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


def uniform(num_frames: int, clip_length: int, rng: np.random.Generator, snippet: int = 1) -> np.ndarray:
    """(l,) a snippet of ``snippet`` consecutive frames at a random start in each of
    ``l / snippet`` equal segments."""
    groups = _groups(num_frames, clip_length, snippet)
    i = np.arange(groups)
    low = i * num_frames // groups
    high = np.maximum((i + 1) * num_frames // groups - snippet + 1, low + 1)  # short segments: start at low
    return _snippets(rng.integers(low, high).astype(np.int64), snippet, num_frames)


def spaced_clips(num_frames: int, clip_length: int, sampling: str, num_clips: int, snippet: int = 1) -> np.ndarray:
    """(K, l) the frames of ``K`` evenly spaced clips; ``K = 1`` is the validation clip.
    ``snippet``: frames per segment of a uniform clip."""
    _check(num_frames, clip_length)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    k = np.arange(num_clips)
    if sampling == "cs":
        starts = (max(num_frames - clip_length, 0) * (2 * k + 1)) // (2 * num_clips)
        return np.stack([_window(num_frames, clip_length, int(s)) for s in starts])
    if sampling == "us":
        groups = _groups(num_frames, clip_length, snippet)
        i = np.arange(groups)
        # snippet centred on frame floor((i + (2k+1)/(2K)) * n / g), in integers
        centre = ((2 * num_clips * i[None, :] + 2 * k[:, None] + 1) * num_frames) // (2 * num_clips * groups)
        starts = np.clip(centre - snippet // 2, 0, max(num_frames - snippet, 0))
        return np.stack([_snippets(row, snippet, num_frames) for row in starts])
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def centre_clip(num_frames: int, clip_length: int, sampling: str, snippet: int = 1) -> np.ndarray:
    """(l,) the single centre clip used for validation while planning (docs/design.md §5)."""
    return spaced_clips(num_frames, clip_length, sampling, 1, snippet)[0]


def train_clip(num_frames: int, clip_length: int, sampling: str, rng: np.random.Generator,
               snippet: int = 1) -> np.ndarray:
    """(l,) a random training clip with ``sampling`` (``cs`` or ``us`` with ``snippet``)."""
    if sampling == "cs":
        return consecutive(num_frames, clip_length, rng)
    if sampling == "us":
        return uniform(num_frames, clip_length, rng, snippet)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def _window(num_frames: int, clip_length: int, start: int) -> np.ndarray:
    return (start + np.arange(clip_length, dtype=np.int64)) % num_frames


def _groups(num_frames: int, clip_length: int, snippet: int) -> int:
    """Segments of a uniform clip: ``clip_length / snippet`` (which must be whole)."""
    _check(num_frames, clip_length)
    if snippet < 1 or clip_length % snippet:
        raise ValueError(f"snippet must be >= 1 and divide clip_length {clip_length}, got {snippet}")
    return clip_length // snippet


def _snippets(starts: np.ndarray, snippet: int, num_frames: int) -> np.ndarray:
    """(g * s,) frames ``start, ..., start + s - 1`` per start, capped at the last frame."""
    frames = starts[:, None] + np.arange(snippet, dtype=np.int64)
    return np.minimum(frames, num_frames - 1).reshape(-1).astype(np.int64)


def _check(num_frames: int, clip_length: int) -> None:
    if num_frames < 1 or clip_length < 1:
        raise ValueError(f"need num_frames >= 1 and clip_length >= 1, got {num_frames}, {clip_length}")
