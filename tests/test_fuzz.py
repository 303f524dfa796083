"""Fuzzing: random curves at the knee fitter, random malformed lines at every annotation parser.

The contract under test: the knee fitter never raises on data (``None`` = "not enough
evidence"); a parser raises nothing but :class:`~opplan.errors.DataError` (its
:class:`~opplan.errors.AnnotationError` included), and what it does import is a dataset
folder that reads back without a problem, every annotation line being a video or a
reported problem.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opplan.data.annotations import REPORT, import_dataset
from opplan.data.manifest import read_manifest
from opplan.errors import DataError
from opplan.planning.fitting import FUNCTIONS, fit_curve
from opplan.planning.knee import KneeStopper, replay

# OPPLAN_FUZZ_EXAMPLES=2000 fuzzes deeper (a few minutes); the default keeps the suite fast.
EXAMPLES = int(os.environ.get("OPPLAN_FUZZ_EXAMPLES", "40"))
KNEE = settings(max_examples=max(EXAMPLES // 2, 10), deadline=timedelta(seconds=3), database=None,
                suppress_health_check=[HealthCheck.too_slow])
PARSER = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2), database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- the knee fitter -------------------------------------------------------------------------

point = st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from([0.0, 1.0, -0.0, 1e308, -1e308, 5e-324, 1e-300, 1e300, math.nan, math.inf]))
curves = st.lists(point, max_size=30)


def _check_fit(fit: object, horizon: int) -> None:
    if fit is not None:
        assert 0 <= fit.t_star <= horizon
        assert math.isfinite(fit.value) and math.isfinite(fit.rmse) and all(map(math.isfinite, fit.params))


@KNEE
@given(curve=curves, horizon=st.integers(0, 1500))
def test_fit_curve_of_random_curves_is_a_fit_or_none(curve: list[float], horizon: int) -> None:
    for function in FUNCTIONS:
        _check_fit(fit_curve(curve, function, horizon=horizon), horizon)


@KNEE
@given(curve=curves, function=st.sampled_from(FUNCTIONS), delay=st.integers(1, 12), max_epochs=st.integers(1, 30),
       horizon=st.integers(1, 1500))
def test_stopper_and_replay_of_random_curves(curve: list[float], function: str, delay: int, max_epochs: int,
                                             horizon: int) -> None:
    stopper = KneeStopper(function, delay, max_epochs, horizon)
    decision = None
    for y in curve:
        decision = stopper.update(y)
        _check_fit(decision.fit, horizon)
        if decision.stop:
            assert 0 <= decision.chosen_epoch <= decision.t and decision.reason in ("knee", "max_epochs")
            break
    result = replay(curve, function=function, delay=delay, max_epochs=max_epochs, horizon=horizon)
    json.dumps(result.to_json(), allow_nan=False)  # plan.json / `opplan knee --json` never hold NaN
    if decision is None:
        assert result.chosen_epoch is None
    else:
        assert result.stop_epoch == (decision.t if decision.stop else None)
        assert 0 <= result.chosen_epoch < len(curve)


# --- annotation parsers ------------------------------------------------------------------------

NASTY = ["", " ", "\t", "0", "1", "2", "3", "-1", "01", "²", "١", "٣", "1.5", "1e400", "inf", "-inf", "nan",
         "99999999999999999999999", "A", "B", "a", "A/v_1.avi", "a/v_1.avi", "B/v_2.avi", "v_1.avi", "v_2.avi",
         "../../../../tmp/x.avi", "/etc/passwd", "/", ".", "..", "a,b", '"', "'", "\x00", "\r", "\x0b", "\x1c", "\x85",
         "\u2028", "\ufeff", "é", "😀", "train", "test", "val", "validate", "holdout", "yt1", "label", "split", "x" * 300]
token = st.one_of(st.sampled_from(NASTY), st.text(max_size=8))
spaced_line = st.lists(token, max_size=4).map(" ".join)
csv_line = st.one_of(st.lists(token, max_size=6).map(",".join),
                     st.lists(token, max_size=6).map(lambda cells: _csv_row(cells)))


def _csv_row(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def text_file(lines: st.SearchStrategy[str], valid: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[bytes]:
    """A file of random (and some valid) lines, LF or CRLF; now and then raw bytes (bad UTF-8)."""
    line = lines if valid is None else st.one_of(valid, lines)
    joined = st.tuples(st.lists(line, max_size=8), st.sampled_from(["\n", "\r\n"])).map(
        lambda p: p[1].join(p[0]).encode("utf-8", "surrogatepass"))
    return st.one_of(joined, joined, joined, st.binary(max_size=60))


VIDEOS = ("A/v_1.avi", "B/v_2.avi", "v_3.avi", "brush/x.avi", "yt1_000001_000011.mp4", "train/A/yt2_000000_000010.mkv",
          "7.webm", "8.webm")


@contextmanager
def scratch() -> Iterator[tuple[Path, Path, Path]]:
    """(video root with a few stand-in videos, annotation folder, output folder), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="opplan-fuzz-"))
    try:
        root, annotations = folder / "videos", folder / "annotations"
        for rel in VIDEOS:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"video")
        annotations.mkdir()
        yield root, annotations, folder / "out"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def import_or_refuse(fmt: str, root: Path, annotations: Path, out: Path) -> list | None:
    """``import_dataset``; a DataError is a documented refusal (``None``). An import that
    succeeds must have written a dataset folder that reads back without a problem."""
    try:
        listing = import_dataset(fmt, root, annotations, out)
    except DataError as exc:
        assert str(exc)
        return None
    entries, classes, problems = read_manifest(out)
    assert problems == [], problems
    assert [e.path for e in entries] == [f"videos/{entry.path}" for entry, _ in listing.videos]
    assert {e.label for e in entries} <= set(classes) == set(listing.classes)
    for entry, (_, source) in zip(entries, listing.videos):  # placed inside out/videos, linking its source
        assert Path(os.path.normpath(out / entry.path)).is_relative_to(out / "videos"), entry.path
        if source.is_dir():  # a frame folder: a folder of links to its files
            assert {p.resolve() for p in (out / entry.path).iterdir()} == {
                p.resolve() for p in source.iterdir() if p.is_file()}
        else:
            assert (out / entry.path).resolve() == source.resolve()
    with (out / REPORT).open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(listing.problems)
    return listing


def _data_lines(raw: bytes) -> int:
    return sum(1 for line in raw.decode("utf-8-sig", "replace").splitlines() if line.strip())


@PARSER
@given(classes=text_file(spaced_line, st.sampled_from(["1 A", "2 B", "1 a", "3 C"])),
       train=text_file(spaced_line, st.sampled_from(["A/v_1.avi 1", "B/v_2.avi 2", "v_3.avi 1", "A/v_1.avi 2"])),
       test=text_file(spaced_line, st.sampled_from(["A/v_1.avi", "b/v_2.avi", "a/v_3.avi"])))
@example(classes=b"1 A\n\xc2\xb2 B", train=b"A/v_1.avi \xc2\xb2", test=b"")  # "\u00b2".isdigit(), int() fails
@example(classes=b"1 A\n2 A", train=b"A/v_1.avi 1", test=b"")  # a class twice
@example(classes=b"1 A", train=b"A/v_1.avi 1\nA/../A/v_1.avi 1\n../videos/A/v_1.avi 1", test=b"")  # one video 3x
def test_ucf101_lists(classes: bytes, train: bytes, test: bytes) -> None:
    with scratch() as (root, annotations, out):
        (annotations / "classInd.txt").write_bytes(classes)
        (annotations / "trainlist01.txt").write_bytes(train)
        (annotations / "testlist01.txt").write_bytes(test)
        listing = import_or_refuse("ucf101", root, annotations, out)
        if listing is not None:  # every list line is a video or a problem
            list_problems = [p for p in listing.problems if not p.file.endswith("classInd.txt")]
            assert len(listing.videos) + len(list_problems) == _data_lines(train) + _data_lines(test)


@PARSER
@given(files=st.dictionaries(st.sampled_from(["brush", "A", "B", "x y", "é"]),
                             text_file(spaced_line, st.sampled_from(["x.avi 1", "x.avi 2", "v_1.avi 1", "v_2.avi 0"])),
                             max_size=3))
def test_hmdb51_split_files(files: dict[str, bytes]) -> None:
    with scratch() as (root, annotations, out):
        for label, raw in files.items():
            (annotations / f"{label}_test_split1.txt").write_bytes(raw)
        import_or_refuse("hmdb51", root, annotations, out)


KINETICS_HEADERS = ["label,youtube_id,time_start,time_end,split", "\ufefflabel,youtube_id,time_start,time_end,split",
                    " label , youtube_id , time_start , time_end , split ", "label,youtube_id,split",
                    "youtube_id,time_start,time_end,split", "label,youtube_id,time_start,time_end,split,extra", ""]


@PARSER
@given(header=st.one_of(st.sampled_from(KINETICS_HEADERS), csv_line),
       rows=text_file(csv_line, st.sampled_from(["A,yt1,1,11,train", "A,yt2,0,10.0,validate", "B,yt1,1,11,test",
                                                 '"A",yt1,1e400,11,train', "A,yt1,nan,11,val"])),
       folder=st.booleans())
@example(header=KINETICS_HEADERS[0], rows=b"A,yt1,1e400,11,train\nA,yt1,-inf,11,train", folder=False)  # OverflowError
@example(header=KINETICS_HEADERS[0], rows=b'"A\nB",yt1,1,11,train\n" A",yt2,0,10,train', folder=False)
@example(header=KINETICS_HEADERS[1], rows=b"A,yt1,1,11,train\xff", folder=True)  # BOM, bad UTF-8
def test_kinetics_csv_rows(header: str, rows: bytes, folder: bool) -> None:
    with scratch() as (root, annotations, out):
        path = annotations / "train.csv"
        path.write_bytes(header.encode("utf-8", "surrogatepass") + b"\n" + rows)
        import_or_refuse("kinetics", root, annotations if folder else path, out)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)
templates = st.sampled_from(["Pushing [something]", "Pushing something", "pushing [SOMETHING]", "Holding", "", "[]"])
labels_json = st.one_of(
    json_value,
    st.dictionaries(st.one_of(templates, st.text(max_size=6)),
                    st.one_of(st.integers(-2, 5), st.sampled_from(["0", "1", "x", "1.5", "²"]), json_value),
                    max_size=4))
ssv2_item = st.one_of(
    json_value,
    st.fixed_dictionaries({"id": st.one_of(st.sampled_from(["7", "8", 7, "9", "", " ", "../7", None]), json_value),
                           "template": st.one_of(templates, json_value)},
                          optional={"label": st.text(max_size=5), "placeholders": json_value}))
ssv2_list = st.one_of(json_value, st.lists(ssv2_item, max_size=6))


@PARSER
@given(labels=labels_json, train=ssv2_list, validation=ssv2_list, garbage=st.sampled_from([None, b"", b"[{", b"\xff\xfe"]))
@example(labels={"Pushing something": math.inf}, train=[], validation=[], garbage=None)  # int(inf)
@example(labels={"Pushing something": "0", "": "1"}, train=[{"id": "7", "template": "Pushing [something]"}],
         validation=[], garbage=None)  # an empty class name
@example(labels={"Pushing something": 0, "Pushing\nsomething": 1}, train=[], validation=[], garbage=None)
@example(labels={"Pushing something": 0}, train=[{"id": "7", "template": "Pushing [something]"}], validation=[],
         garbage=b"\xff\xfe")  # not UTF-8
def test_ssv2_json(labels: object, train: object, validation: object, garbage: bytes | None) -> None:
    with scratch() as (root, annotations, out):
        (annotations / "labels.json").write_text(json.dumps(labels))
        (annotations / "train.json").write_text(json.dumps(train))
        (annotations / "validation.json").write_text(json.dumps(validation))
        if garbage is not None:
            (annotations / "validation.json").write_bytes(garbage)
        import_or_refuse("ssv2", root, annotations, out)


@PARSER
@given(header=st.one_of(st.sampled_from(["path,label,split", "\ufeffpath,label,split", " path , label , split",
                                         "path,label", ""]), csv_line),
       rows=text_file(csv_line, st.sampled_from(["A/v_1.avi,A,train", "v_3.avi,B,test", "B/v_2.avi,B,val",
                                                 '"A/v_1.avi","a\nb",train', "/etc/passwd,A,train"])))
@example(header="path,label,split", rows=b'A/v_1.avi,"a\nb",train\nv_3.avi,B,test')  # a label with a line break
@example(header="\ufeffpath,label,split", rows=b"A/v_1.avi,A,train")  # spreadsheet BOM
@example(header="path,label,split", rows=b"A/v_1.avi,A,train\n/" + b"x" * 300 + b".avi,A,train")  # name too long
def test_generic_csv_rows(header: str, rows: bytes) -> None:
    with scratch() as (root, annotations, out):
        path = annotations / "list.csv"
        path.write_bytes(header.encode("utf-8", "surrogatepass") + b"\n" + rows)
        import_or_refuse("csv", root, path, out)


def _frame_folders(root: Path) -> None:
    """Two stand-in frame folders (importing lists images, it decodes none) beside the videos."""
    for folder, count in (("F/f1", 2), ("F/f2", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(1, count + 1):
            (root / folder / f"img_{i:05d}.jpg").write_bytes(b"jpeg")


@PARSER
@given(lines=text_file(spaced_line, st.sampled_from(["F/f1 2 0", "F/f2 1 1", "F/f1 3 1", "A 1 0", "F/f2 x 1",
                                                      "F/../F/f1 2 0", "F/f2 1 1 1"])))
@example(lines=b"F/f1 2 0\nF/f2 1 1\n/ 1 0\n. 1 1\n.. 2 1")  # the filesystem's root, the root, above it
def test_rawframes_lists(lines: bytes) -> None:
    with scratch() as (root, annotations, out):
        _frame_folders(root)
        (annotations / "train_rawframes.txt").write_bytes(lines)
        listing = import_or_refuse("rawframes", root, annotations / "train_rawframes.txt", out)
        if listing is not None:
            assert len(listing.videos) + len(listing.problems) == _data_lines(lines)


@PARSER
@given(labels=text_file(spaced_line, st.sampled_from(["Holding something", "B", "Putting something, on it"])),
       train=text_file(st.one_of(spaced_line, st.lists(token, max_size=3).map(";".join)),
                       st.sampled_from(["F/f1;Holding something", "F/f2;b", "A;B", "F/f1;Nothing", "x;y;z"])))
def test_ssv1_lists(labels: bytes, train: bytes) -> None:
    with scratch() as (root, annotations, out):
        _frame_folders(root)
        (annotations / "something-something-v1-labels.csv").write_bytes(labels)
        (annotations / "something-something-v1-train.csv").write_bytes(train)
        (annotations / "something-something-v1-validation.csv").write_bytes(b"F/f2;B\n")
        import_or_refuse("ssv1", root, annotations, out)


@functools.cache
def _tiny_video() -> bytes:
    """A real 6-frame H.264 mp4 at 10 fps (the ActivityNet importer decodes what it cuts)."""
    import numpy as np

    from opplan.data.synth import video_codec, write_video

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "v.mp4")
        write_video(path, np.zeros((6, 48, 64, 3), dtype=np.uint8), fps=10, codec=video_codec())
        return path.read_bytes()


seconds = st.one_of(st.sampled_from([0, 0.1, 0.25, 0.6, 1, 5, -1, 1e308, 10**400, math.nan, math.inf, True]),
                    st.floats())
activitynet_note = st.one_of(
    json_value,
    st.fixed_dictionaries({"segment": st.one_of(st.lists(seconds, min_size=2, max_size=2), json_value),
                           "label": st.one_of(st.sampled_from(["A", "B", "Playing guitar"]), token, json_value)}))
activitynet_entry = st.one_of(
    json_value,
    st.fixed_dictionaries({"subset": st.one_of(st.sampled_from(["training", "validation", "testing", "train"]),
                                               json_value)},
                          optional={"annotations": st.one_of(st.lists(activitynet_note, max_size=4), json_value),
                                    "duration": json_value}))
activitynet_json = st.one_of(
    json_value,
    st.fixed_dictionaries({"database": st.one_of(
        st.dictionaries(st.one_of(st.sampled_from(["7", "8", "3", "v_7", "", "../7", "7/.."]), st.text(max_size=4)),
                        activitynet_entry, max_size=4),
        json_value)}))


@PARSER
@given(notes=activitynet_json, garbage=st.sampled_from([None, b"", b"{", b"\xff\xfe"]))
@example(notes={"database": {"7": {"subset": "training", "annotations": [
    {"segment": [0, 1], "label": "../../x"}, {"segment": [0, 1], "label": "x" * 300},
    {"segment": [0.1, 0.2], "label": "/"}, {"segment": [0.1, 0.2], "label": "."}]}}}, garbage=None)  # names
@example(notes={"database": {"7": {"subset": "validation", "annotations": [{"segment": [10**400, 1], "label": "A"}]}}},
         garbage=None)  # float(10**400)
@example(notes={"database": {"7": {"subset": "training", "annotations": [
    {"segment": [0, 1e308], "label": "A"}, {"segment": [1e307, 1e308], "label": "A"},
    {"segment": [0.3, 0.6], "label": "B"}]}}}, garbage=None)  # seconds * fps: inf; 0.3 * 10 > 3
@example(notes={"database": {"7": {"subset": "training",
                                   "annotations": [{"segment": [0.1, 0.1000000001], "label": "A"}]},
                             "7 x": {"subset": "training", "annotations": [{"segment": [0, 1], "label": "A"}]},
                             "\ud800": {"subset": "validation", "annotations": [{"segment": [0, 1], "label": "A"}]}}},
         garbage=None)  # a segment shorter than a frame; an id with a blank; one that is no UTF-8
def test_activitynet_json(notes: object, garbage: bytes | None) -> None:
    with scratch() as (root, annotations, out):
        (root / "v_7.mp4").write_bytes(_tiny_video())  # a real video; 8.webm and v_3.avi are stand-ins
        path = annotations / "activity_net.v1-3.min.json"
        path.write_bytes(json.dumps(notes).encode() if garbage is None else garbage)
        listing = import_or_refuse("activitynet", root, path, out)
        if listing is not None:
            assert {e.path.split("/")[0] for e, _ in listing.videos} <= {p.name for p in (out / "videos").iterdir()}
            assert not list(out.rglob("*.tmp"))


@PARSER
@given(classes=text_file(st.one_of(token, spaced_line), st.sampled_from(["A", "B"])),
       header=st.sampled_from([b"path,label,split\n", b"\xef\xbb\xbfpath,label,split\n", b"path,label\n", b""]),
       rows=text_file(csv_line, st.sampled_from(["v/1.mp4,A,train", "v/2.mp4,B,test", "v/1.mp4,A,test",
                                                 "v/9.mp4,A,train", "v/2.mp4,C,train", "v/2.mp4,B,val"])))
@example(classes=b"A\nB", header=b"path,label,split\n", rows=b"v/1.mp4,A,train\nv/" + b"x" * 300 + b",B,test")
@example(classes=b"A\xff", header=b"path,label,split\n", rows=b"v/1.mp4,A,train")
@example(classes=b"A", header=b"\xef\xbb\xbfpath,label,split\n", rows=b"v/1.mp4,A,train\xff")
def test_manifest_rows(classes: bytes, header: bytes, rows: bytes) -> None:
    with scratch() as (_, _, folder):
        (folder / "v").mkdir(parents=True)
        for name in ("1.mp4", "2.mp4"):
            (folder / "v" / name).write_bytes(b"video")
        (folder / "classes.txt").write_bytes(classes)
        (folder / "manifest.csv").write_bytes(header + rows)
        try:
            entries, names, problems = read_manifest(folder)
        except DataError as exc:
            assert str(exc)
            return
        assert len(names) == len(set(names)) and all(n and n == n.strip() for n in names)
        assert {e.label for e in entries} <= set(names) and {e.split for e in entries} <= {"train", "test"}
        assert all((folder / e.path).is_file() for e in entries)
        assert len({e.path for e in entries}) == len(entries)
        assert all(str(folder / "manifest.csv") == p.file and p.line >= 2 for p in problems)
