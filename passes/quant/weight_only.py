"""Weight-only quantization of linear/matmul weights: int8 or packed int4, group-wise scales.

Before::

    %y: float32[4,64] = nn.linear(%x, %w, %b) {activation='gelu'}             # w: float32[256,64]

after ``quantize_weights(bits=4, group_size=128)`` (w: two int4 per byte, one scale per 128 rows
of K and column)::

    %y: float32[4,64] = quant.weight_matmul(%x, %w_q4, %w_scales, %b) {activation='gelu', bits=4, group_size=128}
                                                                            # w_q4: uint8[128,64], w_scales: float32[2,64]

Rounding is to nearest (RTN) unless GPTQ values are given (``gptq.py``). Symmetric: int4 values
in [-8, 7] with ``scale = max|w| / 7`` per group, int8 in [-127, 127].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir.graph import Graph, Node
from ...ir.ops.quant import pack_int4
from .layers import LayerRow, weight_of

Quantizer = Callable[[Node, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def level_range(bits: int) -> tuple[int, int]:
    return (-8, 7) if bits == 4 else (-127, 127)


def effective_group(depth: int, group_size: int) -> int | None:
    """The group size used for K=depth: the asked one, or K when K is smaller; None when it does not divide."""
    group = min(group_size, depth)
    return group if depth % group == 0 else None


def rtn_quantize(weight: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest, symmetric per (group of K rows, column): (values (K, N), scales (K/g, N))."""
    depth, width = weight.shape
    low, high = level_range(bits)
    grouped = weight.astype(np.float64).reshape(depth // group_size, group_size, width)
    peaks = np.max(np.abs(grouped), axis=1)
    scales = np.where(peaks > 0, peaks / high, 1.0).astype(np.float32)
    values = np.clip(np.rint(grouped / scales[:, None, :].astype(np.float64)), low, high)
    return values.reshape(depth, width).astype(np.int8), scales


def weight_only_refusal(graph: Graph, node: Node, bits: int, group_size: int) -> str:
    weight = weight_of(graph, node)
    depth = weight.shape[0]
    if effective_group(depth, group_size) is None:
        return f"group {group_size} does not divide K={depth}"
    if bits == 4 and depth % 2:
        return f"int4 packing needs an even K, got {depth}"
    return ""


def quantize_weights(graph: Graph, layers: list[Node], bits: int, group_size: int,
                     quantizer: Quantizer | None = None) -> list[LayerRow]:
    """Rewrite ``layers`` (linear, or matmul with a constant (K, N) right operand) in place."""
    rows = []
    for node in list(layers):
        weight = weight_of(graph, node)
        before = int(weight.nbytes)
        reason = weight_only_refusal(graph, node, bits, group_size)
        if reason:
            rows.append(LayerRow(node.name, node.op, "float", reason, None, before, before))
            continue
        group = effective_group(weight.shape[0], group_size)
        if quantizer is None:
            values, scales = rtn_quantize(weight, bits, group)
        else:
            values, scales = quantizer(node, weight, bits, group)
        stored = pack_int4(values) if bits == 4 else values.astype(np.int8)
        inputs = [node.inputs[0], graph.add_param(f"{node.name}_w_q{bits}", stored),
                  graph.add_param(f"{node.name}_w_scales", scales)]
        if len(node.inputs) == 3:
            inputs.append(node.inputs[2])
        out = graph.add_node("quant.weight_matmul", inputs,
                             {"bits": bits, "group_size": group, "activation": node.attrs.get("activation", "none")},
                             name=f"{node.name}_w{bits}", before=node).output
        name = node.output.name
        graph.replace_all_uses(node.output, out)
        graph.remove_node(node)
        graph.rename_value(out, name)
        rows.append(LayerRow(node.name, node.op, f"w{bits} g{group}", "", None, before,
                             int(stored.nbytes + scales.nbytes)))
    graph.remove_unused_params()
    return rows
