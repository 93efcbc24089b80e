"""How much each unit of slicing matters: weight magnitude, batch-norm scale, or activations.

Every scored slice (a conv's output rows, the next conv's input columns, a batch norm's scale, a
layer's output activations) gives one number per position; each slice is divided by its mean so
layers of different scale compare, and a unit's score is the mean over every position it owns in
every scored slice. Scores are therefore comparable across groups, which is what a global
threshold needs: a unit near 1 is average for the layers it spans, near 0 is dead weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ...errors import OptcError
from ...ir.graph import Graph
from ...ir.interpret import interpret
from .groups import ChannelAnalysis

METHODS = ("l1", "l2", "bn", "activation")


def _magnitude(array: np.ndarray, axis: int, method: str) -> np.ndarray:
    other = tuple(a for a in range(array.ndim) if a != axis)
    wide = np.abs(array.astype(np.float64))
    if method == "l2":
        return np.sqrt((wide * wide).sum(axis=other)) if other else wide
    return wide.sum(axis=other) if other else wide


class _Accumulator:
    def __init__(self, analysis: ChannelAnalysis) -> None:
        self.analysis = analysis
        self.total = np.zeros(len(analysis.roots))
        self.count = np.zeros(len(analysis.roots))
        self.units = np.zeros(len(analysis.roots), dtype=bool)
        self.units[analysis.units] = True

    def add(self, ids: np.ndarray, values: np.ndarray) -> None:
        live = ids >= 0
        roots = self.analysis.roots[np.maximum(ids, 0)]
        live &= self.units[roots]
        if not live.any():
            return
        mean = values[live].mean()
        normalized = values / mean if mean > 0 else np.zeros_like(values)
        np.add.at(self.total, roots[live], normalized[live])
        np.add.at(self.count, roots[live], 1.0)

    def scores(self, fallback: dict[int, float] | None = None) -> dict[int, float]:
        result = {}
        for unit in self.analysis.units:
            if self.count[unit]:
                result[unit] = float(self.total[unit] / self.count[unit])
            else:
                result[unit] = fallback.get(unit, 0.0) if fallback else 0.0
        return result


def score_units(
    graph: Graph,
    analysis: ChannelAnalysis,
    method: str = "l1",
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> dict[int, float]:
    """A score per unit (keyed by unit root); lower scores are removed first.

    ``l1``/``l2``: magnitude of every weight slice the unit owns (producing rows and consuming
    columns). ``bn``: the |scale| of batch norms on the unit (units without one fall back to l1;
    run slicing before ``fuse`` to keep batch norms). ``activation``: mean |activation| of the
    unit's channels on ``feeds`` (each a dict of graph inputs), through the reference interpreter.
    """
    if method not in METHODS:
        raise OptcError(f"unknown importance '{method}'; use one of {', '.join(METHODS)}")
    nodes = {node.name: node for node in graph.nodes}
    if method in ("l1", "l2", "bn"):
        weights = _Accumulator(analysis)
        scales = _Accumulator(analysis)
        for item in analysis.param_slices:
            node = nodes[item.node]
            array = graph.params.get(node.inputs[item.position])
            if array is None:
                continue
            if item.kind == "weight":
                weights.add(item.ids, _magnitude(array, item.axis, "l2" if method == "l2" else "l1"))
            elif item.kind == "scale" and node.op == "nn.batch_norm":
                scales.add(item.ids, _magnitude(array, item.axis, "l1"))
        if method == "bn":
            return scales.scores(fallback=weights.scores())
        return weights.scores()
    if feeds is None:
        raise OptcError("importance='activation' needs calibration feeds (calib=data.npz, or feeds=...)")
    sums: dict[int, np.ndarray] = {}
    batches = 0
    for feed in feeds:
        results = interpret(graph, feed, keep=True)
        batches += 1
        for index, item in enumerate(analysis.activation_slices):
            array = results.get(item.value)
            if array is None:
                continue
            value = _magnitude(array, item.axis, "l1") / max(array.size // array.shape[item.axis], 1)
            sums[index] = sums.get(index, 0.0) + value
    if not batches:
        raise OptcError("importance='activation' got no calibration feeds")
    activations = _Accumulator(analysis)
    for index, total in sums.items():
        activations.add(analysis.activation_slices[index].ids, total / batches)
    return activations.scores()
