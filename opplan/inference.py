"""Running a trained model on videos: what ``opplan predict``, the MLflow model and ``opplan
export`` share (docs/design.md §5, final testing).

A :class:`Bundle` is a model in eval mode plus what is needed to feed it as ``evaluate``
does: the class names and the view settings (:func:`view_settings`): the final state's
clip length and sampling, the frames' short side when decoded (``prepare``), the test
resize and crops. :func:`video_views` makes a video's views exactly as the held-out
loader does, and :func:`scores` averages their softmax scores as ``evaluate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from opplan.config import Params, TrainParams
from opplan.data import sampling
from opplan.data.transforms import MultiCrop, to_video
from opplan.documents import FinalRecord
from opplan.errors import OpplanError

SETTINGS_KEYS = ("clip_length", "sampling", "snippet_length", "short_side", "max_frames", "eval_short_side",
                 "crop_size", "test_crop_size", "clips", "crops")


def view_settings(params: Params, clip_length: int, sampling_name: str) -> dict[str, Any]:
    """How a video becomes the model's input in final testing (plain JSON)."""
    return {"clip_length": int(clip_length), "sampling": sampling_name,
            "snippet_length": params.train.snippet_length, "short_side": params.prepare.short_side,
            "max_frames": params.prepare.max_frames, "eval_short_side": params.train.eval_short_side,
            "crop_size": params.train.crop_size, "test_crop_size": params.evaluate.crop_size or params.train.crop_size,
            "clips": params.evaluate.clips, "crops": params.evaluate.crops}


@dataclass
class Bundle:
    model: nn.Module
    classes: list[str]
    settings: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    """Where the model comes from (run id, path, ...), for messages and the registry."""


def build_from_identity(identity: dict[str, Any]) -> nn.Module:
    """A fresh model of a checkpoint's identity (:func:`opplan.train.checkpoint.model_identity`)."""
    from opplan.models import build_model

    config = identity.get("model", {})
    if not isinstance(config, dict) or "name" not in config:
        raise OpplanError("the checkpoint does not name its model (no identity.model.name)")
    return build_model(config["name"], int(identity["num_classes"]), width=config.get("width"),
                       depth=config.get("depth"))


def load_checkpoint_model(path: Path) -> nn.Module:
    """The model of an opplan ``model.pt``, built from the identity it carries, in eval mode."""
    from opplan.train.checkpoint import _load

    obj = _load(Path(path))
    model = build_from_identity(obj["identity"])
    model.load_state_dict(obj["state_dict"], strict=True)
    return model.eval()


def load_local_bundle(model_path: Path, params: Params, record: FinalRecord | None) -> Bundle:
    """``final/model.pt`` with the class names of ``params``' shards and the final state of
    ``record`` (``final/run.json``; without it, the last clip length of the plan, ``cs``)."""
    from opplan.planning.graph import parse_state

    model = load_checkpoint_model(model_path)
    classes_file = Path(params.prepare.out) / "classes.txt"
    num_classes = _num_classes(model)
    classes = classes_file.read_text().split("\n")[:num_classes] if classes_file.is_file() else []
    if len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    if record is not None:
        state = parse_state(record.final_state, params.plan.clip_lengths, params.plan.lrs)
        clip_length, sampling_name = state.clip_length, state.sampling
    else:
        clip_length, sampling_name = max(params.plan.clip_lengths), "cs"
    info = {"model": str(model_path), **({"run_id": record.run_id} if record else {})}
    return Bundle(model, classes, view_settings(params, clip_length, sampling_name), info)


def _num_classes(model: nn.Module) -> int:
    """Classes of a registry model: the outputs of its (last) classifier."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def video_views(frames: np.ndarray, settings: dict[str, Any], *, clips: int | None = None,
                crops: int | None = None) -> torch.Tensor:
    """uint8 (n, H, W, 3) frames at ``short_side`` -> float (clips * crops, 3, T, S, S), the
    views of the held-out loader (:class:`opplan.data.dataset.ClipDataset`, ``mode="test"``)."""
    clips = clips or settings["clips"]
    crops = crops or settings["crops"]
    length = settings["clip_length"]
    indices = sampling.spaced_clips(len(frames), length, settings["sampling"], clips, settings["snippet_length"])
    train = TrainParams.model_construct(crop_size=settings["crop_size"], eval_short_side=settings["eval_short_side"])
    transform = MultiCrop(train, crops, settings["test_crop_size"])
    views = transform(to_video(frames[indices.reshape(-1)]))  # (crops, K*T, 3, S, S)
    views = views.unflatten(1, (clips, length)).transpose(0, 1).flatten(0, 1)  # (K*crops, T, 3, S, S)
    return views.permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def scores(model: nn.Module, views: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """(num_classes,) softmax scores of one video, averaged over its views (as ``evaluate``)."""
    model.eval()
    probs = model(views.to(device)).float().softmax(dim=1)
    return probs.mean(dim=0).cpu().numpy()


def decode(path: str | Path, settings: dict[str, Any]) -> np.ndarray:
    """A video's frames as ``prepare`` decodes them (decord, PyAV fallback); OpplanError naming
    the file when it cannot be read."""
    from opplan.data.prepare import decode_video

    if not Path(path).is_file():
        raise OpplanError(f"{path}: no such video file")
    decoded = decode_video(str(path), settings["short_side"], settings["max_frames"])
    if decoded.frames is None:
        raise OpplanError(f"{path}: cannot be decoded ({decoded.reason})")
    return decoded.frames


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[i] if i < len(classes) else str(i), "index": int(i), "probability": float(probs[i])}
            for i in order]
