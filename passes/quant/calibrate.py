"""Calibration: run the reference interpreter over user feeds and observe chosen values.

Feeds come from Python (any iterable of ``{input name: array}``) or from an ``.npz`` keyed by
input name whose first axis holds the samples (``load_calibration``; ``optc compile --calib``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ...errors import OptcError
from ...ir.graph import Graph
from ...ir.interpret import interpret
from ..calibration import load_calibration, random_feeds  # noqa: F401  (re-exported)
from .observers import Observer, make_observer

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]
Progress = Callable[[int, int], None]


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

