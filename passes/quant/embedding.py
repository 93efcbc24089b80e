"""Embedding tables as int8 rows: a table that is only gathered from stores int8 plus one scale per row.

Before::

    %tok: float32[1,64,256] = tensor.gather(%wte, %input_ids) {axis=0}          # wte: float32[8192,256]

after ``quantize_embeddings`` (only the gathered rows are dequantized, at run time)::

    %tok_rows: int8[1,64,256] = tensor.gather(%wte_q, %input_ids) {axis=0}    # wte_q: int8[8192,256]
    %tok_scales: float32[1,64] = tensor.gather(%wte_scales, %input_ids) {axis=0}
    %tok_column: float32[1,64,1] = tensor.reshape(%tok_scales) {shape=(1, 64, 1)}
    %tok: float32[1,64,256] = math.mul(math.cast(%tok_rows), %tok_column)

In a language model the embedding table is often the largest param; without this, "int8"
artifacts keep it in float.
"""

from __future__ import annotations

from ...ir.graph import Graph
from .layers import LayerRow
from .scheme import quantize_weight_per_channel

MIN_ELEMENTS = 4096  # small tables (positions of a tiny model) are not worth the extra nodes


def quantize_embeddings(graph: Graph, min_elements: int = MIN_ELEMENTS) -> list[LayerRow]:
    rows = []
    for node in list(graph.nodes):
        if node.op != "tensor.gather" or node.attrs["axis"] != 0:
            continue
        table = node.inputs[0]
        array = graph.params.get(table)
        if array is None or array.dtype.name != "float32" or array.ndim != 2 or array.size < min_elements:
            continue
        if any(user.op != "tensor.gather" or user.inputs[0] is not table or user.attrs["axis"] != 0 for user in table.users()):
            continue  # also read as a matrix (a tied LM head): int8 rows would not save its bytes
        values, scales = quantize_weight_per_channel(array, 0)
        table_q = graph.add_param(f"{table.name}_q", values)
        table_scales = graph.add_param(f"{table.name}_scales", scales)
        for gather in [user for user in table.users()]:
            indices = gather.inputs[1]
            name = gather.output.name
            picked = graph.add_node("tensor.gather", [table_q, indices], {"axis": 0}, name=f"{gather.name}_rows",
                                    before=gather).output
            row_scales = graph.add_node("tensor.gather", [table_scales, indices], {"axis": 0}, name=f"{gather.name}_scales",
                                        before=gather).output
            column = graph.add_node("tensor.reshape", [row_scales], {"shape": tuple(indices.shape) + (1,)},
                                    name=f"{gather.name}_column", before=gather).output
            widened = graph.add_node("math.cast", [picked], {"dtype": "float32"}, name=f"{gather.name}_cast",
                                     before=gather).output
            out = graph.add_node("math.mul", [widened, column], name=f"{gather.name}_dequantize", before=gather).output
            graph.replace_all_uses(gather.output, out)
            graph.remove_node(gather)
            graph.rename_value(out, name)
        rows.append(LayerRow(table.name, "tensor.gather", "int8 rows", "", None, int(array.nbytes),
                             int(values.nbytes + scales.nbytes)))
    graph.remove_unused_params()
    return rows
