"""``fold_qdq``: a QDQ model's float layers between DequantizeLinear and QuantizeLinear become integer ops.

An ONNX QDQ model (``quantize_static(..., quant_format=QDQ)``) imports as float layers whose
operands are ``quant.dequantize`` of int8 values. Before::

    %x_dq: float32[1,3,8,8] = quant.dequantize(%x_q, %x_scale, %x_zero)
    %w_dq: float32[8,3,3,3] = quant.dequantize(%w_q, %w_scale) {axis=0}          # w_q: int8 param
    %c: float32[1,8,8,8] = nn.conv(%x_dq, %w_dq, %b) {pads=(1, 1, 1, 1)}
    %c_q: uint8[1,8,8,8] = quant.quantize(%c, %c_scale, %c_zero) {dtype='uint8'}

after::

    %c_acc: int32[1,8,8,8] = quant.conv(%x_q, %w_q, %b_q) {pads=(1, 1, 1, 1), x_zero_point=...}
    %c_q: uint8[1,8,8,8] = quant.requantize(%c_acc, %c_mult, %c_shift) {axis=1, zero_point=..., dtype='uint8'}

A layer folds when its activation operand is a per-tensor dequantize with constant scale and zero
point, its weight a dequantize of a constant int8 tensor with zero zero points (per tensor, or per
output channel), and its bias (if any) constant. Run it before ``cleanup``, which would otherwise
fold the weight dequantize into a float constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.graph import Graph, Node, Value
from ...ir.ops.quant import QUANT_RANGES, fixed_point
from ..pipeline import register_pass
from .scheme import quantize_bias


def _dequantize_of(graph: Graph, value: Value, dtypes: tuple[str, ...] = ("int8", "uint8")
                   ) -> tuple[Value, np.ndarray, int] | None:
    """(quantized value, scale array, scalar zero point) when ``value`` is a dequantize with constant params."""
    node = value.producer
    if node is None or node.op != "quant.dequantize" or node.inputs[0].dtype not in dtypes:
        return None
    scale = graph.params.get(node.inputs[1])
    zero = graph.params.get(node.inputs[2]) if len(node.inputs) == 3 else np.zeros((), np.int32)
    if scale is None or zero is None:
        return None
    zero_values = np.unique(np.asarray(zero).reshape(-1))
    if zero_values.size != 1:
        return None
    return node.inputs[0], np.asarray(scale, dtype=np.float64), int(zero_values[0])


def _weight(graph: Graph, value: Value, channel_axis: int) -> tuple[Value, np.ndarray] | None:
    found = _dequantize_of(graph, value)
    if found is None:
        return None
    weight, scale, zero = found
    node = value.producer
    if zero != 0 or weight.dtype != "int8" or not graph.is_param(weight):
        return None
    if scale.size > 1 and node.attrs["axis"] % weight.type.rank != channel_axis:
        return None
    return weight, scale.reshape(-1)


def _bias(graph: Graph, node: Node, input_scale: float, weight_scale: np.ndarray, channels: int) -> Value | None | bool:
    """An int32 bias param, None for no bias, False when the bias is not constant."""
    if len(node.inputs) < 3:
        return None
    bias = node.inputs[2]
    if graph.is_param(bias):
        real = graph.params[bias].astype(np.float64)
    else:
        found = _dequantize_of(graph, bias, ("int32",)) if bias.producer is not None else None
        if found is None or not graph.is_param(found[0]):
            return False
        real = (graph.params[found[0]].astype(np.float64) - found[2]) * found[1].reshape(-1)
    scales = np.broadcast_to(weight_scale, (channels,))
    return graph.add_param(f"{node.name}_b_q", quantize_bias(real, input_scale, scales))


def _fold_layer(graph: Graph, node: Node) -> Value | None:
    """The layer as an integer product and a dequantize; None when its operands do not fit."""
    activation = _dequantize_of(graph, node.inputs[0])
    if activation is None or activation[1].size != 1 or node.attrs.get("activation", "none") != "none":
        return None
    x_q, x_scale, x_zero = activation
    x_scale = float(x_scale.reshape(-1)[0])
    if node.op == "linalg.matmul" and not graph.is_param(node.inputs[1]) and node.inputs[1].producer is not None \
            and not graph.is_param(node.inputs[1].producer.inputs[0]):
        other = _dequantize_of(graph, node.inputs[1])
        if other is None or other[1].size != 1 or node.inputs[0].type.rank < 2 or node.inputs[1].type.rank < 2:
            return None
        accumulator = graph.add_node("quant.matmul", [x_q, other[0]], {"a_zero_point": x_zero, "b_zero_point": other[2]},
                                     name=f"{node.name}_int8", before=node).output
        return _dequantized(graph, node, accumulator, np.float64(x_scale) * other[1].reshape(-1), None)
    channel_axis = 0 if node.op == "nn.conv" else 1
    weight = _weight(graph, node.inputs[1], channel_axis)
    if weight is None or (node.op == "nn.conv" and weight[0].type.rank != 4) or (node.op != "nn.conv" and weight[0].type.rank != 2):
        return None
    w_q, w_scale = weight
    channels = w_q.shape[channel_axis]
    bias = _bias(graph, node, x_scale, w_scale, channels)
    if bias is False:
        return None
    inputs = [x_q, w_q] + ([bias] if bias is not None else [])
    if node.op == "nn.conv":
        attrs = {key: node.attrs[key] for key in ("strides", "pads", "dilations", "groups")}
        accumulator = graph.add_node("quant.conv", inputs, dict(attrs, x_zero_point=x_zero), name=f"{node.name}_int8",
                                     before=node).output
        axis = 1
    else:
        accumulator = graph.add_node("quant.linear", inputs, {"x_zero_point": x_zero}, name=f"{node.name}_int8",
                                     before=node).output
        axis = accumulator.type.rank - 1
    return _dequantized(graph, node, accumulator, x_scale * w_scale, axis)


def _dequantized(graph: Graph, node: Node, accumulator: Value, scale: np.ndarray, axis: int | None) -> Value:
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    per_channel = scale.size > 1
    scale_param = graph.add_param(f"{node.name}_scale", (scale if per_channel else scale.reshape(())).astype(np.float32))
    out = graph.add_node("quant.dequantize", [accumulator, scale_param], {"axis": axis if per_channel else None},
                         name=f"{node.name}_dequantize", before=node).output
    name = node.output.name
    graph.replace_all_uses(node.output, out)
    graph.remove_node(node)
    graph.rename_value(out, name)
    return out


def _fold_requantize(graph: Graph, out: Value) -> bool:
    """dequantize(int32) -> quantize becomes one fixed-point requantize."""
    users = out.users()
    if len(users) != 1 or users[0].op != "quant.quantize" or any(out is value for value in graph.outputs):
        return False
    quantize = users[0]
    dequantize = out.producer
    out_scale = graph.params.get(quantize.inputs[1])
    out_zero = graph.params.get(quantize.inputs[2]) if len(quantize.inputs) == 3 else np.zeros((), np.int32)
    if out_scale is None or out_zero is None or np.asarray(out_scale).size != 1:
        return False
    real = graph.params[dequantize.inputs[1]].astype(np.float64) / float(np.asarray(out_scale).reshape(-1)[0])
    multiplier, shift = fixed_point(real)
    dtype = quantize.attrs["dtype"]
    low, high = QUANT_RANGES[dtype]
    accumulator = dequantize.inputs[0]
    requantized = graph.add_node(
        "quant.requantize",
        [accumulator, graph.add_param(f"{accumulator.name}_multiplier", multiplier),
         graph.add_param(f"{accumulator.name}_shift", shift)],
        {"axis": dequantize.attrs["axis"] if multiplier.ndim else None, "zero_point": int(np.asarray(out_zero).reshape(-1)[0]),
         "min": low, "max": high, "dtype": dtype},
        name=f"{accumulator.name}_requantize", before=quantize,
    ).output
    graph.replace_all_uses(quantize.output, requantized)
    return True


def fold_qdq(graph: Graph) -> bool:
    """Turn QDQ-wrapped float layers into integer ops, and dequantize->quantize into requantize."""
    changed = False
    for node in list(graph.nodes):
        if node.op in ("nn.conv", "nn.linear", "linalg.matmul") and node.inputs[0].dtype == "float32":
            out = _fold_layer(graph, node)
            if out is not None:
                changed = True
                _fold_requantize(graph, out)
    if changed:
        graph.remove_dead_nodes()
    return changed


@register_pass("fold_qdq")
@dataclass(frozen=True)
class FoldQdq:
    """Fold QDQ-wrapped float layers (an ONNX QDQ model) into integer quant ops."""

    def __call__(self, graph: Graph) -> bool:
        return fold_qdq(graph)
