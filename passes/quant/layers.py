"""Which nodes quantization rewrites, and the per-layer report rows every quant pass returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...ir.graph import Graph, Node

LAYER_OPS = ("nn.conv", "nn.linear", "linalg.matmul")


@dataclass
class LayerRow:
    """One layer: what it became, or why it stayed in float."""

    node: str
    op: str
    scheme: str  # "int8", "w4 g128", "float"
    reason: str = ""
    sensitivity: float | None = None  # output error with only this layer quantized (mixed precision)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0


@dataclass
class QuantReport:
    mode: str
    layers: list[LayerRow] = field(default_factory=list)
    metric: str = ""
    metric_value: float | None = None  # the output error / drop the final graph has on the calibration feeds
    budget: float | None = None

    @property
    def quantized(self) -> list[LayerRow]:
        return [row for row in self.layers if row.scheme != "float"]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        head = f"quant {self.mode}: {len(self.quantized)}/{len(self.layers)} layers quantized"
        if self.metric_value is not None:
            head += f"; {self.metric} {self.metric_value:.4g}" + (f" (budget {self.budget:g})" if self.budget is not None else "")
        lines = [head, f"{'layer':<32} {'op':<8} {'scheme':<10} {'sensitivity':>11} {'bytes':>19}  reason"]
        for row in self.layers:
            sensitivity = "-" if row.sensitivity is None else f"{row.sensitivity:.4g}"
            lines.append(f"{row.node[:32]:<32} {row.op.split('.')[-1]:<8} {row.scheme:<10} {sensitivity:>11} "
                         f"{row.weight_bytes_before:>8,} -> {row.weight_bytes_after:<8,} {row.reason}")
        return "\n".join(lines)

    def explain(self) -> dict[str, dict[str, Any]]:
        """The pass manager's per-rule view: a row per layer, fired when quantized."""
        found: dict[str, dict[str, Any]] = {}
        for row in self.layers:
            sensitivity = "" if row.sensitivity is None else f" (sensitivity {row.sensitivity:.3g})"
            found[f"{row.node} -> {row.scheme}{sensitivity}"] = {"fired": int(row.scheme != "float"),
                                                  "refused": {row.reason: 1} if row.reason else {}}
        return found


def weight_of(graph: Graph, node: Node) -> Any:
    """The param array a layer multiplies by (conv/linear weight, matmul right operand), or None.

    A matmul by ``transpose(param)`` counts too, with the transposed array: that is how a tied
    embedding is read as an LM head (GPT-2's ``x @ wte.T``), most of a small LM's FLOPs. The
    quantized copy is a param of its own; the float table stays for the embedding lookup.
    """
    if len(node.inputs) < 2:
        return None
    operand = node.inputs[1]
    if graph.is_param(operand):
        return graph.params[operand]
    producer = operand.producer
    if (node.op == "linalg.matmul" and producer is not None and producer.op == "tensor.transpose"
            and graph.is_param(producer.inputs[0]) and operand.type.rank == 2
            and tuple(producer.attrs["perm"]) == (1, 0)):
        return np.ascontiguousarray(graph.params[producer.inputs[0]].T)
    return None


def layer_nodes(graph: Graph) -> list[Node]:
    """Conv, linear and matmul nodes on float32 data, in graph order."""
    return [node for node in graph.nodes if node.op in LAYER_OPS and node.inputs[0].dtype == "float32"]


def refusal(graph: Graph, node: Node, weight_only: bool = False) -> str:
    """Why this layer cannot be quantized ("" when it can)."""
    weight = weight_of(graph, node)
    if node.op == "nn.conv":
        if weight is None:
            return "the weight is not a constant"
        if weight.ndim != 4:
            return f"{weight.ndim - 2}-d convolution (int8 conv is 2-d)"
        if len(node.inputs) == 3 and not graph.is_param(node.inputs[2]):
            return "the bias is not a constant"
        if weight_only:
            return "weight-only quantization covers linear/matmul layers"
        return ""
    if node.op == "linalg.matmul":
        a, b = node.inputs
        if a.type.rank < 2 or b.type.rank < 2:
            return "matrix-vector product"
        if weight is None:
            if weight_only:
                return "no constant weight"
            return "" if not graph.is_param(a) else "constant left operand"
        if weight.ndim != 2:
            return f"batched constant weight {weight.shape}"
        return ""
    if weight is None:
        return "the weight is not a constant"
    if len(node.inputs) == 3 and not graph.is_param(node.inputs[2]):
        return "the bias is not a constant"
    return ""


def selected_layers(graph: Graph, keep_first: bool, keep_last: bool, exclude: set[str],
                    weight_only: bool = False) -> tuple[list[Node], list[LayerRow]]:
    """The layers to quantize and report rows for the ones that stay float."""
    candidates = layer_nodes(graph)
    kept: list[LayerRow] = []
    chosen: list[Node] = []
    weighted = [node for node in candidates if weight_of(graph, node) is not None]
    first = weighted[0] if weighted else None
    last = weighted[-1] if weighted else None
    for node in candidates:
        reason = refusal(graph, node, weight_only)
        if not reason and node.name in exclude:
            reason = "excluded"
        elif not reason and keep_first and node is first:
            reason = "first layer kept in float"
        elif not reason and keep_last and node is last:
            reason = "last layer kept in float"
        if reason:
            weight = weight_of(graph, node)
            size = 0 if weight is None else int(weight.nbytes)
            kept.append(LayerRow(node.name, node.op, "float", reason, None, size, size))
        else:
            chosen.append(node)
    return chosen, kept
