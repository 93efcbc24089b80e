"""Observers: min-max covers everything, percentile clips rare outliers, MSE minimizes the error."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import PipelineError
from optc.passes.quant import make_observer
from optc.passes.quant.observers import MseObserver, quantization_mse


def heavy_tailed(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(5000).astype(np.float32) for _ in range(4)]
    batches[2][17] = 60.0  # one outlier
    return batches


def test_minmax_range_is_the_extremes_and_contains_zero() -> None:
    observer = make_observer("minmax")
    for batch in ([1.0, 2.0], [3.5, 1.5]):
        observer.observe(np.asarray(batch, dtype=np.float32))
    assert observer.range() == (0.0, 3.5)


def test_percentile_clips_a_rare_outlier() -> None:
    minmax, percentile = make_observer("minmax"), make_observer("percentile")
    for batch in heavy_tailed():
        minmax.observe(batch)
        percentile.observe(batch)
    assert minmax.range()[1] == pytest.approx(60.0)
    assert 3.0 < percentile.range()[1] < 6.0


def test_mse_range_never_has_more_error_than_minmax_and_clips_when_steps_are_coarse() -> None:
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal(5000).astype(np.float32) for _ in range(4)]
    values = np.concatenate(batches).astype(np.float64)
    minmax, mse, mse_4bit = make_observer("minmax"), make_observer("mse"), MseObserver(levels=16)
    for batch in batches:
        for observer in (minmax, mse, mse_4bit):
            observer.observe(batch)
    assert quantization_mse(values, *mse.range()) <= quantization_mse(values, *minmax.range())
    # with 16 levels the optimum clips the tails (about 2.5 sigma for a Gaussian)
    assert 2.0 < mse_4bit.range()[1] < 3.2 < minmax.range()[1]
    assert quantization_mse(values, *mse_4bit.range(), levels=16) < 0.7 * quantization_mse(values, *minmax.range(), levels=16)


def test_unknown_observer_names_the_known_ones() -> None:
    with pytest.raises(PipelineError, match="minmax"):
        make_observer("entropy")
