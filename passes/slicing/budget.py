"""Which units to remove for a budget: a ratio of units, or a FLOP/param target.

Every budget respects, per group, a floor (``min_keep``: the fraction of units that always stays,
at least one) and a rounding step (kept units rounded *up* so every layer keeps a multiple of
``multiple`` channels where the unit widths allow), and never empties a tensor.

- ``ratio``: the fraction of units to remove. ``ranking="layer"`` (its default) removes
  ``round(ratio * units)`` of the lowest-scored units of every group; ``ranking="global"`` removes
  the ``ratio`` lowest-scored units of the whole graph, wherever they are.
- ``flops`` / ``params``: the fraction of the graph's FLOPs / params to *remove*. With
  ``ranking="global"`` (their default) one threshold over the normalized unit scores removes every
  unit scoring at or below it; with ``ranking="layer"`` every group removes the same ratio. Either
  knob is bisected on the exact registry-counted FLOPs/params of the sliced graph until the target
  is reached (reduction >= target, as little beyond as the unit granularity allows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import OptcError
from .groups import ChannelAnalysis, Group

Measure = Callable[[np.ndarray], tuple[int, int]]  # removed mask -> (flops, params)


@dataclass(frozen=True)
class Budget:
    ratio: float | None = None
    flops: float | None = None
    params: float | None = None
    min_keep: float = 0.1
    ranking: str | None = None  # "layer" or "global"; None: layer for ratio, global for targets

    def __post_init__(self) -> None:
        if self.ranking not in (None, "layer", "global"):
            raise OptcError(f"slice ranking={self.ranking!r} must be 'layer' or 'global'")
        given = [name for name in ("ratio", "flops", "params") if getattr(self, name) is not None]
        if len(given) != 1:
            raise OptcError(f"slice needs exactly one of ratio=, flops=, params= (got {given or 'none'}), "
                            "e.g. slice(ratio=0.3) or slice(flops=0.5) to remove half the FLOPs")
        value = getattr(self, given[0])
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise OptcError(f"slice {given[0]}={value!r} must be a fraction in [0, 1): the share to remove")
        if not 0.0 <= self.min_keep <= 1.0:
            raise OptcError(f"slice min_keep={self.min_keep!r} must be a fraction in [0, 1]")


@dataclass
class Choice:
    removed: np.ndarray  # bool per union-find root
    flops: int
    params: int
    reached: bool
    note: str = ""


def _keep_count(group: Group, remove: int, min_keep: float) -> int:
    units = len(group.units)
    floor = max(1, math.ceil(min_keep * units))
    kept = max(units - remove, floor)
    kept = min(units, -(-kept // group.step) * group.step)  # round up to the step
    return kept


def _ordered(group: Group, scores: dict[int, float]) -> list[int]:
    return sorted(group.units, key=lambda unit: (scores.get(unit, 0.0), unit))


def _mask(analysis: ChannelAnalysis, per_group: list[list[int]], scores: dict[int, float]) -> np.ndarray:
    removed = np.zeros(len(analysis.roots), dtype=bool)
    for units in per_group:
        removed[units] = True
    for unit_set in analysis.keep_one:  # never empty a tensor (a split section, say)
        if removed[unit_set].all():
            best = max(unit_set.tolist(), key=lambda unit: (scores.get(unit, 0.0), unit))
            removed[best] = False
    return removed


def by_ratio(analysis: ChannelAnalysis, scores: dict[int, float], ratio: float, min_keep: float) -> np.ndarray:
    per_group = []
    for group in analysis.groups:
        if not group.sliceable:
            continue
        kept = _keep_count(group, int(round(ratio * len(group.units))), min_keep)
        per_group.append(_ordered(group, scores)[: len(group.units) - kept])
    return _mask(analysis, per_group, scores)


def by_threshold(analysis: ChannelAnalysis, scores: dict[int, float], threshold: float, min_keep: float) -> np.ndarray:
    per_group = []
    for group in analysis.groups:
        if not group.sliceable:
            continue
        ordered = _ordered(group, scores)
        below = sum(1 for unit in ordered if scores.get(unit, 0.0) <= threshold)
        kept = _keep_count(group, below, min_keep)
        per_group.append(ordered[: len(group.units) - kept])
    return _mask(analysis, per_group, scores)


def choose(analysis: ChannelAnalysis, scores: dict[int, float], budget: Budget, measure: Measure,
           original: tuple[int, int]) -> Choice:
    """The removal for ``budget``; ``measure`` counts (flops, params) of a removal exactly."""
    if budget.ratio is not None:
        if budget.ranking == "global":
            ordered = sorted(scores.get(unit, 0.0) for unit in analysis.units)
            count = int(round(budget.ratio * len(ordered)))
            removed = (by_threshold(analysis, scores, ordered[count - 1], budget.min_keep) if count
                       else np.zeros(len(analysis.roots), dtype=bool))
        else:
            removed = by_ratio(analysis, scores, budget.ratio, budget.min_keep)
        flops, params = measure(removed)
        return Choice(removed, flops, params, True)
    target = budget.flops if budget.flops is not None else budget.params
    index = 0 if budget.flops is not None else 1
    total = original[index]

    def reduction(counts: tuple[int, int]) -> float:
        return 1.0 - counts[index] / total if total else 0.0

    nothing = np.zeros(len(analysis.roots), dtype=bool)
    if target == 0 or not analysis.units:
        return Choice(nothing, *original, reached=target == 0,
                      note="" if target == 0 else "nothing can be sliced")
    if budget.ranking == "layer":  # one ratio for every group, bisected on a fine grid
        knobs = [step / 256 for step in range(257)]

        def remove(position: int) -> np.ndarray:
            return by_ratio(analysis, scores, knobs[position], budget.min_keep)
    else:
        knobs = sorted(set(scores.get(unit, 0.0) for unit in analysis.units))

        def remove(position: int) -> np.ndarray:
            return by_threshold(analysis, scores, knobs[position], budget.min_keep)

    cache: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}

    def attempt(position: int) -> tuple[np.ndarray, tuple[int, int]]:
        if position not in cache:
            removed = remove(position)
            cache[position] = (removed, measure(removed))
        return cache[position]

    low, high = 0, len(knobs) - 1
    if reduction(attempt(high)[1]) < target:
        removed, counts = attempt(high)
        what = "FLOPs" if index == 0 else "params"
        return Choice(removed, *counts, reached=False,
                      note=f"target {target:.0%} of {what} is out of reach: at most {reduction(counts):.1%} "
                           f"with min_keep={budget.min_keep}")
    while low < high:
        middle = (low + high) // 2
        if reduction(attempt(middle)[1]) >= target:
            high = middle
        else:
            low = middle + 1
    removed, counts = attempt(low)
    return Choice(removed, *counts, reached=True)
