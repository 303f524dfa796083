"""Frame folders (videos shipped as one image per frame) through ``prepare`` into shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opplan.config import PrepareParams, TrainParams
from opplan.data.dataset import ClipDataset, read_videos
from opplan.data.frames import FrameFolderError, frame_files, read_frames
from opplan.data.manifest import Entry, write_dataset
from opplan.data.prepare import decode_video, estimate_dataset, prepare_dataset
from opplan.data.shards import ShardReader
from opplan.errors import DataError


def video(n: int, seed: int, size: tuple[int, int] = (32, 40)) -> np.ndarray:
    """(n, H, W, 3) uint8 random frames."""
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def write_frames(folder: Path, frames: np.ndarray, name: str = "img_{:05d}.png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / name.format(i))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_frame_order_series_and_refusals(tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # unpadded numbers: natural order, not 1, 10, 11, 2, ...
    write_frames(plain, video(12, 0), name="{}.png")
    assert [p.name for p in frame_files(plain)] == [f"{i}.png" for i in range(1, 13)]
    mixed = tmp_path / "mixed"  # MMAction2 keeps flow next to the RGB frames
    write_frames(mixed, video(3, 1))
    write_frames(mixed, video(3, 2), name="flow_x_{:05d}.png")
    (mixed / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(mixed)] == ["img_00001.png", "img_00002.png", "img_00003.png"]
    flow = tmp_path / "flow"
    write_frames(flow, video(2, 3), name="flow_x_{:05d}.png")
    write_frames(flow, video(2, 4), name="flow_y_{:05d}.png")
    with pytest.raises(FrameFolderError, match=r"several image series \(flow_x_\*, flow_y_\*\)"):
        frame_files(flow)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrameFolderError, match="a folder without image files"):
        frame_files(tmp_path / "empty")


def test_frames_are_resized_like_video_frames(tmp_path: Path) -> None:
    write_frames(tmp_path / "v", video(5, 0, size=(48, 64)))
    frames = read_frames(tmp_path / "v", 24)
    assert len(frames) == 5 and {f.shape for f in frames} == {(24, 32, 3)}
    decoded = decode_video(str(tmp_path / "v"), 24, max_frames=2)
    assert decoded.frames.shape == (2, 24, 32, 3)
    np.testing.assert_array_equal(decoded.frames, np.stack([frames[1], frames[3]]))  # uniform, as for videos
    assert decode_video(str(tmp_path / "v"), 24, fps=10).reason.startswith("a frame folder has no frame rate")


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of frame folders (3 train + 1 test each, PNG so pixels survive) and three bad ones."""
    root = tmp_path_factory.mktemp("rawframes")
    entries = []
    for i in range(8):
        write_frames(root / f"f/v{i}", video(6 + i, seed=i))
        entries.append(Entry(f"f/v{i}", "ab"[i % 2], "train" if i < 6 else "test"))
    write_frames(root / "f/broken", video(6, seed=9))
    (root / "f/broken/img_00004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a damaged frame mid-way
    (root / "f/none").mkdir()
    (root / "f/none/index.txt").write_text("frames were never extracted\n")
    write_frames(root / "f/flow", video(4, seed=10), name="flow_x_{:05d}.png")
    write_frames(root / "f/flow", video(4, seed=11), name="flow_y_{:05d}.png")
    entries += [Entry(f"f/{name}", "a", "test") for name in ("broken", "none", "flow")]
    write_dataset(root, entries, ["a", "b"])
    return root


def test_a_frame_folder_dataset_prepares_into_readable_shards(folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    summary = prepare_dataset(folder_dataset, out, PrepareParams(short_side=32, max_bad_fraction=0.5, val_size=2,
                                                                 workers=1), seed=0)
    assert summary["videos"] == 8 and summary["bad_videos"] == 3
    rows = {r["path"]: r for r in read_csv(out / "videos.csv")}
    assert [int(rows[f"f/v{i}"]["num_frames"]) for i in range(8)] == list(range(6, 14))
    row = rows["f/v5"]
    stored = ShardReader(out).video(row["shard"], int(row["offset"]), int(row["num_frames"]), int(row["height"]),
                                    int(row["width"]))
    np.testing.assert_array_equal(stored, video(11, seed=5))  # short side 32 already: the very pixels
    bad = {r["path"]: r["reason"] for r in read_csv(out / "bad_videos.csv")}
    assert bad["f/broken"] == ("frame img_00004.png (4 of 6) is not a readable image (UnidentifiedImageError); "
                               "replace it or remove the folder")
    assert bad["f/none"].startswith("a folder without image files")
    assert bad["f/flow"].startswith("a frame folder with several image series")
    train = TrainParams(crop_size=24, scale_jitter=(32, 40), eval_short_side=32)
    clips = ClipDataset(out, ["train", "val"], sampling="cs", clip_length=4, mode="val", train=train)
    clip, label = clips[0]
    assert tuple(clip.shape) == (3, 4, 24, 24) and label in (0, 1)
    assert set(read_videos(out)["split"]) == {"train", "val", "test"}
    assert json.loads((out / "prepare.json").read_text())["frames"]["total"] == sum(range(6, 14))


def test_prepare_fps_is_refused_for_frame_folders_in_one_line(folder_dataset: Path, tmp_path: Path) -> None:
    cfg = PrepareParams(short_side=32, fps=10, workers=1)
    for call in (lambda: prepare_dataset(folder_dataset, tmp_path / "s", cfg, seed=0),
                 lambda: estimate_dataset(folder_dataset, tmp_path / "s", cfg)):
        with pytest.raises(DataError, match=r"f/v0: a frame folder has no frame rate.*set prepare.fps: null") as info:
            call()
        assert "\n" not in str(info.value)
