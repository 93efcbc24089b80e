"""Static int8 post-training quantization: per-channel int8 weights, calibrated per-tensor activations.

Before (a conv pair, fused relu)::

    %c1: float32[1,8,8,8] = nn.conv(%x, %w1, %b1) {activation='relu', pads=(1, 1, 1, 1)} @c1
    %c2: float32[1,8,8,8] = nn.conv(%c1, %w2, %b2) {pads=(1, 1, 1, 1)} @c2

after (``quantize_static``; the first conv requantizes straight into the second's input scale,
so no float tensor exists between them, relu became the clip's lower bound, and each activation
zero point is padded in explicitly and folded into the int32 bias, so the kernels are plain
int8 x int8 -> int32 products)::

    %x_q: int8[1,3,8,8] = quant.quantize(%x, %x_scale, %x_zero) {dtype='int8'}
    %x_pad: int8[1,3,10,10] = tensor.pad(%x_q) {pads=(0, 0, 1, 1, 0, 0, 1, 1), value=-3.0}
    %c1_acc: int32[1,8,8,8] = quant.conv(%x_pad, %w1_q, %b1_q)
    %c1: int8[1,8,8,8] = quant.requantize(%c1_acc, %c1_mult, %c1_shift) {axis=1, zero_point=-128, min=-128}
    %c1_pad: int8[1,8,10,10] = tensor.pad(%c1) {pads=(0, 0, 1, 1, 0, 0, 1, 1), value=-128.0}
    %c2_acc: int32[1,8,8,8] = quant.conv(%c1_pad, %w2_q, %b2_q)
    %c2: float32[1,8,8,8] = quant.dequantize(%c2_acc, %c2_scale) {axis=1}

Weights are symmetric int8 per output channel, biases int32 in the accumulator's scale
(``x_scale * w_scale``), activations asymmetric int8 per tensor from the calibrated ranges.
Matmuls of two activations (attention products left unfused) become ``quant.matmul`` with both
operands quantized per tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...ir.graph import Graph, Node, Value
from ...ir.ops.nn import ACTIVATIONS
from ...ir.ops.quant import fixed_point
from .layers import LayerRow, weight_of
from .scheme import ActivationParams, quantize_bias, quantize_weight_per_channel

Ranges = Mapping[str, tuple[float, float]]
CONV_KEYS = ("strides", "pads", "dilations", "groups")


def values_to_calibrate(graph: Graph, layers: list[Node]) -> list[str]:
    """The float values whose ranges static quantization needs: every layer's activation inputs."""
    names: list[str] = []
    for node in layers:
        operands = node.inputs[:1] if weight_of(graph, node) is not None else node.inputs[:2]
        names += [value.name for value in operands if value.name not in names]
    return names


@dataclass
class _Tail:
    """How a quantized layer leaves int32: its accumulator, the real scale per channel, the activation."""

    accumulator: Value
    scale: np.ndarray  # float64: x_scale * w_scale (per channel) of the accumulator
    axis: int | None
    activation: str
    output: Value  # the float value the graph reads


class StaticQuantizer:
    """Rewrites chosen layers of one graph; one quantize node per activation value."""

    def __init__(self, graph: Graph, ranges: Ranges) -> None:
        self.graph = graph
        self.ranges = ranges
        self.quantized: dict[int, tuple[Value, ActivationParams, Node]] = {}
        self.tails: list[_Tail] = []

    def params_of(self, value: Value) -> ActivationParams:
        return ActivationParams.from_range(*self.ranges[value.name])

    def quantize_value(self, value: Value, before: Node) -> tuple[Value, ActivationParams]:
        if id(value) in self.quantized:
            found, params, _ = self.quantized[id(value)]
            return found, params
        params = self.params_of(value)
        graph = self.graph
        node = graph.add_node("quant.quantize", [value, graph.add_param(f"{value.name}_scale", np.float32(params.scale)),
                                                 graph.add_param(f"{value.name}_zero", np.int8(params.zero_point))],
                              {"dtype": "int8"}, name=f"{value.name}_quantize", before=before,
                              output_names=[f"{value.name}_q"])
        self.quantized[id(value)] = (node.output, params, node)
        return node.output, params

    def rewrite(self, node: Node) -> LayerRow:
        graph = self.graph
        weight = weight_of(graph, node)
        bytes_before = 0 if weight is None else int(weight.nbytes)
        if weight is None:
            return self._rewrite_activation_matmul(node)
        x, params = self.quantize_value(node.inputs[0], node)
        axis = 0 if node.op == "nn.conv" else 1
        weight_q, weight_scales = quantize_weight_per_channel(weight, axis)
        inputs = [x, graph.add_param(f"{node.name}_w_q", weight_q)]
        # refusal() guarantees a constant bias
        bias = quantize_bias(graph.params[node.inputs[2]], params.scale, weight_scales) if len(node.inputs) == 3 else None
        if node.op == "nn.conv":
            attrs = {key: node.attrs[key] for key in CONV_KEYS}
            if params.zero_point:
                # pad with the zero point explicitly, then conv(padded - zp) == conv(padded) - zp * sum(w)
                # everywhere: the zero point folds into the bias as for linear layers
                pads = attrs["pads"] or (0, 0, 0, 0)
                if any(pads):
                    inputs[0] = graph.add_node("tensor.pad", [x], {"pads": (0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]),
                                                                   "value": float(params.zero_point)},
                                               name=f"{node.name}_pad", before=node).output
                    attrs["pads"] = None
                bias = _fold_zero_point(bias, weight_q, params.zero_point, axes=(1, 2, 3))
            if bias is not None:
                inputs.append(graph.add_param(f"{node.name}_b_q", bias))
            accumulator = graph.add_node("quant.conv", inputs, dict(attrs, x_zero_point=0),
                                         name=f"{node.name}_int8", before=node, output_names=[f"{node.name}_acc"]).output
            out_axis = 1
        else:
            # (x - zp) @ w + b == x @ w + (b - zp * colsum(w)) exactly, also in wrapping int32: the
            # zero point folds into the bias and the kernel is a plain int8 product plus a bias
            bias = _fold_zero_point(bias, weight_q, params.zero_point, axes=(0,))
            if bias is not None:
                inputs.append(graph.add_param(f"{node.name}_b_q", bias))
            accumulator = graph.add_node("quant.linear", inputs, {"x_zero_point": 0},
                                         name=f"{node.name}_int8", before=node, output_names=[f"{node.name}_acc"]).output
            out_axis = accumulator.type.rank - 1
        scale = np.float64(params.scale) * weight_scales.astype(np.float64)
        activation = node.attrs.get("activation", "none")
        self._finish(node, accumulator, scale, out_axis, activation)
        after = sum(int(graph.params[value].nbytes) for value in inputs[1:])
        return LayerRow(node.name, node.op, "int8", "", None, bytes_before + self._bias_bytes(node), after)

    def _bias_bytes(self, node: Node) -> int:
        if len(node.inputs) == 3 and self.graph.is_param(node.inputs[2]):
            return int(self.graph.params[node.inputs[2]].nbytes)
        return 0

    def _rewrite_activation_matmul(self, node: Node) -> LayerRow:
        graph = self.graph
        left, left_params = self.quantize_value(node.inputs[0], node)
        right, right_params = self.quantize_value(node.inputs[1], node)
        accumulator = graph.add_node("quant.matmul", [left, right], {"a_zero_point": left_params.zero_point,
                                                                      "b_zero_point": right_params.zero_point},
                                     name=f"{node.name}_int8", before=node, output_names=[f"{node.name}_acc"]).output
        self._finish(node, accumulator, np.float64(left_params.scale) * np.float64(right_params.scale), None, "none")
        return LayerRow(node.name, node.op, "int8", "activations x activations")

    def _finish(self, node: Node, accumulator: Value, scale: np.ndarray, axis: int | None, activation: str) -> None:
        """Dequantize the accumulator (then the float activation) in place of ``node``'s output."""
        graph = self.graph
        scale_param = graph.add_param(f"{node.name}_scale", np.asarray(scale, dtype=np.float32))
        attrs = {"axis": axis} if np.ndim(scale) else {}
        out = graph.add_node("quant.dequantize", [accumulator, scale_param], attrs, name=f"{node.name}_dequantize",
                             before=node).output
        spec = ACTIVATIONS[activation]
        if spec is not None:
            out = graph.add_node(spec[0], [out], dict(spec[1]), name=f"{node.name}_{activation}", before=node).output
        original = node.output
        name = original.name
        graph.replace_all_uses(original, out)
        graph.remove_node(node)
        graph.rename_value(out, name)
        self.tails.append(_Tail(accumulator, np.asarray(scale, dtype=np.float64), axis, activation, out))

    def fold_requantize(self) -> int:
        """Layer -> layer: requantize int32 straight into the next quantize's int8 (no float in between)."""
        graph = self.graph
        folded = 0
        for tail in self.tails:
            output, activation = self._absorb_activation(tail.output, tail.activation)
            entry = self.quantized.get(id(output))
            if entry is None or any(output is out for out in graph.outputs):
                continue
            quantized_value, params, quantize_node = entry
            if any(user is not quantize_node for user in output.users()):
                continue
            clip = params.clip_for(activation)
            if clip is None:
                continue
            multiplier, shift = fixed_point(tail.scale / params.scale)
            accumulator = tail.accumulator
            requantized = graph.add_node(
                "quant.requantize",
                [accumulator, graph.add_param(f"{accumulator.name}_multiplier", multiplier),
                 graph.add_param(f"{accumulator.name}_shift", shift)],
                {"axis": tail.axis if multiplier.ndim else None, "zero_point": params.zero_point, "min": clip[0],
                 "max": clip[1], "dtype": "int8"},
                name=f"{accumulator.name}_requantize", before=quantize_node,
            ).output
            graph.replace_all_uses(quantized_value, requantized)
            folded += 1
        graph.remove_dead_nodes()
        return folded


    def _absorb_activation(self, value: Value, activation: str) -> tuple[Value, str]:
        """A standalone relu / relu6 right after the layer (unfused graphs) folds into the clip too."""
        users = value.users()
        if activation != "none" or len(users) != 1 or any(value is out for out in self.graph.outputs):
            return value, activation
        user = users[0]
        if user.op == "math.relu":
            return user.output, "relu"
        if user.op == "math.clip" and user.attrs.get("min") == 0.0 and user.attrs.get("max") == 6.0:
            return user.output, "relu6"
        return value, activation


def _fold_zero_point(bias: np.ndarray | None, weight: np.ndarray, zero_point: int, axes: tuple[int, ...]) -> np.ndarray | None:
    """``bias - zero_point * sum(weight over axes)`` in int32 (wrapping, as the kernels do)."""
    if not zero_point:
        return bias
    folded = (0 if bias is None else bias.astype(np.int64)) - zero_point * weight.astype(np.int64).sum(axis=axes)
    return ((folded + 2**31) % 2**32 - 2**31).astype(np.int32)


def quantize_static(graph: Graph, layers: list[Node], ranges: Ranges) -> list[LayerRow]:
    """Rewrite ``layers`` of ``graph`` in place to int8 with the calibrated ``ranges`` (by value name)."""
    quantizer = StaticQuantizer(graph, ranges)
    rows = [quantizer.rewrite(node) for node in list(layers)]
    quantizer.fold_requantize()
    return rows
