"""Dynamic int8: int8 weights per output channel; activations quantized at run time, no calibration.

Before::

    %y: float32[1,16,64] = nn.linear(%x, %w, %b) {activation='gelu'}

after ``quantize_dynamic`` (``%x``'s scale is ``max|x| / 127``, computed by the kernel on every run)::

    %x_q: int8[1,16,32], %x_s: float32[] = quant.dynamic_quantize(%x)
    %y_acc: int32[1,16,64] = quant.linear(%x_q, %w_q)
    %y_scale: float32[64] = math.mul(%x_s, %w_scales)
    %y_deq: float32[1,16,64] = quant.dequantize(%y_acc, %y_scale) {axis=2}
    %y_bias: float32[1,16,64] = math.add(%y_deq, %b)
    %y: float32[1,16,64] = math.gelu(%y_bias)

Only linear layers and matmuls with a constant (K, N) weight are rewritten: in a transformer
they carry nearly all the FLOPs and the weights.
"""

from __future__ import annotations

from ...ir.graph import Graph, Node
from ...ir.ops.nn import ACTIVATIONS
from .layers import LayerRow, weight_of
from .scheme import quantize_weight_per_channel


def quantize_dynamic(graph: Graph, layers: list[Node]) -> list[LayerRow]:
    rows = []
    for node in list(layers):
        weight = weight_of(graph, node)
        if node.op == "nn.conv" or weight is None or weight.ndim != 2:
            size = 0 if weight is None else int(weight.nbytes)
            rows.append(LayerRow(node.name, node.op, "float", "dynamic int8 covers linear/matmul layers with a constant weight",
                                 None, size, size))
            continue
        values, scales = quantize_weight_per_channel(weight, 1)
        dynamic = graph.add_node("quant.dynamic_quantize", [node.inputs[0]], name=f"{node.name}_dynamic_quantize", before=node,
                                 output_names=[f"{node.name}_x_q", f"{node.name}_x_scale"])
        quantized, scale = dynamic.outputs
        weight_param = graph.add_param(f"{node.name}_w_q", values)
        scales_param = graph.add_param(f"{node.name}_w_scales", scales)
        accumulator = graph.add_node("quant.linear", [quantized, weight_param], name=f"{node.name}_int8", before=node,
                                     output_names=[f"{node.name}_acc"]).output
        combined = graph.add_node("math.mul", [scale, scales_param], name=f"{node.name}_scale", before=node).output
        out = graph.add_node("quant.dequantize", [accumulator, combined], {"axis": accumulator.type.rank - 1},
                             name=f"{node.name}_dequantize", before=node).output
        if len(node.inputs) == 3:
            out = graph.add_node("math.add", [out, node.inputs[2]], name=f"{node.name}_bias", before=node).output
        spec = ACTIVATIONS[node.attrs.get("activation", "none")]
        if spec is not None:
            out = graph.add_node(spec[0], [out], dict(spec[1]), name=f"{node.name}_activation", before=node).output
        name = node.output.name
        graph.replace_all_uses(node.output, out)
        graph.remove_node(node)
        graph.rename_value(out, name)
        rows.append(LayerRow(node.name, node.op, "int8 dyn", "", None, int(weight.nbytes), int(values.nbytes + scales.nbytes)))
    graph.remove_unused_params()
    return rows
