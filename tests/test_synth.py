"""The demo dataset: seeded, real H.264, classes that behave as designed."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from click.testing import CliRunner

from opplan.cli import cli
from opplan.data import synth
from opplan.data.manifest import read_manifest
from opplan.data.synth import CLASSES, SynthConfig, _Scene, synthesize

SCENE = _Scene(80, 64)


def test_ten_classes_in_a_fixed_order() -> None:
    assert len(CLASSES) == 10
    assert list(CLASSES)[:3] == ["CrossWander", "RingWander", "SquareWander"]


def test_dataset_folder_is_complete(tiny_dataset: Path) -> None:
    entries, classes, problems = read_manifest(tiny_dataset)
    assert classes == list(CLASSES)[:4] and problems == []
    assert [e.split for e in entries].count("train") == 12 and [e.split for e in entries].count("test") == 4
    lists = tiny_dataset / synth.ANNOTATIONS_DIR
    assert (lists / "classInd.txt").read_text().splitlines()[:2] == ["1 CrossWander", "2 RingWander"]
    train_lines = (lists / "trainlist01.txt").read_text().splitlines()
    assert train_lines[0] == "CrossWander/v_CrossWander_001.mp4 1" and len(train_lines) == 12
    assert (lists / "testlist01.txt").read_text().splitlines()[0] == "CrossWander/v_CrossWander_004.mp4"


def test_videos_are_h264_mp4_of_the_configured_size(tiny_dataset: Path) -> None:
    entries, _, _ = read_manifest(tiny_dataset)
    for entry in entries[:4]:
        path = tiny_dataset / entry.path
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert container.format.name.startswith("mov,mp4")
            assert stream.codec_context.name == "h264"
            assert (stream.width, stream.height) == (80, 64)
        assert 24 <= len(decord.VideoReader(str(path))) <= 48


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    config = SynthConfig(seed=5, train_per_class=1, test_per_class=0, num_classes=2, min_frames=8, max_frames=12)
    synthesize(tmp_path / "a", config)
    synthesize(tmp_path / "b", config)
    synthesize(tmp_path / "c", SynthConfig(**{**config.__dict__, "seed": 6}))
    video = "videos/RingWander/v_RingWander_001.mp4"
    assert (tmp_path / "a" / video).read_bytes() == (tmp_path / "b" / video).read_bytes()
    assert (tmp_path / "a" / video).read_bytes() != (tmp_path / "c" / video).read_bytes()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthesising_twice_gives_identical_folders(tmp_path: Path) -> None:
    """Every file, videos and lists, byte for byte: a fresh clone's `make demo` gets the
    committed data."""
    config = SynthConfig(seed=3, train_per_class=3, test_per_class=1, num_classes=3)
    synthesize(tmp_path / "a", config)
    synthesize(tmp_path / "b", config)
    first = _digests(tmp_path / "a")
    assert len(first) == 12 + 3 + 2 and first == _digests(tmp_path / "b")


def test_whole_dataset_fits_the_size_budget(tmp_path: Path) -> None:
    """One video per class, extrapolated to the default 30 per class: well under 20 MB."""
    synthesize(tmp_path, SynthConfig(train_per_class=1, test_per_class=0))
    sizes = [p.stat().st_size for p in tmp_path.rglob("*.mp4")]
    assert len(sizes) == 10
    assert np.mean(sizes) * 300 < 20 * 2**20


def test_render_is_deterministic_and_noisy() -> None:
    a = synth.render("SquareShake", np.random.default_rng([1, 2]), 16, 80, 64)
    b = synth.render("SquareShake", np.random.default_rng([1, 2]), 16, 80, 64)
    assert a.shape == (16, 64, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.diff(a.astype(int), axis=0)).mean() > 1  # frame noise and moving things


def _track(name: str, seed: int, n: int = 60) -> synth.Track:
    return CLASSES[name](np.random.default_rng(seed), n, SCENE)


@pytest.mark.parametrize("seed", range(5))
def test_wall_classes_differ_only_at_the_end(seed: int) -> None:
    x0, x1, _, _ = SCENE.box()
    for name, reaches in (("SquareHitsWall", True), ("SquareStopsShort", False)):
        x, _, _, _, side = _track(name, seed)
        contact = x1 if side > 0 else x0
        gap = abs(x[-1] - contact)
        assert (gap < 1e-6) if reaches else (gap >= 5)
        assert np.all(np.diff(x) * side >= -1e-9)  # always towards the wall
        assert abs(x[0] - contact) > gap + 5  # the approach is visible


def _steps(y: np.ndarray) -> np.ndarray:
    """Frame-to-frame motion, without the jumps where the conveyor wraps around."""
    step = np.diff(y)
    return step[np.abs(step) < 5]


@pytest.mark.parametrize("seed", range(5))
def test_motion_classes_move_as_named(seed: int) -> None:
    _, y, _, _, _ = _track("SquareRise", seed)
    assert np.all((-1.0 <= _steps(y)) & (_steps(y) <= -0.6)) and len(_steps(y)) >= 55  # image y grows downwards
    _, y, _, _, _ = _track("SquareFall", seed)
    assert np.all((0.6 <= _steps(y)) & (_steps(y) <= 1.0)) and len(_steps(y)) >= 55
    _, y, _, _, _ = _track("SquareUpDown", seed)
    up, down = _steps(y[: int(0.4 * 60)]), _steps(y[int(0.6 * 60) :])
    assert np.all(up < 0) and np.all(down > 0) and len(up) > 15 and len(down) > 15
    _, y, _, _, _ = _track("SquareShake", seed)
    assert np.abs(np.diff(y)).max() >= 5  # the 6-pixel jitter


@pytest.mark.parametrize("seed", range(5))
def test_colour_changes_only_in_the_last_third(seed: int) -> None:
    _, _, shape, colour, _ = _track("SquareColourChange", seed)
    changes = np.flatnonzero(np.diff(colour))
    assert shape == "square" and len(changes) == 1 and changes[0] + 1 >= 0.66 * 60
    _, _, _, colour, _ = _track("SquareWander", seed)
    assert len(set(colour.tolist())) == 1


def test_codec_fallback_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def missing(name: str, mode: str) -> None:
        raise av.codec.codec.UnknownCodecError(name)

    monkeypatch.setattr(synth.av.codec, "Codec", missing)
    with caplog.at_level(logging.WARNING):
        assert synth.video_codec() == "mpeg4"
    assert "libx264 is not available" in caplog.text


def test_cli_synth(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path), "--seed", "1", "--classes", "2",
                                      "--videos-per-class", "1", "1", "--frames", "8", "10"])
    assert result.exit_code == 0, result.output
    entries, classes, _ = read_manifest(tmp_path)
    assert len(entries) == 4 and classes == ["CrossWander", "RingWander"]
    bad = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--size", "81", "64"])
    assert bad.exit_code == 2 and "even" in bad.output
