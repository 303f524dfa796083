"""The ActivityNet 1.3 importer, fed ``activity_net.v1-3.min.json`` and untrimmed videos in
their on-disk layout (``v_<id>.mp4``, ``<id>.mkv``): one frame folder per labelled segment,
and the imported folders through ``prepare``."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from test_annotations import import_cli, manifest, rows

from opplan.config import PrepareParams
from opplan.data.annotations import REPORT, SHORT_SEGMENT, WARNINGS, AnnotationFileError, import_dataset
from opplan.data.dataset import read_videos
from opplan.data.frames import frame_files
from opplan.data.prepare import prepare_dataset

FPS = 10
LENGTHS = {"v_aaa.mp4": 40, "bbb.mkv": 30, "v_eee.mp4": 20}
"""Frames of each fixture video, at :data:`FPS`."""


def encode(path: Path, n: int, seed: int) -> None:
    """``n`` frames of 64 x 48 noise at :data:`FPS`, H.264 in the container the suffix names."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as PyAV decodes it (the reference the import must match)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def segment(start: float, end: float, label: str) -> dict:
    return {"segment": [start, end], "label": label}


DATABASE = {
    "aaa": {"subset": "training", "duration": 4.0, "url": "https://www.youtube.com/watch?v=aaa",
            "resolution": "64x48", "annotations": [
                segment(0.5, 1.5, "Playing guitar"), segment(2.0, 3.05, "Long jump"),
                segment(3.5, 9.0, "Playing guitar")]},  # 3: past the 4.0 s that decode: clamped
    "bbb": {"subset": "validation", "duration": 3.0, "annotations": [
        segment(0, 1, "Long jump"), segment(2.5, 2.7, "Playing guitar"),  # 2: two frames, short
        segment(2.0, 1.0, "Long jump")]},  # 3: ends before its start
    "ccc": {"subset": "training", "duration": 5.0, "annotations": [segment(0, 1, "Long jump")]},  # no video
    "ddd": {"subset": "testing", "duration": 5.0, "annotations": []},  # not read
    "eee": {"subset": "validation", "duration": 9.0, "annotations": [
        segment(5.0, 6.0, "Long jump"), segment(0.0, 1.0, "Playing guitar")]},  # 1: after the 2 s that decode
    "fff": {"subset": "train", "annotations": [segment(0, 1, "Long jump")]},  # unknown subset
    "ggg": ["training"],  # not an object
    "hhh": {"subset": "training", "annotations": [{"segment": [0, 1]}, segment(0, 1, "Long\njump")]},
    "iii": {"subset": "training", "annotations": [segment(0, 1, "Long jump")]},  # not a video
    "jjj": {"subset": "training", "duration": 4.0, "annotations": [  # truncated: decodes 20 < n < 35 frames
        segment(2.0, 3.5, "Long jump"), segment(3.5, 3.9, "Long jump")]},  # 1: clamped, 2: after the end
    "kkk": {"subset": "validation", "annotations": []},  # no segment
}


@pytest.fixture(scope="module")
def activitynet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``ROOT/v_aaa.mp4``, ``ROOT/bbb.mkv``, ``ROOT/sub/v_eee.mp4``, a file that is no video,
    and ``activity_net.v1-3.min.json`` naming them and a few broken entries."""
    folder = tmp_path_factory.mktemp("activitynet")
    root = folder / "videos"
    (root / "sub").mkdir(parents=True)
    for seed, (name, n) in enumerate(LENGTHS.items()):
        encode(root / ("sub" if name == "v_eee.mp4" else "") / name, n, seed)
    (root / "v_iii.mp4").write_bytes(b"not a video at all")
    encode(root / "v_jjj.mkv", 40, 9)
    whole = (root / "v_jjj.mkv").read_bytes()
    (root / "v_jjj.mkv").write_bytes(whole[: int(len(whole) * 0.7)])
    notes = folder / "activity_net.v1-3.min.json"
    notes.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": DATABASE}))
    return root, notes


def test_activitynet(activitynet: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, notes = activitynet
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="opplan.data.annotations"):
        listing = import_dataset("activitynet", root, notes, out)
    assert any(re.fullmatch(r"import: 10/10 segments cut, [0-9.]+ segments/s, ETA 0 s", m) for m in caplog.messages)
    assert listing.classes == ["Long jump", "Playing guitar"]
    assert (out / "classes.txt").read_text() == "Long jump\nPlaying guitar\n"
    assert manifest(out) == [
        ("videos/Playing guitar/aaa_1", "Playing guitar", "train"), ("videos/Long jump/aaa_2", "Long jump", "train"),
        ("videos/Playing guitar/aaa_3", "Playing guitar", "train"), ("videos/Long jump/bbb_1", "Long jump", "test"),
        ("videos/Playing guitar/bbb_2", "Playing guitar", "test"),
        ("videos/Playing guitar/eee_2", "Playing guitar", "test"), ("videos/Long jump/jjj_1", "Long jump", "train")]
    truncated = len(decoded(root / "v_jjj.mkv"))
    assert 20 < truncated < 35
    # Each folder holds the segment's decoded frames: floor(start * fps) to ceil(end * fps) - 1, clamped.
    spans = {"aaa_1": ("v_aaa.mp4", 0.5, 1.5), "aaa_2": ("v_aaa.mp4", 2.0, 3.05), "aaa_3": ("v_aaa.mp4", 3.5, 9.0),
             "bbb_1": ("bbb.mkv", 0, 1), "bbb_2": ("bbb.mkv", 2.5, 2.7), "eee_2": ("sub/v_eee.mp4", 0, 1),
             "jjj_1": ("v_jjj.mkv", 2.0, 3.5)}
    counts = {}
    for path, *_ in manifest(out):
        video, start, end = spans[Path(path).name]
        reference = decoded(root / video)
        first, stop = math.floor(start * FPS), min(math.ceil(end * FPS), len(reference))
        files = frame_files(out / path)
        assert [f.name for f in files] == [f"img_{i:05d}.jpg" for i in range(1, stop - first + 1)]
        for offset in (0, len(files) - 1):  # the right frames (JPEG: close, not equal)
            image = np.asarray(Image.open(files[offset]).convert("RGB"), dtype=np.int16)
            assert np.abs(image - reference[first + offset]).mean() < 12
        counts[Path(path).name] = len(files)
    assert counts == {"aaa_1": 10, "aaa_2": 11, "aaa_3": 5, "bbb_1": 10, "bbb_2": 2, "eee_2": 10,
                      "jjj_1": truncated - 20}
    problems = rows(out / REPORT)
    name = notes.name
    assert [(f, line) for f, line, _ in problems] == [(name, 2), (name, 3), (name, 5), (name, 6), (name, 7),
                                                      (name, 8), (name, 8), (name, 9), (name, 10),
                                                      (name, 11)]
    reasons = [reason for *_, reason in problems]
    assert reasons[0] == "bbb segment 3: segment [2, 1] s ends at or before its start"
    assert reasons[1] == (f"ccc: video v_ccc.<ext> (or ccc.<ext>) not found under {root.resolve()}; "
                          "its 1 segment(s) are not imported")
    assert reasons[2] == ("eee segment 1 [5, 6] s starts after the video's end "
                          "(the video decodes 20 frames at 10 fps, 2.00 s)")
    assert reasons[3] == "fff: subset 'train' is not training, validation or testing"
    assert reasons[4] == "ggg: the entry is not an object: ['training']"
    assert reasons[5].startswith("hhh segment 1: expected {'segment': [start, end], 'label': ...}")
    assert reasons[6] == "hhh segment 2: label 'Long\\njump' has a line break or surrounding blanks"
    assert reasons[7] == ("iii: video v_iii.mp4: not a video file that can be opened (an unknown format, or a "
                          "damaged or truncated header); its 1 segment(s) are not imported")
    assert reasons[9] == "kkk: 'annotations' is an empty list, not a list of {segment, label}"
    assert reasons[8] == (f"jjj segment 2 [3.5, 3.9] s starts after the video's end (the video decodes {truncated} "
                          f"frames at 10 fps, {truncated / FPS:.2f} s)")
    assert rows(out / WARNINGS) == [
        (name, 1, "aaa segment 3 [3.5, 9] s reaches outside the video (the video decodes 40 frames at 10 fps, "
                  "4.00 s); clamped to [3.5, 4] s, 5 frames"),
        (name, 2, f"bbb segment 2 [2.5, 2.7] s gives only 2 frame(s) (fewer than {SHORT_SEGMENT}); kept"),
        (name, 10, f"jjj segment 1 [2, 3.5] s reaches outside the video (the video decodes {truncated} frames at "
                   f"10 fps, {truncated / FPS:.2f} s); clamped to [2, {truncated / FPS:g}] s, {truncated - 20} frames")]
    assert not list(out.rglob("*.tmp"))  # no staging folder left behind


def test_activitynet_again_and_prepared(activitynet: tuple[Path, Path], tmp_path: Path) -> None:
    """A re-import cuts the folders again in place; ``prepare`` stores the frames the folders hold."""
    out = tmp_path / "data"
    import_dataset("activitynet", *activitynet, out)
    (out / "videos/Long jump/aaa_2/img_00099.jpg").write_bytes(b"stale")
    import_dataset("activitynet", *activitynet, out, link=False)
    assert len(list((out / "videos/Long jump/aaa_2").iterdir())) == 11
    shards = tmp_path / "shards"
    prepare_dataset(out, shards, PrepareParams(short_side=24, val_size=1, workers=1), seed=0)
    videos = read_videos(shards).set_index("path")
    assert videos["num_frames"].to_dict() == {
        "videos/Playing guitar/aaa_1": 10, "videos/Long jump/aaa_2": 11, "videos/Playing guitar/aaa_3": 5,
        "videos/Long jump/bbb_1": 10, "videos/Playing guitar/bbb_2": 2, "videos/Playing guitar/eee_2": 10,
        "videos/Long jump/jjj_1": len(decoded(activitynet[0] / "v_jjj.mkv")) - 20}
    assert set(videos["height"]) == {24} and set(videos["width"]) == {32}


def test_where_decord_fails_pyav_decodes_from_the_start(activitynet: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """decord failing after a few frames (a corrupt stream) leaves no frame of its own: PyAV
    decodes the video again from its first frame, and the folders hold what PyAV decodes."""
    import opplan.data.annotations as module

    decord_frames = module._decord_frames

    def failing(video: Path):  # noqa: ANN202 - a generator standing in for decord's
        for number, item in enumerate(decord_frames(video)):
            if number == 12:
                raise module._DecordFailed("a corrupt packet")
            yield item

    expected = tmp_path / "expected"
    import_dataset("activitynet", *activitynet, expected)
    monkeypatch.setattr(module, "_decord_frames", failing)
    out = tmp_path / "data"
    import_dataset("activitynet", *activitynet, out)
    assert manifest(out) == manifest(expected)
    for path, *_ in manifest(out):
        assert len(frame_files(out / path)) == len(frame_files(expected / path))
    assert rows(out / REPORT) == rows(expected / REPORT) and rows(out / WARNINGS) == rows(expected / WARNINGS)


def test_activitynet_from_the_cli(activitynet: tuple[Path, Path], tmp_path: Path) -> None:
    root, notes = activitynet
    ok = import_cli("activitynet", root, notes, tmp_path / "data")
    assert ok.exit_code == 0, ok.output
    assert "imported 7 videos of 2 classes" in ok.output and "10 problem(s)" in ok.output
    assert "3 warning(s)" in ok.output


@pytest.mark.parametrize("text,message", [
    ("{", "not valid JSON"), ("[]", 'expected {"database"'), ('{"version": "1.3"}', 'expected {"database"'),
    ('{"database": []}', 'expected {"database"')])
def test_activitynet_structural_problems(activitynet: tuple[Path, Path], tmp_path: Path, text: str,
                                         message: str) -> None:
    notes = tmp_path / "activity_net.v1-3.min.json"
    notes.write_text(text)
    with pytest.raises(AnnotationFileError, match=message):
        import_dataset("activitynet", activitynet[0], notes, tmp_path / "data")


def test_activitynet_without_a_usable_segment(activitynet: tuple[Path, Path], tmp_path: Path) -> None:
    notes = tmp_path / "activity_net.v1-3.min.json"
    notes.write_text(json.dumps({"database": {"ccc": DATABASE["ccc"], "ddd": DATABASE["ddd"]}}))
    with pytest.raises(AnnotationFileError, match="no usable videos.*ccc: video v_ccc"):
        import_dataset("activitynet", activitynet[0], notes, tmp_path / "data")
