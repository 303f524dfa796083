"""The prepare stage: shards, bad videos, the internal split (docs/design.md §5)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from opplan.config import PrepareParams
from opplan.data.manifest import Entry, write_dataset
from opplan.data.prepare import decode_video, prepare_dataset, resized_shape
from opplan.data.shards import ShardReader
from opplan.data.splits import class_quotas, stratified_split, validation_count
from opplan.data.synth import render, write_video
from opplan.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def frames(n: int, seed: int = 0, size: tuple[int, int] = (64, 80)) -> np.ndarray:
    return render("SquareRise", np.random.default_rng(seed), n, size[1], size[0])


def write_with_pyav(path: Path, video: np.ndarray, *, codec: str, audio: bool = False) -> None:
    """A video in another container/codec, optionally with an audio stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i, frame in enumerate(video):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            if sound is not None and i % 2 == 0:
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate = 16000
                container.mux(sound.encode(chunk))
        container.mux(stream.encode())
        if sound is not None:
            container.mux(sound.encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of good videos in several forms, three broken files, bad manifest rows."""
    root = tmp_path_factory.mktemp("odd")
    (root / "v").mkdir()
    entries = []
    for i in range(6):
        write_video(root / f"v/good{i}.mp4", frames(20 + i, seed=i))
        entries.append(Entry(f"v/good{i}.mp4", "a" if i < 3 else "b", "train"))
    write_with_pyav(root / "v/audio.mp4", frames(12), codec="libx264", audio=True)
    write_with_pyav(root / "v/mpeg4.avi", frames(12), codec="mpeg4")
    write_with_pyav(root / "v/vp9.webm", frames(12), codec="libvpx-vp9")
    write_video(root / "v/short.mp4", frames(3))
    write_video(root / "v/portrait.mp4", frames(10, size=(80, 64)))
    (root / "v/empty.mp4").write_bytes(b"")
    (root / "v/text.mp4").write_text("this is not a video\n" * 20)
    whole = (root / "v/good5.mp4").read_bytes()
    (root / "v/truncated.mp4").write_bytes(whole[: len(whole) // 2])
    for name in ("audio.mp4", "mpeg4.avi", "vp9.webm", "short.mp4", "portrait.mp4", "empty.mp4", "text.mp4",
                 "truncated.mp4"):
        entries.append(Entry(f"v/{name}", "a", "test"))
    write_dataset(root, entries, ["a", "b"])
    with (root / "manifest.csv").open("a") as handle:
        handle.write("v/nothere.mp4,a,train\n"  # line 16: missing file
                     "v/good0.mp4,zebra,train\n"  # 17: unknown label
                     "v/good1.mp4,a,holdout\n"  # 18: unknown split
                     "v/good2.mp4,a\n")  # 19: wrong column count
    return root


@pytest.fixture(scope="module")
def odd_shards(odd_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("odd_shards")
    prepare_dataset(odd_dataset, out, PrepareParams(short_side=32, max_bad_fraction=0.5, val_size=2, workers=1),
                    seed=0)
    return out


def test_odd_files_are_decoded_or_reported(odd_shards: Path) -> None:
    videos = {Path(r["path"]).name: r for r in read_csv(odd_shards / "videos.csv")}
    assert set(videos) == {f"good{i}.mp4" for i in range(6)} | {
        "audio.mp4", "mpeg4.avi", "vp9.webm", "short.mp4", "portrait.mp4"}
    assert [int(videos[f"good{i}.mp4"]["num_frames"]) for i in range(6)] == [20, 21, 22, 23, 24, 25]
    assert videos["short.mp4"]["num_frames"] == "3" and videos["vp9.webm"]["num_frames"] == "12"
    assert (videos["good0.mp4"]["height"], videos["good0.mp4"]["width"]) == ("32", "40")
    assert (videos["portrait.mp4"]["height"], videos["portrait.mp4"]["width"]) == ("40", "32")
    bad = {r["path"]: r["reason"] for r in read_csv(odd_shards / "bad_videos.csv")}
    assert {"v/empty.mp4", "v/text.mp4", "v/truncated.mp4"} <= set(bad)
    assert bad["v/empty.mp4"] == "an empty file (0 bytes), not a video"
    assert all(bad[p].startswith("not a video file that can be opened") for p in ("v/text.mp4", "v/truncated.mp4"))
    lines = {p.rsplit(":", 1)[1]: reason for p, reason in bad.items() if "manifest.csv:" in p}
    assert set(lines) == {"16", "17", "18", "19"}
    assert "not found" in lines["16"] and "zebra" in lines["17"] and "holdout" in lines["18"]
    summary = json.loads((odd_shards / "prepare.json").read_text())
    assert summary["bad_videos"] == 7 and summary["videos"] == 11


def test_shard_frames_are_the_decoded_frames(odd_dataset: Path, odd_shards: Path) -> None:
    row = next(r for r in read_csv(odd_shards / "videos.csv") if r["path"] == "v/good4.mp4")
    video = ShardReader(odd_shards).video(row["shard"], int(row["offset"]), int(row["num_frames"]),
                                          int(row["height"]), int(row["width"]))
    expected = decord.VideoReader(str(odd_dataset / "v/good4.mp4"), width=40, height=32)
    np.testing.assert_array_equal(video, expected.get_batch(list(range(len(expected)))).asnumpy())


def test_partly_corrupt_video_keeps_what_decodes(tmp_path: Path) -> None:
    """The header promises 60 frames; a zeroed stretch of bytes ends decoding early."""
    data = tmp_path / "data"
    data.mkdir()
    with av.open(str(data / "v.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(60):
            noise = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        out.mux(stream.encode())
    raw = bytearray((data / "v.mp4").read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 2000] = bytes(2000)
    (data / "v.mp4").write_bytes(bytes(raw))
    write_video(data / "w.mp4", frames(8))
    write_video(data / "x.mp4", frames(8, seed=1))  # a second class: one class cannot be planned for
    write_dataset(data, [Entry("v.mp4", "a", "train"), Entry("w.mp4", "a", "train"), Entry("x.mp4", "b", "train")],
                  ["a", "b"])
    prepare_dataset(data, tmp_path / "out", PrepareParams(short_side=32, val_size=1, workers=1), seed=0)
    rows = {r["path"]: int(r["num_frames"]) for r in read_csv(tmp_path / "out" / "videos.csv")}
    assert 0 < rows["v.mp4"] < 60 and rows["w.mp4"] == 8
    # the same frames every time (decord alone kept a random number of them)
    again = [decode_video(str(data / "v.mp4"), 32).frames for _ in range(3)]
    assert all(frames is not None and frames.shape[0] == rows["v.mp4"] for frames in again)
    assert all(np.array_equal(frames, again[0]) for frames in again)


def test_too_many_bad_videos_fail_after_writing_the_report(odd_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"7 of 18 videos are unusable .*bad_videos.csv"):
        prepare_dataset(odd_dataset, tmp_path, PrepareParams(short_side=32, max_bad_fraction=0.2, workers=1), seed=0)
    assert len(read_csv(tmp_path / "bad_videos.csv")) == 7
    assert not (tmp_path / "videos.csv").exists()


def test_missing_dataset_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere does not exist; make one with `opplan data synth data`"):
        prepare_dataset(tmp_path / "nowhere", tmp_path / "out", PrepareParams(), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"manifest.csv: no manifest .*opplan data import"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", PrepareParams(), seed=0)


def test_workers_shards_and_max_frames(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two processes give the same result as one; small shards split; max_frames subsamples."""
    one, two = tmp_path / "one", tmp_path / "two"
    prepare_dataset(tiny_dataset, one, PrepareParams(short_side=40, workers=1, shard_mb=1), seed=3)
    prepare_dataset(tiny_dataset, two, PrepareParams(short_side=40, workers=2, shard_mb=1), seed=3)
    shards = sorted(p.name for p in one.glob("frames-*.npy"))
    assert len(shards) > 1 and shards == sorted(p.name for p in two.glob("frames-*.npy"))
    assert (one / "videos.csv").read_text() == (two / "videos.csv").read_text()
    for name in shards:
        assert (one / name).read_bytes() == (two / name).read_bytes()
    prepare_dataset(tiny_dataset, one, PrepareParams(short_side=40, workers=1, max_frames=10), seed=3)
    assert sorted(p.name for p in one.glob("frames-*.npy")) == ["frames-00000.npy"]  # stale shards removed
    assert {r["num_frames"] for r in read_csv(one / "videos.csv")} == {"10"}


def test_pipeline_stage(tiny_dataset: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"root": str(tiny_dataset)},
                                      "prepare": {"out": str(tmp_path / "shards"), "short_side": 40, "workers": 1},
                                      "train": {"crop_size": 32, "scale_jitter": [32, 40], "eval_short_side": 36}}))
    stage = [sys.executable, str(ROOT / "pipeline" / "prepare.py"), str(params)]
    assert subprocess.run(stage, capture_output=True, check=False).returncode == 0
    assert json.loads((tmp_path / "shards" / "prepare.json").read_text())["splits"] == {
        "train": 8, "val": 4, "test": 4}
    params.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "missing")}}))
    failed = subprocess.run(stage, capture_output=True, text=True, check=False)
    assert failed.returncode == 2 and "missing does not exist" in failed.stderr


def test_resized_shape_keeps_the_aspect() -> None:
    assert resized_shape(64, 80, 40) == (40, 50)
    assert resized_shape(240, 320, 128) == (128, 171)
    assert resized_shape(80, 64, 40) == (50, 40)


# --- the internal split ----------------------------------------------------------------


def test_validation_count() -> None:
    assert validation_count(None, 100, 30) == 30
    assert validation_count(12, 100, 30) == 12
    assert validation_count(0.25, 100, 30) == 25
    with pytest.raises(DataError, match="no test split"):
        validation_count(None, 100, 0)


def test_class_quotas_exact() -> None:
    assert class_quotas([10, 10, 10], 6).tolist() == [2, 2, 2]
    assert class_quotas([10, 20, 30], 6).tolist() == [1, 2, 3]
    assert class_quotas([5, 5, 5], 4).tolist() == [2, 1, 1]  # remainder to the first of the tied
    assert class_quotas([1, 9], 5).tolist() == [0, 5]  # a class of one keeps its video
    assert class_quotas([2, 2], 10).tolist() == [1, 1]  # clipped: each class keeps one


@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=12), total=st.integers(0, 300))
def test_class_quotas_properties(counts: list[int], total: int) -> None:
    quota = class_quotas(counts, total)
    caps = np.maximum(np.array(counts) - 1, 0)
    assert quota.sum() == min(total, caps.sum())
    assert np.all(quota >= 0) and np.all(quota <= caps)


def test_stratified_split_is_seeded_and_stratified() -> None:
    labels = [0] * 20 + [1] * 10 + [2] * 4  # shares 4.7, 2.4, 0.9 of 8
    first = stratified_split(labels, 8, seed=0)
    assert first.tolist() == stratified_split(labels, 8, seed=0).tolist()
    assert first.tolist() != stratified_split(labels, 8, seed=1).tolist()
    per_class = [int(first[np.array(labels) == c].sum()) for c in range(3)]
    assert per_class == [5, 2, 1] and sum(per_class) == 8


def test_tiny_shards_split(tiny_shards: Path) -> None:
    rows = read_csv(tiny_shards / "videos.csv")
    for label in {r["label"] for r in rows}:
        splits = sorted(r["split"] for r in rows if r["label"] == label)
        assert splits == ["test", "train", "train", "val"]  # val size = test size, one per class


# --- shard checksums ---------------------------------------------------------------------


def test_a_damaged_shard_stops_training_and_a_re_prepared_one_changes_the_planning_hash(
        tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeroing 40 % of a shard's bytes is caught before training (exit 2, one line
    naming the shard), never trained on; frames that really changed give another config hash."""
    from click.testing import CliRunner
    from tiny import tiny_config

    from opplan.cli import cli
    from opplan.config import Params
    from opplan.data.shards import CHECKSUMS, verify_shards, write_checksums
    from opplan.stages.common import config_hash, planning_config

    shards = tmp_path / "shards"
    shards.mkdir()
    for path in tiny_shards.iterdir():
        (shards / path.name).write_bytes(path.read_bytes())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_config(shards)))
    monkeypatch.chdir(tmp_path)
    params = Params.model_validate(tiny_config(shards))
    before = config_hash(planning_config(params, shards))
    [shard] = sorted(shards.glob("frames-*.npy"))
    good = shard.read_bytes()
    start, length = len(good) // 3, int(0.4 * len(good))
    shard.write_bytes(good[:start] + bytes(length) + good[start + length:])
    for args in (["data", "verify"], ["data", "verify", "--quick"], ["plan"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{shard}: frame shard differs from what `prepare` wrote (content changed)" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not Path("mlflow.db").exists() and not Path(".opplan/work").exists()  # nothing trained
    shard.write_bytes(good[:-1])
    with pytest.raises(DataError, match="size changed"):
        verify_shards(shards)
    shard.write_bytes(good)  # restored: the same planning, its runs reused
    assert CliRunner().invoke(cli, ["data", "verify"]).exit_code == 0
    assert config_hash(planning_config(params, shards)) == before
    changed = bytearray(good)
    changed[-1] ^= 0xFF  # a re-prepare that gives other frames writes other checksums
    shard.write_bytes(bytes(changed))
    write_checksums(shards, {shard.name: hashlib.sha256(changed).hexdigest()})
    assert config_hash(planning_config(params, shards)) != before
    (shards / CHECKSUMS).unlink()
    with pytest.raises(DataError, match="checksums.json not found: these shards predate"):
        planning_config(params, shards)


# --- manifest paths and classes -------------------------------------------------------------


def linked_dataset(tiny_dataset: Path, folder: Path, rows: list[str], classes: str | None = None) -> Path:
    """A dataset folder whose ``v/`` links to ``tiny_dataset``'s videos, with these manifest rows."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "v").symlink_to(tiny_dataset / "videos", target_is_directory=True)
    (folder / "classes.txt").write_text(classes or (tiny_dataset / "classes.txt").read_text())
    (folder / "manifest.csv").write_text("path,label,split\n" + "".join(f"{r}\n" for r in rows))
    return folder


def tiny_rows(tiny_dataset: Path) -> list[str]:
    rows = (tiny_dataset / "manifest.csv").read_text().splitlines()[1:]
    return [f"v/{r.split('videos/', 1)[1]}" for r in rows]


def test_manifest_paths_are_resolved_deduplicated_and_kept_inside_the_folder(tiny_dataset: Path,
                                                                           tmp_path: Path) -> None:
    from opplan.data.manifest import read_manifest

    rows = tiny_rows(tiny_dataset)
    first = rows[0].split(",")[0]  # a training video
    label = rows[0].split(",")[1]
    detour = f"v/{first.split('/')[1]}/../{first[2:]}"
    outside = tmp_path / "outside.mp4"
    outside.write_bytes((tiny_dataset / "videos" / first[2:]).read_bytes())
    folder = linked_dataset(tiny_dataset, tmp_path / "d", rows + [
        f"{outside},{label},train", f"../outside.mp4,{label},train", f"v/../../outside.mp4,{label},train",
        f"./{first},{label},train", f"{detour},{label},train", f"{tiny_dataset}/videos/{first[2:]},{label},train"])
    entries, _, problems = read_manifest(folder)
    assert [e.path for e in entries] == [r.split(",")[0] for r in rows]
    n = len(rows) + 1
    assert [(p.line, p.reason) for p in problems] == [
        (n + 1, f"path {outside} leaves the dataset folder; write it relative to the folder, without '..'"),
        (n + 2, "path ../outside.mp4 leaves the dataset folder; write it relative to the folder, without '..'"),
        (n + 3, "path v/../../outside.mp4 leaves the dataset folder; write it relative to the folder, without '..'"),
        (n + 4, f"video ./{first} is listed more than once (line 2, as {first})"),
        (n + 5, f"video {detour} is listed more than once (line 2, as {first})"),
        (n + 6, f"path {tiny_dataset}/videos/{first[2:]} leaves the dataset folder; write it relative to the "
                "folder, without '..'")]


def test_a_video_in_two_splits_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from opplan.cli import cli

    rows = tiny_rows(tiny_dataset)
    path, label, _ = rows[0].split(",")
    spelled = f"./v/{label}/../{path[2:]}"
    linked_dataset(tiny_dataset, tmp_path / "d", rows + [f"{spelled},{label},test"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "d")},
                                                          "prepare": {"out": str(tmp_path / "shards")}}))
    result = CliRunner().invoke(cli, ["data", "prepare", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"opplan: error: {tmp_path / 'd' / 'manifest.csv'}:{len(rows) + 2}: video {spelled} is also in split "
        f"'train' (line 2, as {path}); a video must be in one split only: remove one of the rows")
    assert not (tmp_path / "shards").exists()


def test_one_class_is_refused_and_a_thin_class_is_warned_about(tiny_dataset: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    rows = tiny_rows(tiny_dataset)
    label = rows[0].split(",")[1]
    one = linked_dataset(tiny_dataset, tmp_path / "one", [r for r in rows if r.split(",")[1] == label])
    with pytest.raises(DataError, match=rf"the training split holds 1 class\(es\) \({label}\): classification "
                                        "needs at least two"):
        prepare_dataset(one, tmp_path / "s1", PrepareParams(short_side=32, workers=1, val_size=1), seed=0)
    assert not (tmp_path / "s1").exists()
    other = next(r.split(",")[1] for r in rows if r.split(",")[1] != label)
    thin = [r for r in rows if r.split(",")[1] != other or r.endswith(",test")]
    thin.append(next(r for r in rows if r.split(",")[1] == other and r.endswith(",train")))
    prepare_dataset(linked_dataset(tiny_dataset, tmp_path / "thin", thin), tmp_path / "s2",
                    PrepareParams(short_side=32, workers=1, val_size=2), seed=0)
    assert f"1 class(es) have fewer than 2 training videos, so none goes to internal validation: {other}" in caplog.text


def test_files_that_are_no_video_are_refused_in_a_users_words(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A PNG renamed .mp4 (FFmpeg reads it as a one-frame video), audio only, a text file: each
    listed with a reason a user understands; decord's and FFmpeg's own text only in the debug log."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    entries = [Entry(f"g{i}.mp4", "ab"[i % 2], "train") for i in range(4)]
    for i in range(4):
        write_video(data / f"g{i}.mp4", frames(8, seed=i))
    Image.fromarray(frames(1)[0]).save(data / "image.mp4", format="PNG")
    Image.fromarray(frames(1)[0]).save(data / "photo.avi", format="JPEG")
    with av.open(str(data / "sound.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 16000
        for packet in [*stream.encode(samples), *stream.encode()]:
            out.mux(packet)
    (data / "text.mp4").write_text("this is not a video\n" * 20)
    names = ["image.mp4", "photo.avi", "sound.mp4", "text.mp4"]
    write_dataset(data, entries + [Entry(name, "a", "test") for name in names], ["a", "b"])
    caplog.set_level("DEBUG", logger="opplan.data.prepare")
    prepare_dataset(data, tmp_path / "out", PrepareParams(short_side=32, val_size=1, workers=1,
                                                          max_bad_fraction=0.9), seed=0)
    bad = {r["path"]: r["reason"] for r in read_csv(tmp_path / "out" / "bad_videos.csv")}
    assert bad == {
        "image.mp4": "an image (PNG), not a video",
        "photo.avi": "an image (JPEG), not a video",
        "sound.mp4": "no video stream (audio or data only)",
        "text.mp4": "not a video file that can be opened (an unknown format, or a damaged or truncated header)",
    }
    assert not any(word in reason for reason in bad.values() for word in ("Check failed", "st_nb", "index"))
    assert "ERROR opening" not in capfd.readouterr().err
    assert "FFmpeg cannot open it" in caplog.text  # the library's words, at debug level


def test_a_video_larger_than_shard_mb_gets_a_shard_of_its_own_and_says_so(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Videos are never split (prepare.shard_mb's documentation): a long one makes one big shard."""
    from opplan.data.shards import ShardWriter

    caplog.set_level("INFO", logger="opplan.data.shards")
    writer = ShardWriter(tmp_path, shard_bytes=10_000)
    small, long = frames(2, size=(16, 16)), frames(40, size=(32, 32))
    assert [writer.add(v) for v in (small, long, small)] == [(writer.name_format.format(i), 0) for i in range(3)]
    writer.flush()
    assert "larger than prepare.shard_mb" in caplog.text and "never split" in caplog.text
    assert (tmp_path / writer.name_format.format(1)).stat().st_size >= long.nbytes > 10_000
