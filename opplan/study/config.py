"""The study's config: a YAML file committed before the study runs (docs/study.md, "Config").

It names the base params and their overrides, the data (the synth generator with a data seed
used nowhere else), the replicates (each replicate's seed is its planning, grid and retrain
seed), the OP arms, the paper-shaped grid with its extension rule, the non-inferiority margin
and the bootstrap. :func:`provenance` refuses a config that is not the committed one.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from opplan.errors import OpplanError

Sampling = Literal["cs", "us"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    generator: Literal["synth"] = "synth"
    seed: int
    """The data seed: used by no other study, demo or test (docs/study.md)."""
    train_per_class: PositiveInt
    """Videos per class of the training split (internal train + internal validation)."""
    test_per_class: PositiveInt
    classes: PositiveInt | None = None
    """The first this many of the generator's classes (None: all ten)."""
    val_size: PositiveInt | None = None
    """Internal validation videos (None: the size of the test split, as ``prepare.val_size``)."""


class GridSpec(_Strict):
    sampling: list[Sampling] = ["cs", "us"]
    schedules: list[Literal["l1-lN", "l2-lN", "all"]] = ["l1-lN", "l2-lN", "all"]
    decays: list[Literal["step", "cosine"]] = ["step", "cosine"]
    epochs: list[PositiveInt] = Field(min_length=1)
    """The declared epoch totals, in increasing order."""
    extension: list[PositiveInt] = []
    """Totals added, in order and one at a time, for the picked schedule only, while the pick is
    at the largest total trained so far (the extension rule; their cost counts)."""

    @model_validator(mode="after")
    def _increasing(self) -> GridSpec:
        totals = self.epochs + self.extension
        if totals != sorted(set(totals)):
            raise ValueError(f"grid.epochs then grid.extension must increase strictly, got {totals}")
        return self


class StudyConfig(_Strict):
    name: str
    base: str
    """Params file the study starts from (a path relative to the repository root)."""
    overrides: dict[str, dict[str, Any]] = {}
    """Params sections merged over ``base`` (one level deep)."""
    data: DataSpec
    replicates: list[int] = Field(min_length=1)
    """One seed per replicate: its planning, grid and retrain seed."""
    arms: dict[str, dict[str, dict[str, Any]]] = {"op": {}}
    """OP arms: each a set of params overrides over the study's params (``{}``: the base
    planning). The first arm is the primary one (matched budget, the headline verdict)."""
    grid: GridSpec
    delta: float = Field(gt=0)
    """The non-inferiority margin, in top-1 points."""
    bootstrap: PositiveInt = 10000
    level: float = Field(0.95, gt=0, lt=1)
    matched_budget_retrain: bool = True
    """Retrain the matched-budget pick too (its top-1 beside the full grid's pick)."""

    @model_validator(mode="after")
    def _arms(self) -> StudyConfig:
        if not self.arms:
            raise ValueError("arms: at least one OP arm is needed")
        if len(set(self.replicates)) != len(self.replicates):
            raise ValueError(f"replicates must be distinct seeds, got {self.replicates}")
        return self


def load_study(path: Path) -> tuple[StudyConfig, str]:
    """The config and its text; a one-line error naming the file and field when it is invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OpplanError(f"{path}: cannot read the study config ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OpplanError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return StudyConfig.model_validate(raw), text
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise OpplanError(f"{path}: {where}: {err['msg']}") from None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def provenance(path: Path, text: str, *, allow_dirty: bool) -> dict[str, Any]:
    """The config's sha256, the commit and whether the config is HEAD's own version.

    Refuses (:class:`OpplanError`) a config outside a git work tree, not committed, or that
    differs from HEAD's version, unless ``allow_dirty`` (then ``dirty`` says why)."""
    path = path.resolve()
    root_proc = _git(path.parent, "rev-parse", "--show-toplevel")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if root_proc.returncode != 0:
        reason = "is not in a git work tree"
        commit = None
        rel = str(path)
    else:
        root = Path(root_proc.stdout.strip())
        rel = path.relative_to(root.resolve()).as_posix()
        commit = _git(root, "rev-parse", "HEAD").stdout.strip() or None
        committed = _git(root, "show", f"HEAD:{rel}")
        if committed.returncode != 0:
            reason = "is not committed"
        elif committed.stdout != text:
            reason = "differs from its committed version (HEAD)"
        else:
            reason = None
        code_dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no").stdout.strip())
    if reason is not None and not allow_dirty:
        raise OpplanError(f"{path}: the study config {reason}; commit it first (or pass --allow-dirty, "
                          f"recorded in the results)")
    return {"config_path": rel, "config_sha256": sha, "commit": commit, "dirty": reason,
            "code_dirty": code_dirty if root_proc.returncode == 0 else None, "config_text": text}
