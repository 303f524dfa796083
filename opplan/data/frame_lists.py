"""Importers of datasets shipped as frame folders (docs/operations.md "Bring your own dataset").

Each video is a folder of images (:mod:`opplan.data.frames`); the dataset folder links (or
copies) the frame folders under ``videos/`` like video files, and ``prepare`` reads them.
Problems and the rules of :mod:`opplan.data.annotations` apply: a bad line is reported by
file and line and the import goes on. A frame folder without frames is a problem; a frame
count that disagrees with the list is a warning (``import_warnings.csv``) and what is on
disk is used.

Formats (``PATH`` is ``--annotations``, ``ROOT`` is ``--root``):

- ``rawframes``: MMAction2's rawframe lists, ``frame_dir total_frames label`` per line (label:
  a class index): one file, or a folder of ``*.txt``/``*.csv`` lists; a list whose name says
  ``train`` is the training set, the others the held-out set; frames ``ROOT/<frame_dir>/``.
- ``ssv1``: Something-Something V1 as 20BN shipped it: ``PATH/something-something-v1-labels.csv``
  (one class name a line, in index order), ``...-train.csv`` and ``...-validation.csv``
  (``id;class name`` lines; the unlabelled ``...-test.csv`` is not read); frames
  ``ROOT/<id>/00001.jpg``, ... (the ``20bn-something-something-v1`` folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from opplan.data.annotations import (
    AnnotationFileError,
    Listing,
    _lines,
    _number,
    list_files,
    split_of,
)
from opplan.data.frames import FrameFolderError, frame_files


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


FRAME_READERS = {"rawframes": read_rawframes, "ssv1": read_ssv1}
