"""Checkpoints: a dict with fixed keys, written atomically, loaded with ``weights_only=True``.

Two kinds:
- a *model checkpoint* (``model.pt``): the weights of a training state plus what is
  needed to refuse a mismatched load (model name, number of classes, model config);
- an *epoch state* (``epoch_007.pt``): model, optimizer and RNG state plus the curve so
  far, so a killed transition resumes from its last completed epoch.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from opplan.errors import OpplanError
from opplan.fileio import atomic_write_bytes

FORMAT = "opplan-checkpoint-v1"
MODEL_FILE = "model.pt"
"""The kept weights a training run leaves in its work folder."""
_EPOCH_STATE = re.compile(r"epoch_(\d+)\.pt")


def model_identity(model_config: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """What must match for a checkpoint to fit a model (``init`` is irrelevant once trained)."""
    keep = {k: v for k, v in model_config.items() if k not in ("init", "bn_freeze_min_length", "dropout")}
    return {"model": keep, "num_classes": int(num_classes)}


def _save(obj: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OpplanError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated or not a torch file
        raise OpplanError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a plain state_dict" if isinstance(obj, dict) and obj and all(
            isinstance(v, torch.Tensor) for v in obj.values()) else f"a {type(obj).__name__}"
        raise OpplanError(f"{path}: not an opplan checkpoint (expected format {FORMAT!r}, found {what})")
    if not isinstance(obj.get("identity"), dict) or not _is_state_dict(obj.get("state_dict")):
        raise OpplanError(f"{path}: damaged opplan checkpoint (no model identity or no state_dict of tensors)")
    return obj


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def check_state_dict(path: Path, state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Refuse weights whose names or shapes differ from ``model``'s, before any is copied:
    ``load_state_dict`` would copy the matching tensors first and raise afterwards (half-loaded)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k}: shape {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise OpplanError(f"{path}: the checkpoint's weights do not fit this model ({shown}); nothing was loaded")


def save_model(path: Path, model: torch.nn.Module, identity: dict[str, Any], **info: Any) -> None:
    _save({"format": FORMAT, "identity": identity, "state_dict": model.state_dict(), "info": info}, Path(path))


def load_model(path: Path, model: torch.nn.Module, identity: dict[str, Any]) -> dict[str, Any]:
    """Load weights into ``model``; refuse a checkpoint made for another model or config."""
    obj = _load(Path(path))
    _check_identity(path, obj["identity"], identity)
    check_state_dict(path, obj["state_dict"], model)
    model.load_state_dict(obj["state_dict"], strict=True)
    info = obj.get("info", {})
    return info if isinstance(info, dict) else {}


def _check_identity(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    if found != expected:
        diffs = []
        for key in ("num_classes", "model"):
            if found.get(key) != expected.get(key):
                diffs.append(f"{key}: checkpoint has {found.get(key)!r}, this run needs {expected.get(key)!r}")
        raise OpplanError(f"{path}: checkpoint is for a different model or config; " + "; ".join(diffs))


def rng_state() -> dict[str, Any]:
    """Torch's RNG state (dropout, init). Data sampling is seeded per epoch by the loader
    itself, so numpy's and Python's global generators carry no training state."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_epoch_state(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                     identity: dict[str, Any], epoch: int, curve: list[float], losses: list[float],
                     seconds: list[float], scaler: torch.amp.GradScaler | None = None) -> None:
    """``scaler``: the mixed-precision loss scale, kept when it is in use."""
    _save({
        "format": FORMAT,
        "identity": identity,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
        "epoch": epoch,
        "curve": list(map(float, curve)),
        "losses": list(map(float, losses)),
        "seconds": list(map(float, seconds)),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }, Path(path))


EPOCH_STATE_KEYS = {"optimizer": (dict, type(None)), "rng": dict, "epoch": int, "curve": list, "losses": list,
                    "seconds": list}


def load_epoch_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """An epoch state made for ``identity``; OpplanError when it is another model's or damaged."""
    obj = _load(Path(path))
    _check_identity(path, obj["identity"], identity)
    bad = [k for k, kind in EPOCH_STATE_KEYS.items() if not isinstance(obj.get(k), kind)]
    if bad or not isinstance(obj["rng"].get("torch"), torch.Tensor):
        raise OpplanError(f"{path}: damaged epoch state ({', '.join(bad) or 'rng'} missing or of the wrong type)")
    return obj


# --- a run's work folder: where its epoch states live until the run ends ---------------------


def run_work_dir(root: Path, run_id: str) -> Path:
    """The work folder of MLflow run ``run_id`` under a stage's ``root``."""
    return Path(root) / run_id


def epoch_state_path(work_dir: Path, epoch: int) -> Path:
    """Where the state after ``epoch`` is saved (0: the starting model, evaluated)."""
    return Path(work_dir) / f"epoch_{epoch:03d}.pt"


def epoch_states(work_dir: Path) -> list[Path]:
    """The saved epoch states of a work folder, in epoch order."""
    found = [(int(m.group(1)), p) for p in Path(work_dir).glob("epoch_*.pt") if (m := _EPOCH_STATE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_epoch_state(work_dir: Path) -> Path | None:
    """The state to resume from, or ``None`` when the run starts afresh."""
    states = epoch_states(work_dir)
    return states[-1] if states else None


def clear_work_dir(work_dir: Path) -> None:
    """Drop a work folder whose run has ended (its epoch states are no longer needed)."""
    shutil.rmtree(work_dir, ignore_errors=True)
