"""``train.val_cache_mb``: planning's validation clips decoded once and kept in memory give
the same numbers as decoding them every epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opplan.planning.graph import State
from opplan.train.setup import TrainSetup
from opplan.train.transition import validate
from tests.test_stages import tiny_params

pytestmark = pytest.mark.slow


def _scores(setup: TrainSetup, model: torch.nn.Module, state: State) -> list[np.ndarray]:
    out = []
    for _ in range(3):  # three "epochs" of validation, the weights moving between them
        out.append(setup.predict(model, "val", state, mode="val", clips=2)[0])
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)
    return out


def test_cached_validation_scores_equal_decoded_ones(tiny_shards, tmp_path, one_torch_thread):
    state = State("us", 4, 0.02)
    results = {}
    for mb in (0.0, 64.0):
        params = tiny_params(tiny_shards, tmp_path / "mlflow.db")
        params = params.model_copy(update={"train": params.train.model_copy(update={"val_cache_mb": mb})})
        setup = TrainSetup(params, tiny_shards)
        model = setup.new_model(state.clip_length)
        results[mb] = _scores(setup, model, state)
        if mb:
            assert setup._val_cache.hits == 2 and setup._val_cache.key == ("us", 4, 2)  # decoded once
            assert validate(setup, model, state) == validate(setup, model, state)
        else:
            assert setup._val_cache is None
    for plain, cached in zip(results[0.0], results[64.0]):
        np.testing.assert_array_equal(plain, cached)


def test_clips_over_the_limit_are_decoded_every_time(tiny_shards, tmp_path, one_torch_thread):
    params = tiny_params(tiny_shards, tmp_path / "mlflow.db")
    params = params.model_copy(update={"train": params.train.model_copy(update={"val_cache_mb": 1e-4})})
    setup = TrainSetup(params, tiny_shards)
    state = State("cs", 4, 0.02)
    model = setup.new_model(state.clip_length)
    first, second = (setup.predict(model, "val", state, mode="val")[0] for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert setup._val_cache.stored is None and ("cs", 4, 1) in setup._val_cache.too_large
