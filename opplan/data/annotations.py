"""Import public annotation formats into a normalised dataset folder (docs/design.md §1 step 1).

Each reader takes the files exactly as the dataset ships them and returns the
classes, the usable videos and the problems (missing video, unknown label,
malformed line: file, line and reason). A bad line never stops an import; only a
structural problem (a missing or unreadable annotation file, one that is not UTF-8, not
CSV or not JSON, a class list that cannot be written to ``classes.txt``, no usable video
at all) raises :class:`AnnotationFileError`, an :class:`~opplan.errors.AnnotationError`.
Nothing else escapes, whatever the lines hold (``tests/test_fuzz.py``).

Formats (``PATH`` is ``--annotations``, ``ROOT`` is ``--root``):

- ``ucf101``: ``PATH/classInd.txt`` ("1 ApplyEyeMakeup"), ``trainlist0N.txt``
  ("ApplyEyeMakeup/v_X.avi 1"), ``testlist0N.txt`` ("ApplyEyeMakeup/v_X.avi");
  videos ``ROOT/<Class>/v_X.avi``.
- ``hmdb51``: ``PATH/<class>_test_split<N>.txt`` with "video.avi 0|1|2" (1 train,
  2 test, 0 unused); videos ``ROOT/<class>/video.avi``.
- ``kinetics``: a CSV ``label,youtube_id,time_start,time_end,split`` (or a folder of
  them; files without a ``label`` column, like the unlabelled test list, are
  skipped); videos ``ROOT/<split>/<label>/<id>_<start:06d>_<end:06d>.<ext>`` or flat
  ``ROOT/<id>_<start:06d>_<end:06d>.<ext>``, any video extension. Split ``train`` is
  train; ``validate``/``val``/``validation``/``test`` are test.
- ``ssv2``: ``PATH/labels.json`` ({"template": "index"}), ``train.json`` and
  ``validation.json`` (lists of {"id", "label", "template", "placeholders"}); the class
  is the template without "[" and "]"; videos ``ROOT/<id>.webm``. For JSON files the
  reported "line" is the entry number in the list.
- ``csv``: ``path,label,split`` with a header; ``path`` relative to ``ROOT``.
- ``list``: ``path label`` lines (MMAction2/PySlowFast video lists), see :func:`read_list`.

Frame folders (a folder of images per video, :mod:`opplan.data.frames`) are linked or copied
under ``videos/`` like video files, and ``prepare`` reads them. A folder without frames is a
problem; a frame count that disagrees with the list is a warning (``import_warnings.csv``:
the video is kept and what is on disk is used).

- ``rawframes``: MMAction2's rawframe lists, ``frame_dir total_frames label`` per line (label:
  a class index): one file, or a folder of lists named like those of ``list``; frames
  ``ROOT/<frame_dir>/``.
- ``ssv1``: Something-Something V1 as 20BN shipped it: ``PATH/something-something-v1-labels.csv``
  (one class name a line, in index order), ``...-train.csv`` and ``...-validation.csv``
  (``id;class name`` lines; the unlabelled ``...-test.csv`` is not read); frames
  ``ROOT/<id>/00001.jpg``, ... (the ``20bn-something-something-v1`` folder).

Untrimmed videos with labelled segments are cut into one frame folder per segment at import:

- ``activitynet``: ActivityNet 1.3's ``PATH`` = ``activity_net.v1-3.min.json``
  (``{"database": {"<youtube id>": {"subset", "duration", "annotations": [{"segment":
  [start_s, end_s], "label"}, ...]}}}``); videos ``ROOT/v_<id>.<ext>`` or ``ROOT/<id>.<ext>``
  (any video extension, in any subfolder). Subset ``training`` is train, ``validation`` test;
  ``testing`` (unlabelled) is not read. The classes are the labels that occur, sorted. Each
  segment becomes the frame folder ``videos/<label>/<id>_<k>/img_00001.jpg, ...`` (``k``: the
  segment's number in the entry, from 1; ``/`` and control characters in a label or id become
  ``_`` in the folder name, the manifest keeps the label), decoded with decord (PyAV from the start again
  where decord fails, as ``prepare`` does) at the video's own size: what decodes counts,
  not ``duration`` or the header's frame count. Seconds become frames at the reader's average
  rate (frames ``floor(start * fps)`` to ``ceil(end * fps) - 1``); a segment reaching past
  the last frame that decodes (or before 0 s) is clamped, one with fewer than
  :data:`SHORT_SEGMENT` frames is kept, each with a warning (``import_warnings.csv``). For the
  JSON, the reported "line" is the entry's number in ``database`` and the reason names the id
  and the segment. Disk: the frames are JPEG (quality :data:`JPEG_QUALITY`) at the video's
  size, roughly 40 KiB a frame at 360p and 150 KiB at 720p, so some 4-16 GiB per hour of
  segments at 30 fps, many times the videos' own size (ActivityNet 1.3's training and
  validation segments last a few hundred hours: budget one to several TiB, or downscale the
  videos to the short side ``prepare`` keeps, 256 in the ``activitynet`` preset, before
  importing); ``--copy`` and ``--link`` make no difference. Extraction decodes every frame up
  to a video's last segment end, one video at a time in one process (progress logged every
  :data:`PROGRESS_SECONDS` s with rate and ETA); a re-import extracts again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opplan.data.frames import FrameFolderError, frame_files
from opplan.data.manifest import (
    Entry,
    Problem,
    decode_text,
    is_file,
    is_utf8,
    label_problem,
    write_dataset,
    write_problems,
)
from opplan.errors import AnnotationError, DataError
from opplan.fileio import atomic_open

log = logging.getLogger(__name__)

FORMATS = ("ucf101", "hmdb51", "kinetics", "ssv2", "csv", "list", "rawframes", "ssv1", "activitynet")
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)
TEST_SPLITS = frozenset({"test", "val", "validate", "validation"})
REPORT = "import_report.csv"
WARNINGS = "import_warnings.csv"
VIDEOS_DIR = "videos"


class AnnotationFileError(AnnotationError):
    """A whole annotation file (or the import) is unusable, not one of its lines."""

    def __init__(self, path: object, message: str) -> None:
        self.path, self.line = str(path), 0
        DataError.__init__(self, f"{path}: {message}")


@dataclass
class Listing:
    """What a reader found: classes (index order), usable videos and problems.

    ``videos`` pairs an :class:`Entry` whose ``path`` is relative to the video root
    with the video's absolute location.
    """

    classes: list[str]
    videos: list[tuple[Entry, Path]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    """Lines whose video was kept although something about them is off (``import_warnings.csv``)."""
    segments: list[Segment] = field(default_factory=list)
    """Segments of untrimmed videos still to be cut into frame folders (``activitynet``)."""
    _seen: set[Path] = field(default_factory=set, repr=False)
    _rels: set[str] = field(default_factory=set, repr=False)

    def add(self, root: Path, found: Path | None, label: str, split: str, where: tuple[Path, int], wanted: str) -> None:
        """Record one annotated video, or the reason it cannot be used.

        The video keeps its path relative to ``root``; one outside ``root`` (an absolute
        path, or ``..`` in the annotation) goes to ``external/<name>``, never above ``out``.
        """
        file, line = str(where[0]), where[1]
        if found is not None:
            found = Path(os.path.normpath(found))  # "a/../b" -> "b": one video, one name, no escape via ".."
        rel = "" if found is None else (found.relative_to(root).as_posix() if found.is_relative_to(root)
                                        else f"external/{found.name}")
        real = None if found is None else Path(os.path.realpath(found))  # one video, however it is reached
        if found is None:
            self.problems.append(Problem(file, line, f"video {wanted} not found under {root}"))
        elif not is_utf8(rel):
            self.problems.append(Problem(file, line, f"video file name {rel!r} is not UTF-8; rename the file"))
        elif real in self._seen:
            self.problems.append(Problem(file, line, f"video {wanted} is listed more than once"))
        elif rel in self._rels:
            self.problems.append(Problem(file, line, f"video {found} would be imported as {rel}, "
                                                     "the name of another video"))
        else:
            self._seen.add(real)
            self._rels.add(rel)
            self.videos.append((Entry(rel, label, split, line), found))

    def bad(self, where: tuple[Path, int], reason: str) -> None:
        self.problems.append(Problem(str(where[0]), where[1], reason))

    def warn(self, where: tuple[Path, int], reason: str) -> None:
        self.warnings.append(Problem(str(where[0]), where[1], reason))


class _VideoIndex:
    """Video files under a root by file stem, built on first use (one walk)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_stem: dict[str, list[Path]] | None = None

    def find(self, stem: str, prefer_dir: str | None = None) -> Path | None:
        if self._by_stem is None:
            self._by_stem = defaultdict(list)
            visited: set[str] = set()
            for folder, subfolders, names in os.walk(self.root, followlinks=True):
                real = os.path.realpath(folder)
                if real in visited:  # a symlink loop, or a second link to a folder seen already
                    subfolders[:] = []
                    continue
                visited.add(real)
                subfolders.sort()
                for name in sorted(names):
                    path = Path(folder, name)
                    if path.suffix.lower() in VIDEO_EXTENSIONS and is_file(path):
                        self._by_stem[path.stem].append(path)
        found = sorted(self._by_stem.get(stem, []))
        if prefer_dir is not None:
            found.sort(key=lambda p: _norm(p.parent.name) != _norm(prefer_dir))
        return found[0] if found else None


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().strip('"')).lower()


def _locate(root: Path, rel: str, label: str | None = None) -> Path | None:
    """``ROOT/rel``, else ``ROOT/<label>/<basename>``, else ``ROOT/<basename>`` (flat layouts)."""
    name = Path(rel).name
    for candidate in (root / rel, *([root / label / name] if label else []), root / name):
        if is_file(candidate):
            return candidate
    return None


def _read_text(path: Path) -> str:
    """The UTF-8 text of an annotation file; missing, unreadable or not UTF-8 is structural."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationFileError(path, "annotation file not found") from None
    except OSError as exc:
        raise AnnotationFileError(path, f"cannot read the annotation file: {exc.strerror or exc}") from None
    try:
        return decode_text(raw)
    except ValueError as exc:
        raise AnnotationFileError(path, str(exc)) from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank stripped lines with 1-based numbers; a missing file is structural."""
    text = _read_text(path)
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """CSV rows of ``path`` with the line each starts on; a CSV syntax error is structural."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows, line = [], 1
    try:
        for row in reader:
            rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise AnnotationFileError(path, f"line {reader.line_num}: not valid CSV: {exc}") from None
    return rows


def _number(text: str) -> int | None:
    """``text`` as a non-negative integer when it is plain ASCII digits (not "²", "1.0", "-1")."""
    return int(text) if re.fullmatch(r"[0-9]+", text) else None


# --- UCF101 ----------------------------------------------------------------------------


def read_ucf101(root: Path, annotations: Path, split: int = 1) -> Listing:
    class_file = annotations / "classInd.txt"
    listing = Listing(classes=[])
    for line, text in _lines(class_file):
        parts = text.split()
        if len(parts) != 2 or _number(parts[0]) != len(listing.classes) + 1:
            listing.bad((class_file, line), f"expected '{len(listing.classes) + 1} ClassName', got {text!r}")
            continue
        listing.classes.append(parts[1])
    if not listing.classes:
        raise AnnotationFileError(class_file, "no classes (lines '1 ClassName')")
    by_name = {name.lower(): name for name in listing.classes}
    for kind in ("train", "test"):
        list_file = annotations / f"{kind}list{split:02d}.txt"
        for line, text in _lines(list_file):
            parts = text.split()
            rel = parts[0]
            number = _number(parts[1]) if len(parts) == 2 else None
            if number is not None:  # trainlist: "Class/v_X.avi N"
                label = listing.classes[number - 1] if 1 <= number <= len(listing.classes) else None
                reason = f"label {number} is not in classInd.txt (1..{len(listing.classes)})"
            elif len(parts) == 1 and "/" in rel:  # testlist: "Class/v_X.avi", the class is the folder
                label = by_name.get(rel.split("/")[0].lower())
                reason = f"class folder {rel.split('/')[0]!r} is not in classInd.txt"
            else:
                label, reason = None, f"expected 'Class/video.avi{' N' if kind == 'train' else ''}', got {text!r}"
            if label is None:
                listing.bad((list_file, line), reason)
                continue
            listing.add(root, _locate(root, rel, label), label, kind, (list_file, line), rel)
    return listing


# --- HMDB51 ----------------------------------------------------------------------------


def read_hmdb51(root: Path, annotations: Path, split: int = 1) -> Listing:
    suffix = f"_test_split{split}.txt"
    files = sorted(annotations.glob(f"*{suffix}")) if annotations.is_dir() else []
    if not files:
        raise AnnotationFileError(annotations, f"no HMDB51 split files '<class>{suffix}' here")
    listing = Listing(classes=sorted(f.name[: -len(suffix)] for f in files))
    for split_file in files:
        label = split_file.name[: -len(suffix)]
        for line, text in _lines(split_file):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                listing.bad((split_file, line), f"expected 'video.avi 0|1|2', got {text!r}")
                continue
            if parts[1] == "0":  # not used in this split
                continue
            found = _locate(root, parts[0], label)
            listing.add(root, found, label, "train" if parts[1] == "1" else "test", (split_file, line), parts[0])
    return listing


# --- Kinetics --------------------------------------------------------------------------

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def read_kinetics(root: Path, annotations: Path, split: int = 1) -> Listing:
    files = sorted(annotations.glob("*.csv")) if annotations.is_dir() else [annotations]
    if not files or not files[0].exists():
        raise AnnotationFileError(annotations, "no Kinetics CSV file (label,youtube_id,time_start,time_end,split)")
    rows: list[tuple[Path, int, dict[str, str]]] = []
    for csv_file in files:
        table = [(line, cells) for line, cells in _csv_rows(csv_file) if any(c.strip() for c in cells)]
        header = [c.strip() for c in table[0][1]] if table else []
        if "label" not in header and len(files) > 1:
            log.info("import: skipping %s (no label column: an unlabelled test list)", csv_file)
            continue
        missing = [c for c in KINETICS_COLUMNS if c not in header]
        if missing:
            raise AnnotationFileError(csv_file, f"header lacks {', '.join(missing)} (got {','.join(header)})")
        column = {name: header.index(name) for name in KINETICS_COLUMNS}
        for line, cells in table[1:]:
            if len(cells) <= max(column.values()):
                rows.append((csv_file, line, {}))  # reported below as malformed
                continue
            rows.append((csv_file, line, {name: cells[i].strip() for name, i in column.items()}))
    listing = Listing(classes=sorted({row["label"] for _, _, row in rows if row and not label_problem(row["label"])}))
    index = _VideoIndex(root)
    for csv_file, line, row in rows:
        where = (csv_file, line)
        if not row:
            listing.bad(where, f"too few columns for the header {','.join(header)}")
            continue
        try:
            label, stem = row["label"], _kinetics_stem(row)
        except (ValueError, OverflowError) as exc:
            listing.bad(where, f"malformed row ({exc}): {row!r}"[:300])
            continue
        kind = row["split"].lower()
        if label_problem(label) or kind not in TEST_SPLITS | {"train"}:
            listing.bad(where, f"{label_problem(label) or 'unknown split'} (label {label!r}, split {row['split']!r}; "
                               "splits: train, validate, val, test)")
            continue
        listing.add(root, index.find(stem, prefer_dir=label), label, "train" if kind == "train" else "test", where,
                    f"{stem}.*")
    return listing


def _kinetics_stem(row: dict[str, str]) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>`` as the Kinetics downloaders name files.

    Raises ValueError (or OverflowError for an infinite time) on a malformed row."""
    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    youtube_id = row["youtube_id"]
    if not youtube_id:
        raise ValueError("empty youtube_id")
    return f"{youtube_id}_{start:06d}_{end:06d}"


# --- Something-Something V2 ------------------------------------------------------------


def read_ssv2(root: Path, annotations: Path, split: int = 1) -> Listing:
    labels_file = annotations / "labels.json"
    labels = _load_json(labels_file)
    if not isinstance(labels, dict) or not labels:
        raise AnnotationFileError(labels_file, 'expected {"template": "index", ...}')
    try:
        classes = [name for name, _ in sorted(labels.items(), key=lambda kv: _class_index(kv[1]))]
    except (TypeError, ValueError, OverflowError):
        raise AnnotationFileError(labels_file, "class indices must be integers") from None
    listing = Listing(classes=classes)
    by_text = {name.lower(): name for name in classes}
    index = _VideoIndex(root)
    for kind, name in (("train", "train.json"), ("test", "validation.json")):
        list_file = annotations / name
        items = _load_json(list_file)
        if not isinstance(items, list):
            raise AnnotationFileError(list_file, "expected a list of {id, label, template, placeholders}")
        for number, item in enumerate(items, start=1):
            where = (list_file, number)
            if not isinstance(item, dict) or not str(item.get("id", "")).strip() or "template" not in item:
                listing.bad(where, f"entry {number} lacks 'id' or 'template': {item!r}"[:200])
                continue
            text = str(item["template"]).replace("[", "").replace("]", "")
            label = by_text.get(text.lower())
            if label is None:
                listing.bad(where, f"template {text!r} is not in labels.json")
                continue
            video_id = str(item["id"]).strip()
            found = _locate(root, f"{video_id}.webm") or index.find(video_id)
            listing.add(root, found, label, kind, where, f"{video_id}.webm")
    return listing


def _class_index(value: object) -> int:
    """A labels.json index: an integer or a string of digits ("12"), not a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"class index {value!r}")
    number = value if isinstance(value, int) else _number(value.strip())
    if number is None:
        raise ValueError(f"class index {value!r}")
    return number


def _load_json(path: Path) -> object:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(path, f"not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except RecursionError:
        raise AnnotationFileError(path, "not valid JSON: nested too deeply") from None


# --- generic CSV -----------------------------------------------------------------------


def read_csv(root: Path, annotations: Path, split: int = 1) -> Listing:
    if not is_file(annotations):
        raise AnnotationFileError(annotations, "annotation file not found (a CSV path,label,split)")
    rows = [(line, row) for line, row in _csv_rows(annotations) if any(c.strip() for c in row)]
    if not rows or [c.strip() for c in rows[0][1]] != ["path", "label", "split"]:
        got = ",".join(rows[0][1]) if rows else "(empty)"
        raise AnnotationFileError(annotations, f"header must be path,label,split, got {got!r}")
    good = [r for _, r in rows[1:] if len(r) == 3 and all(c.strip() for c in r) and not label_problem(r[1].strip())]
    listing = Listing(classes=sorted({r[1].strip() for r in good}))
    for line, row in rows[1:]:
        if len(row) != 3 or not all(c.strip() for c in row):
            listing.bad((annotations, line), f"expected path,label,split, got {','.join(row)!r}"[:300])
            continue
        rel, label, kind = (c.strip() for c in row)
        if label_problem(label):
            listing.bad((annotations, line), label_problem(label))
            continue
        if kind.lower() not in TEST_SPLITS | {"train"}:
            listing.bad((annotations, line), f"split {kind!r} is not train or test (val/validate count as test)")
            continue
        found = _locate(root, rel) if not Path(rel).is_absolute() else (Path(rel) if is_file(Path(rel)) else None)
        listing.add(root, found, label, "train" if kind.lower() == "train" else "test", (annotations, line), rel)
    return listing


def read_list(root: Path, annotations: Path, split: int = 1) -> Listing:
    """MMAction2/PySlowFast video lists, ``path label`` per line (label: a class index): one
    file, or a folder of ``*.txt``/``*.csv`` lists; a list whose name says ``train`` is the
    training set, the others (val, test) the held-out set. Classes are the indices as names."""
    files = list_files(annotations, "lines 'path label'")
    rows = []
    for path in files:
        kind = split_of(path)
        for line, text in _lines(path):
            cells = text.replace(",", " ").split()
            label = _number(cells[-1]) if len(cells) == 2 else None
            rows.append((path, line, kind, cells, label))
    listing = Listing(classes=[str(i) for i in sorted({r[4] for r in rows if r[4] is not None})])
    for path, line, kind, cells, label in rows:
        if len(cells) == 3 and _number(cells[1]) is not None:
            listing.bad((path, line), "a rawframes line (frame_dir total_frames label): import this list with "
                                      "--format rawframes")
        elif label is None:
            listing.bad((path, line), f"expected 'path label' (label a class index), got {' '.join(cells)!r}"[:300])
        else:
            found = _locate(root, cells[0]) if not Path(cells[0]).is_absolute() else (
                Path(cells[0]) if is_file(Path(cells[0])) else None)
            listing.add(root, found, str(label), kind, (path, line), cells[0])
    return listing


def list_files(annotations: Path, what: str) -> list[Path]:
    """One list file, or the ``*.txt``/``*.csv`` lists of a folder, in name order."""
    files = sorted(p for p in annotations.iterdir() if p.suffix in (".txt", ".csv")) if annotations.is_dir() \
        else [annotations]
    if not files or not is_file(files[0]):
        raise AnnotationFileError(annotations, f"no list file ({what})")
    return files


def split_of(list_file: Path) -> str:
    """``train`` for a list whose name says so, else ``test`` (val and test lists: held out)."""
    return "train" if "train" in list_file.name.lower() else "test"


# --- frame folders (MMAction2 rawframes, Something-Something V1) ------------------------


def _folder(root: Path, rel: str) -> Path | None:
    """``ROOT/rel`` (or ``rel`` when absolute) when it is a folder; None otherwise."""
    path = Path(rel) if os.path.isabs(rel) else root / rel
    try:
        return path if path.is_dir() else None
    except (OSError, ValueError):
        return None


def _add_folder(listing: Listing, root: Path, rel: str, label: str, split: str, where: tuple[Path, int],
                declared: int | None = None) -> None:
    """Add the frame folder ``rel``, or the reason it cannot be used; warn when it holds
    other than ``declared`` frames (the count on disk is the one ``prepare`` uses)."""
    found = _folder(root, rel)
    if found is None:
        listing.bad(where, f"frame folder {rel} not found under {root}")
        return
    try:
        count = len(frame_files(found))
    except FrameFolderError as exc:
        listing.bad(where, f"frame folder {rel}: {exc}")
        return
    if declared is not None and declared != count:
        listing.warn(where, f"frame folder {rel} holds {count} frames, the list says {declared}; "
                            f"the {count} on disk are used")
    listing.add(root, found, label, split, where, rel)


def read_rawframes(root: Path, annotations: Path, split: int = 1) -> Listing:
    rows = []
    for path in list_files(annotations, "lines 'frame_dir total_frames label'"):
        for line, text in _lines(path):
            cells = text.split()
            numbers = [_number(c) for c in cells[1:]] if len(cells) == 3 else [None]
            rows.append((path, line, cells, numbers))
    labels = {numbers[1] for *_, numbers in rows if None not in numbers}
    listing = Listing(classes=[str(i) for i in sorted(labels)])
    for path, line, cells, numbers in rows:
        if None in numbers:
            listing.bad((path, line), f"expected 'frame_dir total_frames label' (two whole numbers), "
                                      f"got {' '.join(cells)!r}"[:300])
            continue
        _add_folder(listing, root, cells[0], str(numbers[1]), split_of(path), (path, line), declared=numbers[0])
    return listing


SSV1_LABELS = "something-something-v1-labels.csv"
SSV1_LISTS = (("train", "something-something-v1-train.csv"), ("test", "something-something-v1-validation.csv"))


def read_ssv1(root: Path, annotations: Path, split: int = 1) -> Listing:
    folder = annotations if annotations.is_dir() else annotations.parent
    labels_file = folder / SSV1_LABELS
    listing = Listing(classes=[text for _, text in _lines(labels_file)])
    if not listing.classes:
        raise AnnotationFileError(labels_file, "no classes (one class name a line)")
    by_name = {_fold(name): name for name in listing.classes}
    for kind, name in SSV1_LISTS:
        list_file = folder / name
        for line, text in _lines(list_file):
            video_id, _, class_name = (part.strip() for part in text.partition(";"))
            if not video_id or not class_name:
                listing.bad((list_file, line), f"expected 'id;class name', got {text!r}"[:300])
            elif _fold(class_name) not in by_name:
                listing.bad((list_file, line), f"class {class_name!r} is not in {SSV1_LABELS}"[:300])
            else:
                _add_folder(listing, root, video_id, by_name[_fold(class_name)], kind, (list_file, line))
    return listing


def _fold(name: str) -> str:
    """A class name compared without case or repeated blanks."""
    return re.sub(r"\s+", " ", name).lower()


# --- ActivityNet: labelled segments of untrimmed videos, cut into frame folders ------------

ACTIVITYNET_SUBSETS = {"training": "train", "validation": "test"}
"""ActivityNet subsets read, and the split each becomes; ``testing`` has no labels and is skipped."""
SHORT_SEGMENT = 4
"""A segment that gives fewer frames than this is kept, with a warning (shorter than most clips)."""
JPEG_QUALITY = 90
PROGRESS_SECONDS = 10.0
FRAMES_BOUND = 1e15
"""Frame indices beyond any video (``[0, 1e308]`` s, inf frames, reads as the whole video)."""
FRAME_NAME = "img_{:05d}.jpg"
"""MMAction2's RGB frame names (:data:`opplan.data.frames.RGB_SERIES`), numbered from 1."""


@dataclass(frozen=True)
class Segment:
    """Seconds ``start`` to ``end`` of ``video``, to become the frame folder ``videos/<entry.path>``."""

    entry: Entry
    video: Path
    start: float
    end: float
    video_id: str
    number: int
    """The segment's number in its database entry, from 1."""
    where: tuple[Path, int]

    @property
    def name(self) -> str:
        """How problems and warnings name it."""
        return f"{self.video_id} segment {self.number}"


def read_activitynet(root: Path, annotations: Path, split: int = 1) -> Listing:
    """The segments of ``activity_net.v1-3.min.json`` whose video is under ``root``; they are
    cut into frame folders by :func:`import_dataset` (:func:`cut_segments`)."""
    data = _load_json(annotations)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationFileError(annotations, 'expected {"database": {"<youtube id>": {"subset": ..., '
                                               '"annotations": [{"segment": [start, end], "label": ...}]}}}')
    listing, index, labels = Listing(classes=[]), _VideoIndex(root), set()
    for number, (video_id, item) in enumerate(database.items(), start=1):
        where = (annotations, number)
        found = _activitynet_entry(listing, where, video_id, item)
        if not found:
            continue
        labels |= {label for _, label, *_ in found}
        video = index.find(f"v_{video_id}") or index.find(video_id)
        if video is None:
            listing.bad(where, f"{video_id}: video v_{video_id}.<ext> (or {video_id}.<ext>) not found under {root}; "
                               f"its {len(found)} segment(s) are not imported")
            continue
        for k, label, kind, start, end in found:
            rel = f"{_name_part(label)}/{_name_part(video_id)}_{k}"
            if rel in listing._rels:
                listing.bad(where, f"{video_id} segment {k}: would be written as {rel}, the folder of another segment")
                continue
            listing._rels.add(rel)
            listing.segments.append(Segment(Entry(rel, label, kind, number), video, start, end, video_id, k, where))
    listing.classes = sorted(labels)
    return listing


def _activitynet_entry(listing: Listing, where: tuple[Path, int], video_id: str,
                       item: object) -> list[tuple[int, str, str, float, float]]:
    """``(k, label, split, start, end)`` of each well-formed segment of one database entry
    (``k`` from 1); the others, and a malformed entry, are problems. A testing entry gives none."""
    if not isinstance(item, dict):
        listing.bad(where, f"{video_id}: the entry is not an object: {item!r}"[:300])
        return []
    if not video_id.strip():
        listing.bad(where, "an entry with an empty video id")
        return []
    if "subset" not in item:
        listing.bad(where, f"{video_id}: the entry lacks 'subset'")
        return []
    subset = item["subset"]
    if subset == "testing":
        return []
    kind = ACTIVITYNET_SUBSETS.get(subset) if isinstance(subset, str) else None
    if kind is None:
        listing.bad(where, f"{video_id}: subset {subset!r} is not training, validation or testing"[:300])
        return []
    if "annotations" not in item:
        listing.bad(where, f"{video_id}: the entry lacks 'annotations'")
        return []
    notes = item["annotations"]
    if not isinstance(notes, list) or not notes:
        what = "an empty list" if isinstance(notes, list) else repr(notes)
        listing.bad(where, f"{video_id}: 'annotations' is {what}, not a list of {{segment, label}}"[:300])
        return []
    found = []
    for k, note in enumerate(notes, start=1):
        reason, label, times = _activitynet_segment(note)
        if reason:
            listing.bad(where, f"{video_id} segment {k}: {reason}"[:300])
        else:
            found.append((k, label, kind, *times))
    return found


def _activitynet_segment(note: object) -> tuple[str | None, str, tuple[float, float]]:
    """``(problem, label, (start, end))`` of one ``{"segment": [start, end], "label": ...}``."""
    if not isinstance(note, dict) or "segment" not in note or "label" not in note:
        return f"expected {{'segment': [start, end], 'label': ...}}, got {note!r}", "", (0.0, 0.0)
    label, segment = note["label"], note["segment"]
    if not isinstance(label, str) or label_problem(label):
        return (label_problem(label) if isinstance(label, str) else f"label {label!r} is not text"), "", (0.0, 0.0)
    times = [_seconds(t) for t in segment] if isinstance(segment, list) and len(segment) == 2 else []
    if len(times) != 2 or not all(t is not None and math.isfinite(t) for t in times):
        return f"segment {segment!r} is not [start_s, end_s] (two numbers)", "", (0.0, 0.0)
    if times[1] <= times[0] or times[1] <= 0:
        where = "at or before its start" if times[1] <= times[0] else "before the video starts"
        return f"segment [{times[0]:g}, {times[1]:g}] s ends {where}", "", (0.0, 0.0)
    return None, label, (times[0], times[1])


def _seconds(value: object) -> float | None:
    """A JSON number as seconds (not a bool, not an integer too large for a float), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _name_part(text: str, limit: int = 100) -> str:
    """``text`` as one file name: path separators, control characters and lone surrogates
    become ``_``, at most ``limit`` bytes; never empty, ``.`` or ``..``."""
    name = "".join("_" if ch in "/\\" or not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    name = name.strip().encode()[:limit].decode("utf-8", "ignore").strip()
    return name if name.strip(".") else "_"


def cut_segments(listing: Listing, videos: Path) -> None:
    """Decode each video of ``listing.segments`` once and write its segments as frame folders
    under ``videos``; each written folder becomes one of ``listing.videos``, each failure a
    problem, each clamped or short segment a warning. Progress is logged every few seconds."""
    by_entry: dict[tuple[Path, int], list[Segment]] = defaultdict(list)
    for segment in listing.segments:
        by_entry[segment.where].append(segment)
    total = len(listing.segments)
    log.info("import: cutting %d segments of %d videos into JPEG frame folders under %s", total, len(by_entry), videos)
    start = last = time.perf_counter()
    done = 0
    for segments in by_entry.values():
        _cut_video(listing, segments, videos)
        done += len(segments)
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS or done == total:
            rate = done / (now - start) if now > start else float("inf")
            log.info("import: %d/%d segments cut, %.2f segments/s, ETA %.0f s", done, total, rate,
                     (total - done) / rate if rate > 0 else 0.0)
            last = now
    listing.segments = []
    listing.problems.sort(key=lambda p: p.line)
    listing.warnings.sort(key=lambda p: p.line)


def _cut_video(listing: Listing, segments: list[Segment], videos: Path) -> None:
    """The segments of one video: decord first, PyAV from the start where decord fails."""
    from opplan.data.prepare import _library_stderr_to_debug, unusable_reason

    video, where = segments[0].video, segments[0].where
    lost = f"its {len(segments)} segment(s) are not imported"
    reason = unusable_reason(str(video))
    if reason is not None:
        listing.bad(where, f"{segments[0].video_id}: video {video.name}: {reason}; {lost}")
        return
    try:
        try:
            with _library_stderr_to_debug(str(video)):
                count, rate = _write_segments(_decord_frames(video), segments, videos)
        except _DecordFailed as exc:
            log.debug("%s: decord failed (%s); decoding it with PyAV", video, exc)
            count, rate = _write_segments(_pyav_frames(video), segments, videos)
    except OSError as exc:  # writing the frames, not decoding them
        _discard(segments, videos)
        raise DataError(f"{videos}: cannot write the frames of {video}: {exc.strerror or exc}") from None
    if count == 0 or not (math.isfinite(rate) and rate > 0):
        why = "zero frames decode" if count == 0 else f"no usable frame rate ({rate!r})"
        listing.bad(where, f"{segments[0].video_id}: video {video.name}: {why}; {lost}")
        _discard(segments, videos)
        return
    for segment in segments:
        _keep_segment(listing, segment, videos, count, rate)


def _span(segment: Segment, rate: float) -> tuple[int, int]:
    """Frames ``[first, stop)`` shown during the segment at ``rate`` frames/s (frame ``i`` is
    shown from ``i / rate`` s to ``(i + 1) / rate`` s, give or take a rounding error of the
    JSON's decimals), at least the frame shown at its start; ``(0, 0)`` for an unusable rate."""
    if not (math.isfinite(rate) and rate > 0):
        return 0, 0
    start, end = (min(max(t * rate, 0.0), FRAMES_BOUND) for t in (segment.start, segment.end))
    first = math.floor(start + 1e-6)
    return first, max(first + 1, math.ceil(end - 1e-6))


def _staging(segment: Segment, videos: Path) -> Path:
    target = videos / segment.entry.path
    return target.with_name(f".{target.name}.cut.tmp")


def _write_segments(frames: Iterator[tuple[float, np.ndarray]], segments: list[Segment],
                    videos: Path) -> tuple[int, float]:
    """Write each frame inside a segment to the segment's staging folder, numbered from 1;
    stop after the last segment's last frame. ``(frames decoded, frame rate)``."""
    from PIL import Image  # here: only an activitynet import needs it

    _discard(segments, videos)
    count, rate, spans, last = 0, 0.0, [], 0
    for index, (rate, frame) in enumerate(frames):
        if index == 0:
            spans = [_span(s, rate) for s in segments]
            last = max(stop for _, stop in spans)
        for segment, (first, stop) in zip(segments, spans):
            if first <= index < stop:
                folder = _staging(segment, videos)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame).save(folder / FRAME_NAME.format(index - first + 1), quality=JPEG_QUALITY)
        count = index + 1
        if count >= last:
            break
    return count, rate


class _DecordFailed(Exception):
    """decord could not decode a video to its end (it is decoded again with PyAV)."""


def _decord_frames(video: Path) -> Iterator[tuple[float, np.ndarray]]:
    """``(average frame rate, frame)`` of ``video`` at its own size, decoded with decord;
    :class:`_DecordFailed` on its first error, or on a frame that is not (H, W, 3): decord
    gives (H, W, 4) for some sizes (48 x 32)."""
    try:
        import decord  # here, not at import time: only an activitynet import needs it

        decord.logging.set_level(decord.logging.QUIET)
        reader = decord.VideoReader(str(video), num_threads=1)
        rate = float(reader.get_avg_fps())
        while True:
            try:
                frame = reader.next().asnumpy()
            except StopIteration:
                return
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"a frame of shape {frame.shape}, not (height, width, 3)")
            yield rate, frame
    except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError/DECORDError/IndexError alike
        raise _DecordFailed(str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__) \
            from None


def _pyav_frames(video: Path) -> Iterator[tuple[float, np.ndarray]]:
    """``(average frame rate, frame)`` of ``video`` decoded with PyAV, one packet at a time, up
    to its first undecodable packet (the same frames every run)."""
    import av  # here, not at import time: only an activitynet import needs it

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            rate = float(stream.average_rate or 0)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    yield rate, frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError, ValueError) as exc:  # the first corrupt packet ends the video
        log.debug("%s: decoding stopped: %s", video, str(exc).strip()[:200])


def _keep_segment(listing: Listing, segment: Segment, videos: Path, count: int, rate: float) -> None:
    """Put the segment's staged frames in place and list it, or report why it has none."""
    first, stop = _span(segment, rate)
    length = f"the video decodes {count} frames at {rate:.3g} fps, {count / rate:.2f} s"
    span = f"[{segment.start:g}, {segment.end:g}] s"
    if first >= count:
        listing.bad(segment.where, f"{segment.name} {span} starts after the video's end ({length})")
        _discard([segment], videos)
        return
    frames = min(stop, count) - first
    if stop > count or segment.start < 0:
        end = min(segment.end, count / rate)
        listing.warn(segment.where, f"{segment.name} {span} reaches outside the video ({length}); "
                                    f"clamped to [{max(segment.start, 0.0):g}, {end:g}] s, {frames} frames")
    if frames < SHORT_SEGMENT:
        listing.warn(segment.where, f"{segment.name} {span} gives only {frames} frame(s) "
                                    f"(fewer than {SHORT_SEGMENT}); kept")
    target = videos / segment.entry.path
    _remove_folder(target)
    target.unlink(missing_ok=True)
    os.replace(_staging(segment, videos), target)
    listing.videos.append((segment.entry, target))


def _discard(segments: list[Segment], videos: Path) -> None:
    for segment in segments:
        _remove_folder(_staging(segment, videos))


READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51, "kinetics": read_kinetics, "ssv2": read_ssv2, "csv": read_csv,
           "list": read_list, "rawframes": read_rawframes, "ssv1": read_ssv1, "activitynet": read_activitynet}


# --- the import ------------------------------------------------------------------------


def import_dataset(fmt: str, root: str | Path, annotations: str | Path, out: str | Path, *,
                   split: int = 1, link: bool = True) -> Listing:
    """Read ``fmt`` annotations and write a dataset folder ``out``: ``manifest.csv``,
    ``classes.txt``, ``import_report.csv`` and the videos under ``out/videos/``
    (symlinks, or copies with ``link=False``), keeping their paths relative to ``root``;
    ``activitynet`` writes the frame folders it cuts from the videos instead (:func:`cut_segments`).
    """
    if fmt not in READERS:
        raise DataError(f"unknown annotation format {fmt!r}; known: {', '.join(FORMATS)}")
    root, annotations, out = Path(root).resolve(), Path(annotations), Path(out)
    if not root.is_dir():
        raise DataError(f"video root {root} is not a folder")
    listing = READERS[fmt](root, annotations, split)
    _check_classes(annotations, listing.classes)
    if listing.segments:
        cut_segments(listing, out / VIDEOS_DIR)
    write_problems(out / REPORT, listing.problems)
    _write_warnings(out / WARNINGS, listing.warnings)
    if not listing.videos:
        first = f"; first: {listing.problems[0]}" if listing.problems else ""
        raise AnnotationFileError(annotations, f"no usable videos ({len(listing.problems)} problems, "
                                               f"see {out / REPORT}){first}")
    entries = []
    for number, (entry, source) in enumerate(listing.videos, start=1):
        rel = f"{VIDEOS_DIR}/{entry.path}"
        _place(source, out / rel, link=link)
        entries.append(Entry(rel, entry.label, entry.split, entry.line))
        if number % 1000 == 0:
            log.info("import: %d/%d videos placed", number, len(listing.videos))
    write_dataset(out, entries, listing.classes)
    counts = {kind: sum(e.split == kind for e in entries) for kind in ("train", "test")}
    log.info("import: %d videos (%d train, %d test) of %d classes from %s into %s; %d problem(s)%s",
             len(entries), counts["train"], counts["test"], len(listing.classes), fmt, out, len(listing.problems),
             f", see {out / REPORT}" if listing.problems else "")
    return listing


def _write_warnings(path: Path, warnings: list[Problem]) -> None:
    """``import_warnings.csv`` (file,line,reason) when a kept video drew a warning; the first few logged."""
    if not warnings:
        path.unlink(missing_ok=True)
        return
    write_problems(path, warnings)
    for warning in warnings[:3]:
        log.warning("import: %s", warning)
    log.warning("import: %d warning(s) about kept videos, all in %s", len(warnings), path)


def _check_classes(annotations: Path, classes: list[str]) -> None:
    """The class list must survive ``classes.txt`` (one name a line): named, single-line, distinct."""
    seen: set[str] = set()
    for name in classes:
        problem = label_problem(name) or (f"class {name!r} is listed twice" if name in seen else None)
        if problem:
            raise AnnotationFileError(annotations, f"{problem}; fix the class list")
        seen.add(name)


def _place(source: Path, target: Path, *, link: bool) -> None:
    """Symlink (absolute) or copy ``source`` to ``target``, replacing what is there atomically.

    A frame folder becomes a real folder of links to its files (or a copy): DVC does not
    follow a link to a folder, so ``dvc add data`` would track no frame of a linked one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        _place_folder(source, target, link=link)
        return
    if target.exists() and os.path.samefile(source, target) and (link or not target.is_symlink()):
        return  # already linked, or imported in place
    if link:
        tmp = target.with_name(f".{target.name}.link.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(source.resolve(), tmp)
        _remove_folder(target)
        os.replace(tmp, target)
    else:
        with source.open("rb") as src, atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)


def _place_folder(source: Path, target: Path, *, link: bool) -> None:
    """``target``: a folder of links to the files of ``source`` (or a copy of it), built
    beside it and put in place of what was there."""
    if target.exists() and not target.is_symlink() and os.path.samefile(source, target):
        return  # imported in place
    tmp = target.with_name(f".{target.name}.{'link' if link else 'copy'}.tmp")
    _remove_folder(tmp)
    tmp.unlink(missing_ok=True)
    if link:
        tmp.mkdir()
        for entry in os.scandir(source):
            if entry.is_file():
                os.symlink(os.path.realpath(entry.path), tmp / entry.name)
    else:
        shutil.copytree(source, tmp)
    _remove_folder(target)
    target.unlink(missing_ok=True)
    os.replace(tmp, target)


def _remove_folder(path: Path) -> None:
    """Remove ``path`` when it is a real folder (a frame folder placed by an earlier import)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
