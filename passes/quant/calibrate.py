"""Calibration: run the reference interpreter over user feeds and observe chosen values.

Feeds come from Python (any iterable of ``{input name: array}``) or from an ``.npz`` keyed by
input name whose first axis holds the samples (``load_calibration``; ``optc compile --calib``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ...errors import OptcError
from ...ir.graph import Graph
from ...ir.interpret import interpret, sample_inputs
from .observers import Observer, make_observer

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Progress = Callable[[int, int], None]


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


def observe_values(graph: Graph, feeds: Iterable[Feeds], names: Iterable[str], observer: str = "minmax",
                   progress: Progress | None = None) -> dict[str, Observer]:
    """One observer per value name, fed with that value over every calibration feed."""
    feeds = list(feeds)
    if not feeds:
        raise OptcError("calibration needs at least one feed")
    observers = {name: make_observer(observer) for name in names}
    for index, feed in enumerate(feeds):
        computed = interpret(graph, feed, keep=True)
        computed.update(feed)
        for name, observer_ in observers.items():
            if name in computed:
                observer_.observe(computed[name])
        if progress is not None:
            progress(index + 1, len(feeds))
    return observers


def collect_activations(graph: Graph, feeds: Iterable[Feeds], names: Iterable[str],
                        limit: int = 4096) -> dict[str, np.ndarray]:
    """The values of ``names`` over the feeds, flattened to (rows, last dim), at most ``limit`` rows."""
    wanted = list(names)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    for feed in feeds:
        computed = interpret(graph, feed, keep=True)
        computed.update(feed)
        for name in wanted:
            array = computed[name]
            rows[name].append(array.reshape(-1, array.shape[-1]).astype(np.float64))
    return {name: np.concatenate(parts)[:limit] for name, parts in rows.items()}


def log_progress(every: int = 10) -> Progress:
    """A progress callback that logs ``calibrating i/n`` every ``every`` feeds."""

    def report(done: int, total: int) -> None:
        if done == total or done % every == 0:
            logger.info("calibrating %d/%d", done, total)

    return report

