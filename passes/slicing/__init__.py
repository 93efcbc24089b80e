"""Structured pruning by channel slicing: dependency groups, importance, budgets, dense rewrite.

``analyze_channels`` finds the units of slicing (channels coupled through residuals, concat,
split, groups and attention heads) and why the rest cannot be sliced; ``score_units`` ranks
them; ``slice_channels`` (and the ``slice`` pass) removes units for a ratio, FLOP or param budget
and rewrites the graph with dense, smaller params.
"""

from .budget import Budget
from .groups import ChannelAnalysis, Group, analyze_channels
from .importance import score_units
from .rewrite import Slicer, apply_slicing, estimate
from .slice import SliceChannels, SliceReport, load_calibration, slice_channels

__all__ = [
    "Budget", "ChannelAnalysis", "Group", "SliceChannels", "SliceReport", "Slicer", "analyze_channels",
    "apply_slicing", "estimate", "load_calibration", "score_units", "slice_channels",
]
