"""Clip frame indices: exact hand-computed cases and properties (paper §3.1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opplan.data import sampling


class EdgeRng:
    """A stand-in generator that always draws the lowest (or highest) allowed value."""

    def __init__(self, highest: bool = False) -> None:
        self.highest = highest

    def integers(self, low, high=None):  # noqa: ANN001, ANN201 - numpy's signature
        return np.asarray(high) - 1 if self.highest else np.asarray(low)


def test_consecutive_exact() -> None:
    assert sampling.consecutive(10, 4, EdgeRng()).tolist() == [0, 1, 2, 3]
    assert sampling.consecutive(10, 4, EdgeRng(highest=True)).tolist() == [6, 7, 8, 9]
    assert sampling.consecutive(4, 4, EdgeRng(highest=True)).tolist() == [0, 1, 2, 3]
    # shorter than the clip: the video loops from its first frame
    assert sampling.consecutive(3, 8, EdgeRng(highest=True)).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_uniform_exact() -> None:
    # 10 frames, 4 segments: [0, 2), [2, 5), [5, 7), [7, 10)
    assert sampling.uniform(10, 4, EdgeRng()).tolist() == [0, 2, 5, 7]
    assert sampling.uniform(10, 4, EdgeRng(highest=True)).tolist() == [1, 4, 6, 9]
    # 3 frames, 8 segments: frames repeat
    assert sampling.uniform(3, 8, EdgeRng(highest=True)).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_centre_clip_exact() -> None:
    assert sampling.centre_clip(20, 4, "cs").tolist() == [8, 9, 10, 11]
    assert sampling.centre_clip(21, 4, "cs").tolist() == [8, 9, 10, 11]  # free range 17: start 8
    assert sampling.centre_clip(20, 4, "us").tolist() == [2, 7, 12, 17]  # middles of 5-frame segments
    assert sampling.centre_clip(3, 8, "us").tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sampling.centre_clip(3, 5, "cs").tolist() == [0, 1, 2, 0, 1]


def test_spaced_clips_exact() -> None:
    # cs: free range 16, starts at (k + 1/2)/3 of it: 2, 8, 13
    clips = sampling.spaced_clips(20, 4, "cs", 3)
    assert clips.tolist() == [[2, 3, 4, 5], [8, 9, 10, 11], [13, 14, 15, 16]]
    # us: frame floor((i + (k + 1/2)/2) * 20/4)
    assert sampling.spaced_clips(20, 4, "us", 2).tolist() == [[1, 6, 11, 16], [3, 8, 13, 18]]
    # a video shorter than the clip: every test clip is the looped video
    assert sampling.spaced_clips(3, 4, "cs", 2).tolist() == [[0, 1, 2, 0], [0, 1, 2, 0]]
    assert sampling.spaced_clips(20, 4, "us", 10).shape == (10, 4)


def test_train_clip_uses_the_generator() -> None:
    first = sampling.train_clip(100, 8, "cs", np.random.default_rng(3))
    again = sampling.train_clip(100, 8, "cs", np.random.default_rng(3))
    assert first.tolist() == again.tolist()
    starts = {int(sampling.train_clip(100, 8, "cs", np.random.default_rng(s))[0]) for s in range(20)}
    assert len(starts) > 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sampling"):
        sampling.train_clip(10, 4, "xs", np.random.default_rng(0))
    with pytest.raises(ValueError, match="sampling"):
        sampling.spaced_clips(10, 4, "xs", 2)
    with pytest.raises(ValueError, match="num_frames"):
        sampling.consecutive(0, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clips"):
        sampling.spaced_clips(10, 4, "cs", 0)


@given(n=st.integers(1, 300), length=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_consecutive_properties(n: int, length: int, seed: int) -> None:
    idx = sampling.consecutive(n, length, np.random.default_rng(seed))
    assert idx.shape == (length,) and idx.min() >= 0 and idx.max() < n
    assert np.all((np.diff(idx) == 1) | ((idx[1:] == 0) & (idx[:-1] == n - 1)))


@given(n=st.integers(1, 300), length=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_uniform_properties(n: int, length: int, seed: int) -> None:
    idx = sampling.uniform(n, length, np.random.default_rng(seed))
    assert idx.shape == (length,) and idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx) >= 0)
    segment = np.arange(length)
    assert np.all(idx >= segment * n // length)
    if n >= length:  # every segment holds a frame: one frame from each
        assert np.all(idx < (segment + 1) * n // length)


@given(n=st.integers(1, 300), length=st.integers(1, 64), k=st.integers(1, 12), name=st.sampled_from(["cs", "us"]))
def test_spaced_clips_properties(n: int, length: int, k: int, name: str) -> None:
    clips = sampling.spaced_clips(n, length, name, k)
    assert clips.shape == (k, length) and clips.min() >= 0 and clips.max() < n
    assert np.all(np.diff(clips[:, 0]) >= 0)  # clips in time order
    assert sampling.spaced_clips(n, length, name, 1)[0].tolist() == sampling.centre_clip(n, length, name).tolist()


# --- uniform sampling with snippets (the authors' 4 consecutive frames per segment) ---------


def test_uniform_snippets_exact() -> None:
    # 40 frames, a 16-frame clip in snippets of 4: 4 segments of 10 frames, starts in [10 i, 10 i + 6]
    assert sampling.uniform(40, 16, EdgeRng(), snippet=4).tolist() == [
        0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33]
    assert sampling.uniform(40, 16, EdgeRng(highest=True), snippet=4).tolist() == [
        6, 7, 8, 9, 16, 17, 18, 19, 26, 27, 28, 29, 36, 37, 38, 39]
    # validation: snippets centred on the middles of the segments (frames 5, 15, 25, 35)
    assert sampling.centre_clip(40, 8, "us", snippet=4).tolist() == [8, 9, 10, 11, 28, 29, 30, 31]
    # too short for a snippet per segment: segments start in order, frames capped at the last
    assert sampling.uniform(3, 8, EdgeRng(), snippet=4).tolist() == [0, 1, 2, 2, 1, 2, 2, 2]
    assert sampling.train_clip(40, 16, "us", EdgeRng(), snippet=4).tolist()[:4] == [0, 1, 2, 3]


def test_snippet_one_is_one_frame_per_segment() -> None:
    for seed in range(5):
        one = sampling.uniform(97, 8, np.random.default_rng(seed), snippet=1)
        assert one.tolist() == sampling.uniform(97, 8, np.random.default_rng(seed)).tolist()
    assert sampling.spaced_clips(97, 8, "us", 3, snippet=1).tolist() == sampling.spaced_clips(97, 8, "us", 3).tolist()


def test_snippet_must_divide_the_clip() -> None:
    with pytest.raises(ValueError, match="divide"):
        sampling.uniform(40, 6, np.random.default_rng(0), snippet=4)


@given(n=st.integers(1, 300), groups=st.integers(1, 16), snippet=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**16), k=st.integers(1, 5))
def test_uniform_snippet_properties(n: int, groups: int, snippet: int, seed: int, k: int) -> None:
    length = groups * snippet
    idx = sampling.uniform(n, length, np.random.default_rng(seed), snippet).reshape(groups, snippet)
    assert idx.min() >= 0 and idx.max() < n
    if n >= length:  # consecutive frames within each snippet, each snippet starts in its own segment
        assert np.all(np.diff(idx, axis=1) == 1)
        starts = np.arange(groups) * n // groups
        assert np.all(idx[:, 0] >= starts) and np.all(idx[:, 0] < (np.arange(groups) + 1) * n // groups)
    clips = sampling.spaced_clips(n, length, "us", k, snippet)
    assert clips.shape == (k, length) and clips.min() >= 0 and clips.max() < n
