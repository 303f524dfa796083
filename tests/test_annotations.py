"""Importers for the public annotation formats, each fed its exact on-disk format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from opplan.cli import cli
from opplan.data.annotations import REPORT, import_dataset
from opplan.data.manifest import read_manifest
from opplan.errors import AnnotationError


def touch(root: Path, *paths: str) -> None:
    """Stand-in video files (importing checks existence, not content)."""
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"video:" + rel.encode())


def rows(path: Path) -> list[tuple[str, int, str]]:
    """``(file name, line, reason)`` of an importer's problem or warning CSV."""
    with path.open(newline="") as handle:
        return [(Path(r["file"]).name, int(r["line"]), r["reason"]) for r in csv.DictReader(handle)]


def report(out: Path) -> list[tuple[str, int, str]]:
    return rows(out / REPORT)


def import_cli(fmt: str, root: Path, annotations: Path, out: Path):
    """``opplan data import --format FMT`` through the CLI, as a user types it."""
    return CliRunner().invoke(cli, ["data", "import", "--format", fmt, "--root", str(root), "--annotations",
                                    str(annotations), "--out", str(out)])


def manifest(out: Path) -> list[tuple[str, str, str]]:
    entries, _, problems = read_manifest(out)
    assert problems == []
    return [(e.path, e.label, e.split) for e in entries]


# --- UCF101 ----------------------------------------------------------------------------


@pytest.fixture
def ucf(tmp_path: Path) -> tuple[Path, Path]:
    root, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    touch(root, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
          "HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi")
    lists.mkdir()
    # The real files use CRLF line ends.
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1\r\n"  # 3: missing file
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 7\r\n"  # 4: unknown label
        b"this line is wrong here\r\n")  # 5: malformed
    (lists / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        b"handstandpushups/v_HandStandPushups_g01_c01.avi\r\n"  # class folder matched ignoring case
        b"Juggling/v_Juggling_g01_c01.avi\r\n")  # 3: unknown class
    return root, lists


def test_ucf101(ucf: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    import_dataset("ucf101", *ucf, out)
    assert (out / "classes.txt").read_text() == "ApplyEyeMakeup\nHandstandPushups\n"
    assert manifest(out) == [
        ("videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "train"),
        ("videos/HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", "train"),
        ("videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "test"),
        ("videos/HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups", "test"),
    ]
    problems = report(out)
    assert [(f, line) for f, line, _ in problems] == [
        ("trainlist01.txt", 3), ("trainlist01.txt", 4), ("trainlist01.txt", 5), ("testlist01.txt", 3)]
    assert "not found" in problems[0][2] and "label 7" in problems[1][2] and "Juggling" in problems[3][2]


def test_ucf101_other_split_and_missing_file(ucf: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="trainlist02.txt: annotation file not found"):
        import_dataset("ucf101", *ucf, tmp_path / "data", split=2)


def test_links_and_copies(ucf: tuple[Path, Path], tmp_path: Path) -> None:
    import_dataset("ucf101", *ucf, tmp_path / "linked")
    import_dataset("ucf101", *ucf, tmp_path / "copied", link=False)
    rel = "videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
    source = ucf[0] / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
    linked, copied = tmp_path / "linked" / rel, tmp_path / "copied" / rel
    assert linked.is_symlink() and linked.resolve() == source.resolve()
    assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()
    import_dataset("ucf101", *ucf, tmp_path / "linked", link=False)  # re-import over links: now copies
    assert not linked.is_symlink() and linked.read_bytes() == source.read_bytes()


# --- HMDB51 ----------------------------------------------------------------------------


def test_hmdb51(tmp_path: Path) -> None:
    root, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    touch(root, "brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi", "cartwheel/e.avi")
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \nzz.avi 1 \n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 1 \ne.avi 2 \ne.avi 3 \n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 2 \ne.avi 1 \n")
    out = tmp_path / "data"
    import_dataset("hmdb51", root, splits, out)
    assert (out / "classes.txt").read_text() == "brush_hair\ncartwheel\n"
    assert manifest(out) == [("videos/brush_hair/a.avi", "brush_hair", "train"),
                             ("videos/brush_hair/b.avi", "brush_hair", "test"),
                             ("videos/cartwheel/d.avi", "cartwheel", "train"),
                             ("videos/cartwheel/e.avi", "cartwheel", "test")]
    assert [(f, line) for f, line, _ in report(out)] == [("brush_hair_test_split1.txt", 4),
                                                         ("cartwheel_test_split1.txt", 3)]
    import_dataset("hmdb51", root, splits, tmp_path / "two", split=2)
    assert [s for _, _, s in manifest(tmp_path / "two")] == ["test", "train"]
    with pytest.raises(AnnotationError, match="no HMDB51 split files"):
        import_dataset("hmdb51", root, splits, tmp_path / "three", split=3)


# --- Kinetics --------------------------------------------------------------------------

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_kinetics_nested_and_flat(tmp_path: Path) -> None:
    root = tmp_path / "k400"
    touch(root, "train/abseiling/0347ZoDXyP0_000095_000105.mp4", "val/air drumming/-eGnPDG5Pxs_000053_000063.mkv",
          "zzR2PGMzsdg_000010_000020.webm")
    annotations = tmp_path / "train.csv"
    annotations.write_text(KINETICS_HEADER
                           + "abseiling,0347ZoDXyP0,95,105,train\n"
                           + '"air drumming",-eGnPDG5Pxs,53,63,validate\n'
                           + "abseiling,zzR2PGMzsdg,10.0,20.0,val\n"  # flat layout, float times
                           + "abseiling,nothere0000,0,10,train\n"  # 5: missing
                           + "abseiling,0347ZoDXyP0,abc,105,train\n"  # 6: malformed time
                           + "abseiling,0347ZoDXyP1,1,2,holdout\n")  # 7: unknown split
    out = tmp_path / "data"
    import_dataset("kinetics", root, annotations, out)
    assert (out / "classes.txt").read_text() == "abseiling\nair drumming\n"
    assert manifest(out) == [
        ("videos/train/abseiling/0347ZoDXyP0_000095_000105.mp4", "abseiling", "train"),
        ("videos/val/air drumming/-eGnPDG5Pxs_000053_000063.mkv", "air drumming", "test"),
        ("videos/zzR2PGMzsdg_000010_000020.webm", "abseiling", "test"),
    ]
    assert [(f, line) for f, line, _ in report(out)] == [("train.csv", 5), ("train.csv", 6), ("train.csv", 7)]


def test_kinetics_folder_skips_the_unlabelled_test_list(tmp_path: Path) -> None:
    root, folder = tmp_path / "k", tmp_path / "kinetics400"
    touch(root, "a_000001_000011.mp4", "b_000002_000012.mp4")
    folder.mkdir()
    (folder / "train.csv").write_text(KINETICS_HEADER + "x,a,1,11,train\n")
    (folder / "validate.csv").write_text(KINETICS_HEADER + "x,b,2,12,validate\n")
    (folder / "test.csv").write_text("youtube_id,time_start,time_end,split\nc,3,13,test\n")
    out = tmp_path / "data"
    import_dataset("kinetics", root, folder, out)
    assert [s for _, _, s in manifest(out)] == ["train", "test"]
    (folder / "validate.csv").write_text("label,youtube_id,split\nx,b,validate\n")
    with pytest.raises(AnnotationError, match="header lacks time_start, time_end"):
        import_dataset("kinetics", root, folder, out)


# --- Something-Something V2 ------------------------------------------------------------


def test_ssv2(tmp_path: Path) -> None:
    root, labels = tmp_path / "20bn", tmp_path / "labels"
    touch(root, "1.webm", "2.webm", "3.webm")
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps(
        {"Pushing something so that it falls off the table": "1", "Approaching something with your camera": "0"}))
    (labels / "train.json").write_text(json.dumps([
        {"id": "1", "label": "pushing a cup so that it falls off the table",
         "template": "Pushing [something] so that it falls off the table", "placeholders": ["a cup"]},
        {"id": "9", "label": "approaching a cup", "template": "Approaching [something] with your camera",
         "placeholders": ["a cup"]},  # 2: no video
        {"id": "2", "label": "x", "template": "Juggling [something]", "placeholders": ["x"]},  # 3: unknown
        {"label": "no id", "template": "Approaching [something] with your camera"},  # 4: malformed
    ]))
    (labels / "validation.json").write_text(json.dumps([
        {"id": "3", "label": "approaching a box", "template": "Approaching [something] with your camera",
         "placeholders": ["a box"]}]))
    out = tmp_path / "data"
    import_dataset("ssv2", root, labels, out)
    assert (out / "classes.txt").read_text().splitlines() == [
        "Approaching something with your camera", "Pushing something so that it falls off the table"]
    assert manifest(out) == [("videos/1.webm", "Pushing something so that it falls off the table", "train"),
                             ("videos/3.webm", "Approaching something with your camera", "test")]
    assert [(f, line) for f, line, _ in report(out)] == [("train.json", 2), ("train.json", 3), ("train.json", 4)]
    (labels / "validation.json").write_text("[{")
    with pytest.raises(AnnotationError, match="validation.json: not valid JSON"):
        import_dataset("ssv2", root, labels, out)


# --- generic CSV and failures ----------------------------------------------------------


def test_generic_csv(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    touch(root, "a/1.mp4", "b/2.mp4", "b/3.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,split\na/1.mp4,cat,train\nb/2.mp4,dog,val\nb/3.mp4,dog,dev\n"
                       "b/4.mp4,dog,train\nb/2.mp4\n\n")
    out = tmp_path / "data"
    import_dataset("csv", root, listing, out)
    assert manifest(out) == [("videos/a/1.mp4", "cat", "train"), ("videos/b/2.mp4", "dog", "test")]
    assert [(f, line) for f, line, _ in report(out)] == [("list.csv", 4), ("list.csv", 5), ("list.csv", 6)]


def test_no_usable_video_is_an_error_with_a_report(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,split\nmissing.mp4,cat,train\n")
    with pytest.raises(AnnotationError, match="no usable videos"):
        import_dataset("csv", tmp_path / "clips", listing, tmp_path / "data")
    assert report(tmp_path / "data") == [("list.csv", 2, f"video missing.mp4 not found under {tmp_path / 'clips'}")]


def test_cli_import_and_its_errors(ucf: tuple[Path, Path], tmp_path: Path) -> None:
    root, lists = ucf
    ok = CliRunner().invoke(cli, ["data", "import", "--format", "ucf101", "--root", str(root),
                                  "--annotations", str(lists), "--out", str(tmp_path / "data"), "--copy"])
    assert ok.exit_code == 0, ok.output
    assert "imported 4 videos of 2 classes" in ok.output and "4 problem(s)" in ok.output
    bad = CliRunner().invoke(cli, ["data", "import", "--format", "hmdb51", "--root", str(root),
                                   "--annotations", str(lists), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no HMDB51 split files" in bad.output


# --- hostile file trees ------------------------------------------------------------------


def test_symlink_loops_under_the_root_neither_hang_nor_nest(tmp_path: Path) -> None:
    """One loop (a folder linking to the root) and two loops (two folders linking to each
    other): the import finishes, finds each video once, by its shortest path."""
    root = tmp_path / "kinetics"
    touch(root, "train/abseiling/aaa_000001_000011.mp4", "train/bowling/bbb_000002_000012.mp4")
    (root / "train" / "abseiling" / "loop").symlink_to(root)
    (root / "x").mkdir()
    (root / "y").mkdir()
    (root / "x" / "to_y").symlink_to(root / "y")
    (root / "y" / "to_x").symlink_to(root / "x")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "abseiling,aaa,1,11,train\nbowling,bbb,2,12,validate\n")
    result = CliRunner().invoke(cli, ["data", "import", "--format", "kinetics", "--root", str(root),
                                      "--annotations", str(tmp_path / "k.csv"), "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert manifest(tmp_path / "data") == [("videos/train/abseiling/aaa_000001_000011.mp4", "abseiling", "train"),
                                           ("videos/train/bowling/bbb_000002_000012.mp4", "bowling", "test")]


def test_a_class_file_name_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import os

    root, lists, out = tmp_path / "hmdb", tmp_path / "splits", tmp_path / "data"
    touch(root, "brush_hair/a.avi", "caf/b.avi")
    lists.mkdir()
    (lists / "brush_hair_test_split1.txt").write_text("a.avi 1\n")
    with open(os.path.join(os.fsencode(lists), b"caf\xe9_test_split1.txt"), "w") as handle:
        handle.write("b.avi 2\n")
    result = CliRunner().invoke(cli, ["data", "import", "--format", "hmdb51", "--root", str(root),
                                      "--annotations", str(lists), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not UTF-8 text" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # no link written


def test_a_video_path_that_is_not_utf8_is_a_reported_problem(tmp_path: Path) -> None:
    import os

    root = tmp_path / "clips"
    touch(root, "a_000000_000000.mp4")
    os.makedirs(os.path.join(os.fsencode(root), b"d\xff"))
    with open(os.path.join(os.fsencode(root), b"d\xff", b"b_000000_000000.mp4"), "wb") as handle:
        handle.write(b"video")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "cat,a,0,0,train\ndog,b,0,0,train\n")
    result = CliRunner().invoke(cli, ["data", "import", "--format", "kinetics", "--root", str(root),
                                      "--annotations", str(tmp_path / "k.csv"), "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert manifest(tmp_path / "data") == [("videos/a_000000_000000.mp4", "cat", "train")]
    [(_, line, reason)] = report(tmp_path / "data")
    assert line == 3 and "is not UTF-8; rename the file" in reason


def test_mmaction2_video_lists(tmp_path: Path) -> None:
    """MMAction2/PySlowFast ``path label`` lists: the train list and the val list of a folder."""
    root = tmp_path / "kinetics"
    touch(root, "train/a.mp4", "train/b.mp4", "val/c.mp4")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "kinetics400_train_list_videos.txt").write_text("train/a.mp4 0\ntrain/b.mp4 10\ntrain/x.mp4 1\n"
                                                             "train/b.mp4 cat\n")
    (lists / "kinetics400_val_list_videos.txt").write_text("val/c.mp4 10\n\nval/frames 64 1\n")
    out = tmp_path / "data"
    listing = import_dataset("list", root, lists, out)
    assert listing.classes == ["0", "1", "10"]  # every index listed, numerically
    assert manifest(out) == [("videos/train/a.mp4", "0", "train"), ("videos/train/b.mp4", "10", "train"),
                             ("videos/val/c.mp4", "10", "test")]
    problems = report(out)
    assert [(f, line) for f, line, _ in problems] == [("kinetics400_train_list_videos.txt", 3),
                                                      ("kinetics400_train_list_videos.txt", 4),
                                                      ("kinetics400_val_list_videos.txt", 3)]
    assert "not found" in problems[0][2] and "expected 'path label'" in problems[1][2]
    assert "rawframes" in problems[2][2]
