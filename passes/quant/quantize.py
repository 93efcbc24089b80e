"""The ``quant`` pass: one entry for every quantization scheme.

    quant(int8)                         static int8; ranges calibrated on --calib / calib= data
    quant(int8,observer=percentile)     ... with 99.99th-percentile ranges (or observer=mse)
    quant(int8,keep_first=True,keep_last=True)   first and last layer stay float
    quant(int8,max_drop=0.01)           mixed precision: most sensitive layers float until the budget holds
    quant(int8,dynamic)                 dynamic int8 for linear/matmul (no calibration)
    quant(w8)  quant(w4,group=128)      weight-only, round to nearest
    quant(w4,gptq,group=128)            weight-only with GPTQ error compensation (needs calibration)
    quant(int8,embeddings=False)        leave embedding tables in float (default: int8 rows)

Without calibration data (``calib`` or ``feeds``) seeded N(0, 1) inputs are used, which is only
good for testing: give real data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import PipelineError
from ...ir.graph import Graph
from ...ir.interpret import interpret
from ..pipeline import register_pass
from .calibrate import collect_activations, load_calibration, log_progress, observe_values, random_feeds
from .dynamic import quantize_dynamic
from .embedding import quantize_embeddings
from .gptq import gptq_quantize
from .layers import LayerRow, QuantReport, selected_layers
from .mixed import annotate, choose_mixed, pick_metric, relative_error
from .observers import OBSERVERS
from .ptq import quantize_static, values_to_calibrate
from .weight_only import quantize_weights

logger = logging.getLogger(__name__)

MODES = ("int8", "w8", "w4")
METHODS = {"int8": ("static", "dynamic"), "w8": ("rtn", "gptq"), "w4": ("rtn", "gptq")}


@register_pass("quant")
@dataclass
class Quantize:
    """Quantize: static or dynamic int8, weight-only int8/int4 (RTN or GPTQ), mixed precision."""

    mode: str = "int8"  # int8 | w8 | w4
    method: str | None = None  # int8: static (default) | dynamic; w8/w4: rtn (default) | gptq
    group: int = 128  # weight-only group size along K (32, 64, 128)
    calib: str | None = None  # .npz keyed by input name, first axis = samples
    observer: str = "minmax"  # minmax | percentile | mse
    samples: int = 8  # random feeds when no calibration data is given
    keep_first: bool = False
    keep_last: bool = False
    exclude: str | None = None  # node names kept in float, separated by '|'
    max_drop: float | None = None  # mixed precision budget (int8 static)
    metric: str = "auto"  # top1 | error | auto
    embeddings: bool = True  # embedding tables (only gathered from) as int8 rows with per-row scales
    seed: int = 0
    feeds: Iterable[Mapping[str, np.ndarray]] | None = field(default=None, repr=False, compare=False)
    progress: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)
    last_report: QuantReport | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PipelineError(f"quant mode {self.mode!r}; use one of {', '.join(MODES)}")
        self.method = self.method or METHODS[self.mode][0]
        if self.method not in METHODS[self.mode]:
            raise PipelineError(f"quant({self.mode}) takes {' or '.join(METHODS[self.mode])}, not {self.method!r}")
        if self.observer not in OBSERVERS:
            raise PipelineError(f"quant observer={self.observer!r}; use one of {', '.join(OBSERVERS)}")
        if self.group < 1:
            raise PipelineError(f"quant group={self.group} must be >= 1")
        if self.max_drop is not None and (self.mode != "int8" or self.method != "static"):
            raise PipelineError("max_drop (mixed precision) applies to static int8: quant(int8,max_drop=0.01)")

    @property
    def excluded(self) -> set[str]:
        return {name.strip() for name in (self.exclude or "").split("|") if name.strip()}

    def calibration_feeds(self, graph: Graph) -> list[dict[str, np.ndarray]]:
        if self.feeds is not None:
            return [dict(feed) for feed in self.feeds]
        if self.calib:
            return load_calibration(self.calib, graph)
        logger.warning("quant: no calibration data (calib=... or --calib); using %d random feeds", self.samples)
        return random_feeds(graph, self.samples, self.seed)

    def __call__(self, graph: Graph) -> bool:
        weight_only = self.mode != "int8"
        # first, so that calibration and the mixed-precision budget see the int8 tables too
        embedding_rows = quantize_embeddings(graph) if self.embeddings else []
        layers, float_rows = selected_layers(graph, self.keep_first, self.keep_last, self.excluded, weight_only)
        report = QuantReport(f"{self.mode},{self.method}" + (f",group={self.group}" if weight_only else ""))
        if self.mode == "int8" and self.method == "dynamic":
            rows = quantize_dynamic(graph, layers)
        elif weight_only:
            rows = self._weight_only(graph, layers)
        else:
            rows = self._static(graph, layers, report)
        graph.remove_dead_nodes()  # e.g. the transpose a quantized LM head read its tied weight through
        report.layers = rows + float_rows + embedding_rows
        self.last_report = report
        logger.info("%s", report.table())
        return bool(report.quantized)

    def _static(self, graph: Graph, layers: list, report: QuantReport) -> list:
        feeds = self.calibration_feeds(graph)
        observers = observe_values(graph, feeds, values_to_calibrate(graph, layers), self.observer,
                                   self.progress or log_progress())
        ranges = {name: observer.range() for name, observer in observers.items()}
        if self.max_drop is None:
            return quantize_static(graph, layers, ranges)
        metric = pick_metric(graph, self.metric)
        names = [node.name for node in layers]
        kept, sensitivity, value = choose_mixed(graph, names, ranges, feeds, self.max_drop, metric)
        rows = quantize_static(graph, [node for node in layers if node.name not in kept], ranges)
        for node in layers:
            if node.name in kept:
                rows.append(LayerRow(node.name, node.op, "float", "", None))
        annotate(rows, sensitivity, kept)
        report.metric, report.metric_value, report.budget = metric, value, self.max_drop
        return rows

    def _weight_only(self, graph: Graph, layers: list) -> list:
        bits = 4 if self.mode == "w4" else 8
        if self.method == "rtn":
            return quantize_weights(graph, layers, bits, self.group)
        feeds = self.calibration_feeds(graph)
        inputs = collect_activations(graph, feeds, {node.inputs[0].name for node in layers})

        def quantizer(node: Any, weight: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
            return gptq_quantize(weight, inputs[node.inputs[0].name], bits, group)

        return quantize_weights(graph, layers, bits, self.group, quantizer)

    def explain(self) -> dict[str, dict[str, Any]]:
        return self.last_report.explain() if self.last_report else {}


def output_error(reference: Graph, quantized: Graph, feeds: Iterable[Mapping[str, np.ndarray]]) -> float:
    """Relative L2 output error of ``quantized`` against ``reference`` over ``feeds``."""
    feeds = list(feeds)
    return relative_error([interpret(reference, feed) for feed in feeds], [interpret(quantized, feed) for feed in feeds])
