"""The final model as an MLflow model (pyfunc), and the Model Registry (docs/design.md §5, docs/serving.md).

``final`` logs ``final/model.pt`` as the artifact ``model`` of its run: a pyfunc whose
input is clips ``(N, 3, T, H, W)`` float32 (the views of :func:`opplan.inference.video_views`)
and whose output is class probabilities ``(N, num_classes)`` (softmax per clip; ``evaluate``
averages them over a video's views). The model's metadata carries the class names and the
view settings, so ``mlflow.pyfunc.load_model("runs:/<run>/model")`` or
``models:/NAME/VERSION`` gives back everything ``opplan predict`` needs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from opplan.errors import OpplanError
from opplan.tracking.client import Tracker

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
"""Where a run's MLflow model lives among its artifacts (``runs:/<run>/model``)."""


class VideoClassifier(mlflow.pyfunc.PythonModel):
    """Clips ``(N, 3, T, H, W)`` -> softmax class probabilities ``(N, num_classes)``."""

    def load_context(self, context: Any) -> None:
        from opplan.inference import Bundle, load_checkpoint_model

        document = json.loads(Path(context.artifacts["settings"]).read_text())
        model = load_checkpoint_model(Path(context.artifacts["weights"]))
        self.bundle = Bundle(model, document["classes"], document["settings"], document.get("info", {}))

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a schema
        import torch

        if isinstance(model_input, dict):  # a named-tensor input, e.g. from a serving request
            [model_input] = model_input.values()

        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.bundle.model.eval()(clips).float().softmax(dim=1).numpy()


def signature(settings: dict[str, Any], num_classes: int) -> ModelSignature:
    size = settings["test_crop_size"]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, settings["clip_length"], size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


def log_final_model(tracker: Tracker, run_id: str, weights: Path, classes: list[str], settings: dict[str, Any],
                    info: dict[str, Any]) -> str:
    """Log ``weights`` (an opplan ``model.pt``) as the run's MLflow model; its ``runs:/`` URI."""
    document = {"classes": classes, "settings": settings, "info": info}
    example = np.zeros((1, 3, settings["clip_length"], settings["test_crop_size"], settings["test_crop_size"]),
                       dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="opplan-model-") as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.write_text(json.dumps(document, indent=1))
        out = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            str(out), python_model=VideoClassifier(),
            artifacts={"weights": str(weights), "settings": str(settings_path)},
            signature=signature(settings, len(classes)), input_example=example,
            metadata={"classes": classes, "view_settings": settings, **{k: str(v) for k, v in info.items()}},
            pip_requirements=["torch", "torchvision", "numpy", "mlflow", "opplan"])
        tracker._call(tracker.client.log_artifacts, run_id, str(out), MODEL_ARTIFACT)
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def register_final_model(tracker: Tracker, run_id: str, name: str, tags: dict[str, Any], description: str) -> int:
    """A new version of registered model ``name`` from the run's MLflow model; its number."""
    client = tracker.client
    from mlflow.exceptions import MlflowException

    try:
        tracker._call(client.create_registered_model, name, description=description)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    existing = [v for v in tracker._call(client.search_model_versions, f"name = '{name}'") if v.run_id == run_id]
    if existing:  # evaluate run again on the same final run: same version, tags brought up to date
        version = existing[0]
        for key, value in tags.items():
            tracker._call(client.set_model_version_tag, name, version.version, key, str(value))
        tracker._call(client.update_model_version, name, version.version, description=description)
        return int(version.version)
    source = f"{tracker.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = tracker._call(client.create_model_version, name, source, run_id=run_id,
                            tags={k: str(v) for k, v in tags.items()}, description=description)
    log.info("registered the final model as %s version %s", name, version.version)
    return int(version.version)


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def process_uris_restored() -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs, and their variables, as before the
    block: ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``, which opplan reads
    as the user's choice of store (docs/operations.md); left set, every later stage in this
    process would write to that store instead of its params' one."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {name: os.environ.get(name) for name in _URI_VARIABLES}
    before = (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None))
    try:
        yield
    finally:
        if (getattr(tracking_utils, "_tracking_uri", None), getattr(registry_utils, "_registry_uri", None)) != before:
            mlflow.set_tracking_uri(before[0])
            registry_utils._registry_uri = before[1]  # set_registry_uri(None) keeps the variable
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _process_uris(uri: str) -> Iterator[None]:
    """``uri`` as MLflow's process-wide tracking and registry URI for the block, as before after:
    ``mlflow.pyfunc.load_model`` resolves ``runs:/`` and ``models:/`` through them."""
    with process_uris_restored():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield


def load_bundle(uri: str, tracking_uri: str) -> Any:
    """The :class:`opplan.inference.Bundle` of an MLflow model URI (``runs:/``, ``models:/``),
    read from the store at ``tracking_uri``; MLflow's process-wide URIs are left as they were."""
    from mlflow.exceptions import MlflowException

    try:
        with _process_uris(tracking_uri):
            loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise OpplanError(f"{uri}: cannot load this MLflow model from {tracking_uri} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    python_model = loaded.unwrap_python_model()
    if not isinstance(python_model, VideoClassifier):
        raise OpplanError(f"{uri}: not an opplan video model (a {type(python_model).__name__})")
    return python_model.bundle
