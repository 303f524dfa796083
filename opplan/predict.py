"""``opplan predict`` and ``opplan export``: the trained model on new videos, and outside opplan.

The model is ``final/model.pt`` (with ``final/run.json`` beside it and the params file for the
class names and view settings), or an MLflow model URI (``runs:/<run>/model``,
``models:/NAME/VERSION``), which carries both (:mod:`opplan.tracking.model`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from opplan.documents import FinalRecord
from opplan.errors import OpplanError
from opplan.params_file import load_params

log = logging.getLogger(__name__)

MODEL_OPTION = click.option("--model", "model_ref", default="final/model.pt", show_default=True,
                            help="final/model.pt, runs:/<run>/model or models:/NAME/VERSION.")
PARAMS_OPTION = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False),
                             help="The params file (class names, view settings, tracking URI).")


def load_any(model_ref: str, params_path: str) -> Any:
    """The :class:`opplan.inference.Bundle` of a model file or an MLflow model URI."""
    params = load_params(params_path)
    if model_ref.startswith(("runs:/", "models:/")):
        from opplan.tracking.client import resolve_uri
        from opplan.tracking.model import load_bundle

        return load_bundle(model_ref, resolve_uri(params.tracking.uri))
    from opplan.inference import load_local_bundle

    path = Path(model_ref)
    if not path.is_file():
        raise OpplanError(f"{path}: no such model file (made by `dvc repro final`; or give --model runs:/... "
                          f"or models:/NAME/VERSION)")
    record_path = path.parent / "run.json"
    record = FinalRecord.read(record_path) if record_path.is_file() else None
    return load_local_bundle(path, params, record)


@click.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@MODEL_OPTION
@PARAMS_OPTION
@click.option("--clips", type=click.IntRange(min=1), default=None, help="Clips per video (default: evaluate's).")
@click.option("--crops", type=click.Choice(["1", "3"]), default=None, help="Crops per clip (default: evaluate's).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per video, one per line.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def predict(videos: tuple[str, ...], model_ref: str, params_path: str, clips: int | None, crops: str | None,
            top_k: int, as_json: bool, device: str) -> None:
    """Top-k labels of each VIDEO, tested as `evaluate` tests (clips x crops, scores averaged).

    A video that cannot be read is one line on stderr; the others are still predicted, and the
    exit status is 1.
    """
    from opplan.device import pick_device
    from opplan.inference import decode, scores, video_views
    from opplan.inference import top_k as best

    bundle = load_any(model_ref, params_path)
    target = pick_device(device)
    model = bundle.model.to(target)
    failed = 0
    for video in videos:
        try:
            frames = decode(video, bundle.settings)
        except OpplanError as exc:
            failed += 1
            click.echo(f"opplan: error: {exc}", err=True)
            continue
        views = video_views(frames, bundle.settings, clips=clips, crops=int(crops) if crops else None)
        top = best(scores(model, views, target), bundle.classes, top_k)
        if as_json:
            click.echo(json.dumps({"video": video, "top": top}))
        else:
            click.echo(f"{video}: " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in top))
    if failed:
        raise SystemExit(1)


@click.command()
@MODEL_OPTION
@PARAMS_OPTION
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), required=True)
@click.option("--out", default=None, help="Output file (default: final/model.<ts|onnx> beside a model file).")
def export(model_ref: str, params_path: str, fmt: str, out: str | None) -> None:
    """Export the final model to TorchScript or ONNX, checked against the model on a random clip."""
    from opplan.export import export_model

    bundle = load_any(model_ref, params_path)
    suffix = {"torchscript": ".ts", "onnx": ".onnx"}[fmt]
    target = Path(out) if out else (Path(model_ref).with_suffix(suffix) if not model_ref.startswith(
        ("runs:/", "models:/")) else Path(f"model{suffix}"))
    size = bundle.settings["test_crop_size"]
    error = export_model(bundle.model, fmt, target, (1, 3, bundle.settings["clip_length"], size, size))
    click.echo(f"wrote {target} ({fmt}); largest difference from the model's logits on a random clip: {error:.1e} (relative)")
