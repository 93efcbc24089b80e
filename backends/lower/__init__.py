"""optc IR -> Relax: one lowering table, split by op family, and ``lower_graph``."""

from . import cache, elementwise, linalg, nn, quant, reduce, tensor  # noqa: F401  (fill the lowering table)
from .context import LowerContext
from .module import ENTRY, TRANSFORM_PARAMS, function_params, lower_graph, parameter_name
from .table import LOWERINGS, lowering_for, lowers, missing_lowerings

__all__ = [
    "ENTRY",
    "TRANSFORM_PARAMS",
    "LOWERINGS",
    "LowerContext",
    "function_params",
    "lower_graph",
    "lowering_for",
    "lowers",
    "missing_lowerings",
    "parameter_name",
]
