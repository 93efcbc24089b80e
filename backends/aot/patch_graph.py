"""Patch-based execution as a graph rewrite: the first stage runs once per spatial patch.

``patch_graph(graph, split, grid)`` returns a graph that computes the same outputs, where every
node up to the value ``split`` is repeated per patch on the patch's receptive field (cropped
with ``tensor.slice``, pads kept only at the image border) and the patches of ``split`` are
joined with ``tensor.concat``; the rest of the graph is unchanged. Compiled by the ordinary AOT
path, the planner then sees patch-sized intermediates that die patch by patch (MCUNetV2).

Before (split = %b):                         After (2x2 patches; one of four shown):
  %a = nn.conv(%x, %w) {pads=(1,1,1,1)}        %x_p0 = tensor.slice(%x) {rows 0:9, cols 0:9}
  %b = nn.conv(%a, %v) {pads=(1,1,1,1)}        %a_p0 = nn.conv(%x_p0, %w) {pads=(1,1,0,0)}
  %c = nn.linear(...%b...)                     %b_p0 = nn.conv(%a_p0, %v) {pads=(1,1,0,0)}
                                               ... %b = tensor.concat(rows of tensor.concat(patches))
                                               %c = nn.linear(...%b...)
"""

from __future__ import annotations

from ...errors import LoweringError
from ...ir.graph import Graph, Node, Value
from .patching import Region, _grid

WINDOW_OPS = frozenset({"nn.conv", "quant.conv", "nn.max_pool", "nn.avg_pool", "tensor.pad"})


def _kernel(node: Node) -> tuple[int, int]:
    if node.op == "tensor.pad":
        return (1, 1)
    if node.op in ("nn.conv", "quant.conv"):
        return tuple(int(d) for d in node.inputs[1].shape[2:])
    return tuple(node.attrs["kernel"])


def _is_pointwise(graph: Graph, node: Node) -> bool:
    shape = node.outputs[0].shape
    return len(node.outputs) == 1 and len(shape) == 4 and all(
        graph.is_param(value) or value.shape == shape for value in node.inputs
    )


def _window(node: Node) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
    if node.op == "tensor.pad":  # (N, C, H, W begins, then ends) -> (top, left, bottom, right)
        pads = node.attrs["pads"]
        return (1, 1), (1, 1), (pads[2], pads[3], pads[6], pads[7]), (1, 1)
    strides = tuple(node.attrs.get("strides") or (1, 1))
    pads = tuple(node.attrs.get("pads") or (0, 0, 0, 0))
    dilations = tuple(node.attrs.get("dilations") or (1, 1))
    return _kernel(node), strides, pads, dilations


def _input_region(node: Node, out: Region, size: tuple[int, int]) -> tuple[Region, tuple[int, int, int, int]]:
    """The input rows/cols ``out`` reads (clipped) and the pads that make up the clipped part."""
    if node.op not in WINDOW_OPS:
        return out, (0, 0, 0, 0)
    kernel, strides, pads, dilations = _window(node)
    bounds, local_pads = [], [0, 0, 0, 0]
    for axis in range(2):
        start, stop = out[2 * axis], out[2 * axis + 1]
        first = start * strides[axis] - pads[axis]
        end = (stop - 1) * strides[axis] - pads[axis] + (kernel[axis] - 1) * dilations[axis] + 1
        bounds += [max(first, 0), min(end, size[axis])]
        local_pads[axis] = max(0, -first)
        local_pads[axis + 2] = max(0, end - size[axis])
    return (bounds[0], bounds[1], bounds[2], bounds[3]), tuple(local_pads)


def patch_graph(graph: Graph, split: str, grid: int) -> Graph:
    """``graph`` with everything up to value ``split`` run as ``grid`` x ``grid`` patches."""
    split_value = graph.find(split)
    if split_value.producer is None or len(split_value.shape) != 4:
        raise LoweringError(f"cannot split at {split}: it must be a 4-d (NCHW) node output")
    stop = graph.nodes.index(split_value.producer)
    prefix = graph.nodes[: stop + 1]
    _check_prefix(graph, prefix, split_value)
    height, width = int(split_value.shape[2]), int(split_value.shape[3])

    patched = Graph(graph.name)
    mapping: dict[int, Value] = {}
    for value in graph.inputs:
        mapping[id(value)] = patched.add_input(value.name, value.type)
    for value, array in graph.params.items():
        mapping[id(value)] = patched.add_param(value.name, array)

    outputs = []
    for index, region in enumerate(_grid(height, width, grid)):
        outputs.append(_emit_patch(graph, patched, prefix, split_value, region, index, mapping))
    rows = [outputs[row * grid:(row + 1) * grid] for row in range(grid)]
    joined_rows = [row[0] if len(row) == 1 else patched.op("tensor.concat", *row, axis=3, name=f"{split}_row")
                   for row in rows]
    whole = joined_rows[0] if len(joined_rows) == 1 else patched.add_node(
        "tensor.concat", joined_rows, {"axis": 2}, name=f"{split}_patches", output_names=[split]).output
    mapping[id(split_value)] = whole
    for node in graph.nodes[stop + 1:]:
        new = patched.add_node(node.op, [mapping[id(v)] for v in node.inputs], dict(node.attrs), name=node.name,
                               output_names=[v.name for v in node.outputs])
        for old, value in zip(node.outputs, new.outputs):
            mapping[id(old)] = value
    patched.outputs = [mapping[id(value)] for value in graph.outputs]
    return patched


def _check_prefix(graph: Graph, prefix: list[Node], split_value: Value) -> None:
    inside = {id(node) for node in prefix}
    for node in prefix:
        if node.op == "tensor.pad":
            pads = node.attrs["pads"]
            if not (len(pads) == 8 and node.attrs["mode"] == "constant" and min(pads) >= 0
                    and pads[0] == pads[1] == pads[4] == pads[5] == 0):
                raise LoweringError(f"node {node.name} (tensor.pad) cannot run on patches (only constant H/W pads)")
        elif node.op in WINDOW_OPS:
            if len(_kernel(node)) != 2 or node.attrs.get("ceil_mode"):
                raise LoweringError(f"node {node.name} ({node.op}) cannot run on patches (needs a 2-d window)")
        elif not _is_pointwise(graph, node):
            raise LoweringError(f"node {node.name} ({node.op}) cannot run on patches (not a window or pointwise op)")
        for value in node.outputs:
            if value is split_value:
                continue
            if value in graph.outputs or any(id(user) not in inside for user in value.users()):
                raise LoweringError(f"value {value.name} is used after the split point {split_value.name}")


def _emit_patch(graph: Graph, patched: Graph, prefix: list[Node], split_value: Value, region: Region, index: int,
                mapping: dict[int, Value]) -> Value:
    needed: dict[int, Region] = {id(split_value): region}
    for node in reversed(prefix):
        out = needed.get(id(node.outputs[0]))
        if out is None:
            continue
        for value in node.inputs:
            if graph.is_param(value):
                continue
            box, _ = _input_region(node, out, (int(value.shape[2]), int(value.shape[3])))
            old = needed.get(id(value))
            needed[id(value)] = box if old is None else (min(old[0], box[0]), max(old[1], box[1]),
                                                         min(old[2], box[2]), max(old[3], box[3]))
    # what each value holds in this patch: (value in the patched graph, region of the full tensor)
    local: dict[int, tuple[Value, Region]] = {
        id(value): (mapping[id(value)], (0, int(value.shape[2]), 0, int(value.shape[3]))) for value in graph.inputs
    }
    for node in prefix:
        target = needed.get(id(node.outputs[0]))
        if target is None:
            continue
        inputs = []
        local_pads = (0, 0, 0, 0)
        for value in node.inputs:
            if graph.is_param(value):
                inputs.append(mapping[id(value)])
                continue
            held, held_region = local[id(value)]
            want, local_pads = _input_region(node, target, (int(value.shape[2]), int(value.shape[3])))
            inputs.append(_crop(patched, held, held_region, want, f"{value.name}_p{index}"))
        attrs = dict(node.attrs)
        if node.op == "tensor.pad":
            top, left, bottom, right = local_pads
            attrs["pads"] = (0, 0, top, left, 0, 0, bottom, right)
        elif node.op in WINDOW_OPS:
            attrs["pads"] = local_pads
        new = patched.add_node(node.op, inputs, attrs, name=f"{node.name}_p{index}")
        shape = new.outputs[0].shape
        if (shape[2], shape[3]) != (target[1] - target[0], target[3] - target[2]):
            raise LoweringError(f"patch {index} of {node.name} came out {shape}, expected rows/cols {target}")
        local[id(node.outputs[0])] = (new.outputs[0], target)
    return local[id(split_value)][0]


def _crop(graph: Graph, value: Value, held: Region, want: Region, name: str) -> Value:
    if held == want:
        return value
    starts = [want[0] - held[0], want[2] - held[2]]
    ends = [want[1] - held[0], want[3] - held[2]]
    return graph.op("tensor.slice", value, starts=starts, ends=ends, axes=[2, 3], name=name)
