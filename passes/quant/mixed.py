"""Mixed precision under a budget: keep the most sensitive layers in float until the output meets it.

``quant(int8,max_drop=0.01)`` measures, on the calibration feeds:

1. each layer's sensitivity: the relative output error with only that layer in int8;
2. the metric with every layer in int8; while it exceeds ``max_drop``, the most sensitive
   layer still in int8 goes back to float and the metric is measured again.

The metric is ``top1`` (the fraction of calibration samples whose arg-max over the last axis
differs from the float model's: an upper bound on the top-1 accuracy lost) for classifier-like
outputs, else ``error`` (relative L2 output error). The report lists every layer's sensitivity
and decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...errors import PipelineError
from ...ir.graph import Graph
from ...ir.interpret import interpret
from .layers import LayerRow
from .ptq import Ranges, quantize_static

logger = logging.getLogger(__name__)

Outputs = list[dict[str, np.ndarray]]


def relative_error(reference: Outputs, actual: Outputs) -> float:
    difference = sum(float(np.sum((a[k].astype(np.float64) - r[k]) ** 2)) for r, a in zip(reference, actual) for k in r)
    norm = sum(float(np.sum(r[k].astype(np.float64) ** 2)) for r in reference for k in r)
    return float(np.sqrt(difference / norm)) if norm else float(np.sqrt(difference))


def top1_drop(reference: Outputs, actual: Outputs) -> float:
    """Fraction of samples whose arg-max (last axis, first output) changes."""
    changed, total = 0, 0
    for r, a in zip(reference, actual):
        key = next(iter(r))
        want, got = np.argmax(r[key], axis=-1), np.argmax(a[key], axis=-1)
        changed += int(np.sum(want != got))
        total += want.size
    return changed / max(total, 1)


METRICS: dict[str, Callable[[Outputs, Outputs], float]] = {"top1": top1_drop, "error": relative_error}


def pick_metric(graph: Graph, metric: str) -> str:
    if metric != "auto":
        if metric not in METRICS:
            raise PipelineError(f"quant metric={metric!r}; use auto, {', '.join(METRICS)}")
        return metric
    out = graph.outputs[0]
    classes = out.shape[-1] if out.type.rank else 1
    return "top1" if out.type.rank >= 2 and isinstance(classes, int) and classes > 1 else "error"


def choose_mixed(graph: Graph, layer_names: Sequence[str], ranges: Ranges, feeds: Sequence[Mapping[str, np.ndarray]],
                 max_drop: float, metric: str) -> tuple[set[str], dict[str, float], float]:
    """(layers to keep in float, per-layer sensitivity, the metric reached)."""
    reference = [interpret(graph, feed) for feed in feeds]
    measure = METRICS[metric]

    def quantized_outputs(float_layers: set[str]) -> Outputs:
        trial = graph.clone()
        chosen = [node for node in trial.nodes if node.name in layer_names and node.name not in float_layers]
        quantize_static(trial, chosen, ranges)
        return [interpret(trial, feed) for feed in feeds]

    sensitivity = {}
    for name in layer_names:
        others = set(layer_names) - {name}
        sensitivity[name] = relative_error(reference, quantized_outputs(others))
    order = sorted(layer_names, key=lambda name: -sensitivity[name])
    kept: set[str] = set()
    value = measure(reference, quantized_outputs(kept))
    while value > max_drop and order:
        kept.add(order.pop(0))
        value = measure(reference, quantized_outputs(kept))
        logger.info("mixed precision: %d layer(s) in float, %s %.4g", len(kept), metric, value)
    return kept, sensitivity, value


def annotate(rows: list[LayerRow], sensitivity: Mapping[str, float], kept: set[str]) -> None:
    for row in rows:
        row.sensitivity = sensitivity.get(row.node)
        if row.node in kept:
            row.reason = "kept in float: most sensitive for the budget"
