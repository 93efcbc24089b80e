"""Calibration feeds, one format for every pass that reads data (slicing's activation
importance, quantization): an ``.npz`` keyed by input name whose first axis holds the samples
(``calib=`` options, ``optc compile --calib``), or seeded random feeds as a stand-in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OptcError
from ..ir.graph import Graph
from ..ir.interpret import sample_inputs


def load_calibration(path: str | Path, graph: Graph, batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Feeds from an ``.npz`` keyed by input name, first axis = samples.

    For an input with a symbolic leading (batch) dim, samples are grouped into feeds of up to
    ``batch``; for a static input each sample is one feed (its leading dim added back when the
    file dropped it).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise OptcError(f"cannot read calibration data {path}: {error} (expected an .npz keyed by input name)") from error
    names = [value.name for value in graph.inputs]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise OptcError(f"calibration data {path} lacks inputs {missing}; it has {sorted(arrays)}")
    count = min(len(arrays[name]) for name in names)
    if count == 0:
        raise OptcError(f"calibration data {path} holds no samples")
    feeds: list[dict[str, np.ndarray]] = []
    symbolic = all(value.type.rank and isinstance(value.shape[0], str) for value in graph.inputs)
    step = batch if symbolic else 1
    for start in range(0, count, step):
        feed = {}
        for value in graph.inputs:
            chunk = arrays[value.name][start : start + step]
            if not symbolic and chunk.ndim == value.type.rank + 1:
                chunk = chunk[0]
            feed[value.name] = chunk.astype(value.dtype, copy=False)
        feeds.append(feed)
    return feeds


def random_feeds(graph: Graph, samples: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded N(0, 1) feeds: a stand-in when no calibration data is given (ranges will be rough)."""
    return [sample_inputs(graph, seed + index) for index in range(samples)]
