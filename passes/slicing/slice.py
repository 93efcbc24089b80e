"""The ``slice`` pass: remove the least important channels and heads, leaving dense smaller weights.

    cleanup,fuse,slice(ratio=0.3)                    remove 30% of the units of every group
    cleanup,fuse,slice(flops=0.5)                    remove (at least) half of the FLOPs
    cleanup,fuse,slice(params=0.4,multiple=8)        remove 40% of the params, 8-channel multiples
    cleanup,fuse,slice(flops=0.3,importance=activation,calib=data.npz)

Before (a conv pair; ``slice(ratio=0.5,min_keep=0)`` and the two lowest-L1 channels of ``c1``)::

    graph g(%x: float32[1,3,8,8]) {
      param %w1: float32[4,3,3,3]
      param %w2: float32[2,4,1,1]
      %c1: float32[1,4,8,8] = nn.conv(%x, %w1) {activation='relu', pads=(1, 1, 1, 1)} @c1
      %c2: float32[1,2,8,8] = nn.conv(%c1, %w2) @c2
      return %c2
    }

after (``%w1`` lost two output rows, ``%w2`` the matching input columns)::

    graph g(%x: float32[1,3,8,8]) {
      param %w1: float32[2,3,3,3]
      param %w2: float32[2,2,1,1]
      %c1: float32[1,2,8,8] = nn.conv(%x, %w1) {activation='relu', pads=(1, 1, 1, 1)} @c1
      %c2: float32[1,2,8,8] = nn.conv(%c1, %w2) @c2
      return %c2
    }

The graph's inputs and outputs keep their shapes (their channels are frozen). The report
(``SliceChannels.last_report``, ``explain()`` for the pass manager) lists every layer's channels
and FLOPs before and after, and every group that could not be sliced with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import OptcError, PipelineError
from ...ir.graph import Graph
from ...ir.interpret import sample_inputs
from ..calibration import load_calibration
from ..pipeline import register_pass
from .budget import Budget, choose
from .groups import ChannelAnalysis, analyze_channels
from .importance import METHODS, score_units
from .rewrite import Estimate, Slicer, apply_slicing, estimate

logger = logging.getLogger(__name__)


@dataclass
class LayerRow:
    """One source layer: its output channels and its cost before and after."""

    node: str
    op: str
    channels_before: int
    channels_after: int
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int


@dataclass
class GroupRow:
    """One dependency group: units before and after, and why frozen units stay."""

    name: str
    layers: list[str]
    units_before: int
    units_after: int
    unit_width: int
    frozen_units: int
    reasons: list[str]
    normalized: bool = False  # a layer norm takes statistics over these channels


@dataclass
class SliceReport:
    budget: str
    importance: str
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    reached: bool
    note: str = ""
    layers: list[LayerRow] = field(default_factory=list)
    groups: list[GroupRow] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.flops_after != self.flops_before or self.params_after != self.params_before

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def unsliceable(self) -> list[GroupRow]:
        """Groups with nothing to remove, each with the reasons."""
        return [group for group in self.groups if group.units_before <= 1 and group.reasons]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"slice {self.budget} (importance {self.importance}): FLOPs {self.flops_before:,} -> {self.flops_after:,} "
            f"(-{self.flops_reduction:.1%}), params {self.params_before:,} -> {self.params_after:,} "
            f"(-{self.params_reduction:.1%})" + (f"; {self.note}" if self.note else ""),
            f"{'layer':<36} {'op':<10} {'channels':>13} {'MFLOPs':>17} {'params':>19}",
        ]
        for row in self.layers:
            lines.append(
                f"{row.node[:36]:<36} {row.op.split('.')[-1]:<10} {row.channels_before:>6} -> {row.channels_after:<5}"
                f"{row.flops_before / 1e6:>8.3f} -> {row.flops_after / 1e6:<7.3f}"
                f"{row.params_before:>9,} -> {row.params_after:<8,}"
            )
        for group in self.groups:
            if group.reasons:
                state = "not sliceable" if group.units_before <= 1 else f"{group.frozen_units} unit(s) frozen"
                lines.append(f"group {group.name}: {state}: {'; '.join(group.reasons)}")
            if group.normalized and group.units_after < group.units_before:
                lines.append(f"group {group.name}: sliced through a layer norm, whose statistics change")
        return "\n".join(lines)


def _budget_text(budget: Budget) -> str:
    for name in ("ratio", "flops", "params"):
        value = getattr(budget, name)
        if value is not None:
            return f"{name}={value}"
    return ""


def slice_channels(
    graph: Graph,
    ratio: float | None = None,
    flops: float | None = None,
    params: float | None = None,
    *,
    importance: str = "l1",
    multiple: int = 1,
    min_keep: float = 0.1,
    ranking: str | None = None,
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
    remove: Sequence[int] | None = None,
    analysis: ChannelAnalysis | None = None,
) -> SliceReport:
    """Slice ``graph`` in place for one budget; returns the per-layer report.

    ``ratio``, ``flops`` and ``params`` are fractions to *remove* (give exactly one, unless
    ``remove`` names the units to remove directly, by root as in ``analysis.groups``).
    ``importance`` is ``l1``, ``l2``, ``bn`` or ``activation`` (which runs the reference
    interpreter on ``feeds``). ``multiple`` rounds kept channels of each layer up to a multiple;
    ``min_keep`` is the fraction of every group's units that always stays (at least one).
    ``ranking`` is ``layer`` (the same ratio in every group; the default for ``ratio``) or
    ``global`` (one threshold over normalized scores; the default for ``flops``/``params``).
    """
    if multiple < 1:
        raise OptcError(f"slice multiple={multiple} must be >= 1")
    analysis = analysis or analyze_channels(graph, multiple)
    nothing = np.zeros(len(analysis.roots), dtype=bool)
    original = estimate(graph, Slicer(analysis, nothing))

    def measure(removed: np.ndarray) -> tuple[int, int]:
        counts = estimate(graph, Slicer(analysis, removed))
        return counts.flops, counts.params

    if remove is not None:
        removed = nothing.copy()
        unknown = sorted(set(remove) - set(analysis.units))
        if unknown:
            raise OptcError(f"slice: {unknown[:5]} are not removable units of this graph")
        removed[list(remove)] = True
        budget_text, reached, note = f"remove={len(remove)} units", True, ""
    else:
        budget = Budget(ratio, flops, params, min_keep, ranking)
        scores = score_units(graph, analysis, importance, feeds)
        choice = choose(analysis, scores, budget, measure, (original.flops, original.params))
        removed, reached, note = choice.removed, choice.reached, choice.note
        budget_text = _budget_text(budget)
    slicer = Slicer(analysis, removed)
    after = estimate(graph, slicer)
    report = SliceReport(budget_text, importance, flops_before=graph.flops(), flops_after=after.flops,
                         params_before=graph.param_count(), params_after=after.params, reached=reached, note=note)
    report.layers = _layer_rows(analysis, removed, original, after)
    report.groups = _group_rows(analysis, removed)
    if removed.any():
        apply_slicing(graph, slicer)
    report.flops_after, report.params_after = graph.flops(), graph.param_count()
    if report.flops_after != after.flops:
        logger.warning("slice: estimated %d FLOPs, the sliced graph counts %d", after.flops, report.flops_after)
    return report


def _layer_rows(analysis: ChannelAnalysis, removed: np.ndarray, before: Estimate, after: Estimate) -> list[LayerRow]:
    rows = []
    for source in analysis.sources:
        kept = int(analysis.kept_mask(source.ids, removed).sum())
        rows.append(LayerRow(source.node, source.op, len(source.ids), kept,
                             before.node_flops.get(source.node, 0), after.node_flops.get(source.node, 0),
                             before.node_params.get(source.node, 0), after.node_params.get(source.node, 0)))
    return rows


def _group_rows(analysis: ChannelAnalysis, removed: np.ndarray) -> list[GroupRow]:
    rows = []
    for group in analysis.groups:
        gone = int(removed[group.units].sum()) if group.units else 0
        rows.append(GroupRow(group.name, group.sources, len(group.units), len(group.units) - gone,
                             group.unit_width, len(group.frozen), group.reasons(), group.normalized))
    return rows


@register_pass("slice")
@dataclass
class SliceChannels:
    """Slice channels and attention heads by importance to a ratio, FLOP or param budget."""

    ratio: float | None = None  # fraction of each group's units to remove
    flops: float | None = None  # fraction of the graph's FLOPs to remove
    params: float | None = None  # fraction of the graph's params to remove
    importance: str = "l1"  # l1 | l2 | bn | activation
    multiple: int = 1  # kept channels per layer rounded up to a multiple of this (8, 16)
    min_keep: float = 0.1  # fraction of every group that always stays (at least one unit)
    ranking: str | None = None  # layer | global (defaults: layer for ratio, global for flops/params)
    calib: str | None = None  # .npz of input feeds for importance=activation (random feeds if absent)
    samples: int = 4  # random calibration feeds when no calib file is given
    seed: int = 0
    last_report: SliceReport | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.importance not in METHODS:
            raise PipelineError(f"slice importance={self.importance!r}; use one of {', '.join(METHODS)}")
        try:
            Budget(self.ratio, self.flops, self.params, self.min_keep, self.ranking)
        except OptcError as error:
            raise PipelineError(str(error)) from error

    def __call__(self, graph: Graph) -> bool:
        feeds = None
        if self.importance == "activation":
            feeds = (load_calibration(self.calib, graph) if self.calib
                     else [sample_inputs(graph, self.seed + index) for index in range(self.samples)])
        self.last_report = slice_channels(graph, self.ratio, self.flops, self.params, importance=self.importance,
                                          multiple=self.multiple, min_keep=self.min_keep, ranking=self.ranking,
                                          feeds=feeds)
        logger.info("%s", self.last_report.table())
        return self.last_report.changed

    def explain(self) -> dict[str, dict[str, Any]]:
        """Per sliced layer (channels removed) and per group that stayed (with the reasons)."""
        report = self.last_report
        if report is None:
            return {}
        found: dict[str, dict[str, Any]] = {}
        for row in report.layers:
            if row.channels_after != row.channels_before:
                found[f"{row.node} {row.channels_before}->{row.channels_after}"] = {
                    "fired": row.channels_before - row.channels_after, "refused": {}}
        for group in report.groups:
            if group.reasons:
                found[f"group {group.name}"] = {"fired": group.units_before - group.units_after,
                                                "refused": {reason: group.frozen_units for reason in group.reasons}}
        return found
