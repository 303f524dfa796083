"""Importers of frame-folder datasets (MMAction2 rawframes, Something-Something V1), fed their
on-disk layout, and the imported folders through ``prepare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_annotations import import_cli, manifest, rows

from opplan.config import PrepareParams
from opplan.data.annotations import REPORT, WARNINGS, import_dataset
from opplan.data.dataset import read_videos
from opplan.data.prepare import prepare_dataset
from opplan.errors import AnnotationError


def frames(folder: Path, n: int, name: str = "img_{:05d}.jpg", seed: int = 0) -> None:
    """``n`` small JPEG frames in ``folder``, numbered from 1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name.format(i))


# --- MMAction2 rawframes -------------------------------------------------------------------


@pytest.fixture
def rawframes(tmp_path: Path) -> tuple[Path, Path]:
    """``data/ucf101/rawframes/<Class>/<video>/img_*.jpg`` with flow beside, and the two lists."""
    root = tmp_path / "rawframes"
    for i, (name, n) in enumerate([("A/v1", 5), ("A/v2", 6), ("B/v3", 7), ("B/v4", 4), ("A/v5", 5), ("B/v6", 6)]):
        frames(root / name, n, seed=i)
        frames(root / name, n, name="flow_x_{:05d}.jpg", seed=10 + i)
        frames(root / name, n, name="flow_y_{:05d}.jpg", seed=20 + i)
    (root / "B/empty").mkdir()
    lists = tmp_path / "annotations"
    lists.mkdir()
    (lists / "ucf101_train_split_1_rawframes.txt").write_text(
        "A/v1 5 0\nA/v2 6 0\nB/v3 9 1\n"  # 3: the list says 9 frames, 7 are on disk
        "B/v4 4 1\nB/gone 5 1\n"  # 5: no such folder
        "A/v1.avi 0\n"  # 6: a video list line
        "B/empty 3 1\n")  # 7: a folder without frames
    (lists / "ucf101_val_split_1_rawframes.txt").write_text("A/v5 5 0\n\nB/v6 6 one\nB/v6 6 1\n")  # 3: label not a number
    return root, lists


def test_rawframes(rawframes: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    listing = import_dataset("rawframes", *rawframes, out)
    assert listing.classes == ["0", "1"]
    assert manifest(out) == [("videos/A/v1", "0", "train"), ("videos/A/v2", "0", "train"),
                             ("videos/B/v3", "1", "train"), ("videos/B/v4", "1", "train"),
                             ("videos/A/v5", "0", "test"), ("videos/B/v6", "1", "test")]
    placed = out / "videos/A/v1"  # a folder of links: DVC follows links to files, not to folders
    assert placed.is_dir() and not placed.is_symlink() and len(list(placed.iterdir())) == 15
    assert (placed / "img_00002.jpg").is_symlink()
    assert (placed / "img_00002.jpg").resolve() == (rawframes[0] / "A/v1/img_00002.jpg").resolve()
    import_dataset("rawframes", *rawframes, out)  # again: the same links
    assert sorted(p.name for p in placed.iterdir()) == sorted(p.name for p in (rawframes[0] / "A/v1").iterdir())
    problems = rows(out / REPORT)
    assert [(f, line) for f, line, _ in problems] == [("ucf101_train_split_1_rawframes.txt", 5),
                                                      ("ucf101_train_split_1_rawframes.txt", 6),
                                                      ("ucf101_train_split_1_rawframes.txt", 7),
                                                      ("ucf101_val_split_1_rawframes.txt", 3)]
    assert problems[0][2] == f"frame folder B/gone not found under {rawframes[0].resolve()}"
    assert problems[1][2].startswith("expected 'frame_dir total_frames label'")
    assert problems[2][2].startswith("frame folder B/empty: a folder without image files")
    assert rows(out / WARNINGS) == [("ucf101_train_split_1_rawframes.txt", 3,
                                     "frame folder B/v3 holds 7 frames, the list says 9; the 7 on disk are used")]


def test_rawframes_copied_and_prepared(rawframes: tuple[Path, Path], tmp_path: Path) -> None:
    """``--copy`` copies the folders; ``prepare`` stores the frames on disk, not the declared count."""
    out = tmp_path / "data"
    import_dataset("rawframes", *rawframes, out, link=False)
    copied = out / "videos/B/v3"
    assert copied.is_dir() and not copied.is_symlink() and len(list(copied.glob("img_*.jpg"))) == 7
    import_dataset("rawframes", *rawframes, out, link=False)  # again over the copies
    assert len(list(copied.iterdir())) == 21 and not any(p.is_symlink() for p in copied.iterdir())
    shards = tmp_path / "shards"
    prepare_dataset(out, shards, PrepareParams(short_side=24, val_size=1, workers=1), seed=0)
    videos = read_videos(shards).set_index("path")
    assert videos["num_frames"].to_dict() == {"videos/A/v1": 5, "videos/A/v2": 6, "videos/B/v3": 7,
                                              "videos/B/v4": 4, "videos/A/v5": 5, "videos/B/v6": 6}
    assert set(videos["height"]) == {24} and set(videos["width"]) == {32}


def test_a_list_of_frame_folders_as_a_video_list_points_at_rawframes(rawframes: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no usable videos.*--format rawframes"):
        import_dataset("list", rawframes[0], rawframes[1] / "ucf101_val_split_1_rawframes.txt", tmp_path / "x")


# --- Something-Something V1 ------------------------------------------------------------


@pytest.fixture
def ssv1(tmp_path: Path) -> tuple[Path, Path]:
    """``20bn-something-something-v1/<id>/00001.jpg`` and the four CSV files as 20BN shipped them."""
    root = tmp_path / "20bn-something-something-v1"
    for i, video_id in enumerate(("100218", "24", "7", "31", "999")):
        frames(root / video_id, 3 + i, name="{:05d}.jpg", seed=i)
    notes = tmp_path / "annotations"
    notes.mkdir()
    (notes / "something-something-v1-labels.csv").write_text(
        "Holding something\nPutting something, something and something on the table\n"
        "Something falling like a feather or paper\n")
    (notes / "something-something-v1-train.csv").write_text(
        "100218;Something falling like a feather or paper\n24;Holding something\n"
        "7;holding  SOMETHING\n"  # case and blanks as in the labels file
        "8;Holding something\n"  # 4: no frame folder
        "31;Juggling something\n"  # 5: not a class
        "31 Holding something\n")  # 6: no ';'
    (notes / "something-something-v1-validation.csv").write_text(
        "999;Putting something, something and something on the table\n")
    (notes / "something-something-v1-test.csv").write_text("31\n")  # unlabelled: not read
    return root, notes


def test_ssv1(ssv1: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    listing = import_dataset("ssv1", *ssv1, out)
    assert (out / "classes.txt").read_text().splitlines() == [
        "Holding something", "Putting something, something and something on the table",
        "Something falling like a feather or paper"]
    assert manifest(out) == [
        ("videos/100218", "Something falling like a feather or paper", "train"),
        ("videos/24", "Holding something", "train"), ("videos/7", "Holding something", "train"),
        ("videos/999", "Putting something, something and something on the table", "test")]
    problems = rows(out / REPORT)
    assert [(f, line) for f, line, _ in problems] == [("something-something-v1-train.csv", 4),
                                                      ("something-something-v1-train.csv", 5),
                                                      ("something-something-v1-train.csv", 6)]
    assert "frame folder 8 not found" in problems[0][2]
    assert problems[1][2] == "class 'Juggling something' is not in something-something-v1-labels.csv"
    assert problems[2][2] == "expected 'id;class name', got '31 Holding something'"
    assert not (out / WARNINGS).exists() and listing.warnings == []


def test_ssv1_from_the_cli_and_without_its_labels(ssv1: tuple[Path, Path], tmp_path: Path) -> None:
    root, notes = ssv1
    ok = import_cli("ssv1", root, notes, tmp_path / "data")
    assert ok.exit_code == 0, ok.output
    assert "imported 4 videos of 3 classes" in ok.output and "3 problem(s)" in ok.output
    (notes / "something-something-v1-labels.csv").unlink()
    bad = import_cli("ssv1", root, notes, tmp_path / "x")
    assert bad.exit_code == 2 and "something-something-v1-labels.csv: annotation file not found" in bad.output
