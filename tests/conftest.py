"""Shared pytest fixtures. Each area keeps its fixtures in its own headed block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# --- tracking: MLflow's process-wide URIs (owner: tracking) ------------------------------

@pytest.fixture(autouse=True)
def mlflow_process_uris_restored() -> Iterator[None]:
    """MLflow's process-wide URIs and their variables as before each test: a test that set
    ``MLFLOW_TRACKING_URI`` sent every later test's runs to its own store (two tests of
    test_stages failed after test_serving in one process)."""
    from opplan.tracking.model import process_uris_restored

    with process_uris_restored():
        yield


# --- data: a tiny synthetic dataset and its shards (owner: data layer) -------------------

TINY_SHORT_SIDE = 40
"""``prepare.short_side`` of ``tiny_shards``: frames are 40 x 50; use ``train.crop_size <= 40``."""


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset folder of 4 classes x 4 videos (3 train + 1 test each), 24-48 frames of 80 x 64,
    with ``manifest.csv``, ``classes.txt`` and UCF101-style lists. Do not modify it."""
    from opplan.data.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("tiny_dataset")
    synthesize(root, SynthConfig(seed=0, train_per_class=3, test_per_class=1, num_classes=4,
                                 min_frames=24, max_frames=48))
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_dataset`` prepared (short side 40, seed 0): splits train 8, val 4, test 4. Do not modify it."""
    from opplan.config import PrepareParams
    from opplan.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("tiny_shards")
    prepare_dataset(tiny_dataset, out, PrepareParams(short_side=TINY_SHORT_SIDE, workers=1), seed=0)
    return out


# --- end of data block -------------------------------------------------------------------


# --- models: thread count (owner: models) --------------------------------------------------


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: small ops gain little from more, and lose several-fold when
    other processes share the cores (OpenMP threads wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
