"""An optc graph as the planner's call sequence, one step per node, without compiling anything.

This is what ``tools/mcu_memory.py`` plans and what patch-based search works on: conv and pool
nodes carry their window (kernel, stride, padding), elementwise nodes are pointwise, and the
steps that may run in place say so (depthwise conv over its input with one channel of scratch,
as MCUNet does; elementwise ops such as a residual add or an activation over an input of the
same shape; reshapes, which only rename memory).
"""

from __future__ import annotations

import math

import numpy as np

from ...ir.graph import Graph, Node
from .program import POINTWISE, Program, Step, Tensor, Window

POINTWISE_QUANT = frozenset({"quant.quantize", "quant.dequantize", "quant.requantize"})
VIEW_OPS = frozenset({"tensor.reshape", "tensor.flatten", "tensor.squeeze", "tensor.unsqueeze"})


def program_from_graph(graph: Graph, *, activation_dtype: str | None = None,
                       inplace_depthwise: bool = True, fuse: bool = True) -> Program:
    """The call sequence of ``graph`` (params are constants: they are not arena tensors).

    ``activation_dtype`` stores every activation as that dtype (e.g. "int8" to plan an int8
    model from its float graph: only shapes and element sizes matter to the planner).
    ``inplace_depthwise=False`` plans as optc's C kernels run today (their depthwise convs read
    neighbouring pixels of the same channel while writing, so they cannot overwrite their input).
    ``fuse`` merges steps the way the compiled kernels fuse them (``fuse_steps``).
    """
    tensors: dict[str, Tensor] = {}

    def tensor_name(value) -> str:
        if value.name not in tensors:
            shape = tuple(int(d) if isinstance(d, int) else 1 for d in value.shape)
            tensors[value.name] = Tensor(value.name, shape, activation_dtype or value.dtype)
        return value.name

    for value in graph.inputs:
        tensor_name(value)
    steps = []
    for node in graph.nodes:
        inputs = tuple(tensor_name(v) for v in node.inputs if not graph.is_param(v))
        outputs = tuple(tensor_name(v) for v in node.outputs)
        steps.append(_step(graph, node, inputs, outputs, tensors, inplace_depthwise))
    if fuse:
        steps = fuse_steps(steps, frozenset(v.name for v in graph.outputs))
    return Program(
        tensors=tensors,
        steps=tuple(steps),
        inputs=tuple(v.name for v in graph.inputs),
        outputs=tuple(v.name for v in graph.outputs),
        name=graph.name,
    )


FUSES_EPILOGUE = ("nn.conv", "quant.conv", "nn.linear", "quant.linear", "math.", "quant.quantize",
                  "quant.dequantize", "quant.requantize", "tensor.pad+")


def _pointwise_kernel(step: Step) -> bool:
    return all(part.startswith("math.") or part in POINTWISE_QUANT for part in step.kernel.split("+"))


def fuse_steps(steps: list[Step], graph_outputs: frozenset[str] = frozenset()) -> list[Step]:
    """Merge steps as TVM's fusion (and optc's pad fusion) merges their kernels: an elementwise
    step into the conv, linear or elementwise step before it (an int8 conv's int32 accumulator
    and its requantize are one kernel), and a ``tensor.pad`` into the conv after it. Only a
    tensor read by exactly the next step, and not a model output, disappears."""
    fused = list(steps)
    changed = True
    while changed:
        changed = False
        readers: dict[str, int] = {}
        for step in fused:
            for name in set(step.inputs):
                readers[name] = readers.get(name, 0) + 1
        for index in range(len(fused) - 1):
            first, second = fused[index], fused[index + 1]
            if len(first.outputs) != 1 or first.outputs[0] in graph_outputs:
                continue
            middle = first.outputs[0]
            if readers.get(middle) != 1 or middle not in second.inputs:
                continue
            epilogue = _pointwise_kernel(second) and first.kernel.split("+")[-1].startswith(FUSES_EPILOGUE)
            prologue = first.kernel == "tensor.pad" and second.kernel.split("+")[0] in ("nn.conv", "quant.conv")
            if not (epilogue or prologue):
                continue
            fused[index:index + 2] = [_merge(first, second, middle, prologue)]
            changed = True
            break
    return fused


def _merge(first: Step, second: Step, middle: str, prologue: bool) -> Step:
    window = first.window
    if prologue and first.window is not None and second.window is not None:
        pad, conv = first.window, second.window
        window = Window(conv.kernel, conv.stride, (conv.padding[0] + pad.padding[0], conv.padding[1] + pad.padding[1]),
                        conv.dilation)
    elif prologue:
        window = None
    output = second.outputs[0]
    inplace = tuple((output if out == middle else out, source) for out, source in first.inplace)
    inplace += tuple(pair for pair in second.inplace if middle not in pair)
    if prologue:  # the conv's own in-place pair refers to the padded copy: it now reads the input
        inplace = tuple((out, first.inputs[0] if source == middle else source) for out, source in second.inplace)
    inputs = first.inputs + tuple(name for name in second.inputs if name != middle and name not in first.inputs)
    return Step(
        name=second.name, kernel=f"{first.kernel}+{second.kernel}", inputs=inputs, outputs=second.outputs,
        workspace=first.workspace + second.workspace, inplace=inplace,
        inplace_workspace=max(first.inplace_workspace, second.inplace_workspace), window=window,
        macs=first.macs + second.macs,
    )


def _step(graph: Graph, node: Node, inputs: tuple[str, ...], outputs: tuple[str, ...],
          tensors: dict[str, Tensor], inplace_depthwise: bool = True) -> Step:
    output = node.outputs[0]
    numel = math.prod(int(d) for d in output.shape if isinstance(d, int))
    window: Window | None = None
    inplace: tuple[tuple[str, str], ...] = ()
    inplace_workspace = 0
    macs = 0
    if node.op in ("nn.conv", "quant.conv") and len(node.inputs[1].shape) == 4:
        weight = node.inputs[1].shape
        macs = numel * int(math.prod(weight[1:]))
        window = _window(node, tuple(weight[2:]))
        groups = node.attrs.get("groups", 1)
        channels = node.inputs[0].shape[1]
        if inplace_depthwise and groups > 1 and groups == channels == weight[0] and inputs:
            # MCUNet's in-place depthwise: channel c is computed into a one-channel buffer, then
            # copied over input channel c, which no later channel reads
            inplace = ((outputs[0], inputs[0]),)
            inplace_workspace = numel // weight[0] * np.dtype(tensors[outputs[0]].dtype).itemsize
    elif node.op in ("nn.max_pool", "nn.avg_pool") and len(node.attrs["kernel"]) == 2:
        window = _window(node, tuple(node.attrs["kernel"]))
        macs = numel * int(math.prod(node.attrs["kernel"]))
    elif node.op.split(".")[0] == "math" or node.op in POINTWISE_QUANT:
        same_shape = all(tensors[name].shape == tensors[outputs[0]].shape for name in inputs)
        window = POINTWISE if same_shape and len(output.shape) == 4 else None
        same_size = same_shape and all(tensors[name].nbytes == tensors[outputs[0]].nbytes for name in inputs)
        inplace = tuple((outputs[0], name) for name in inputs) if same_size else ()
        macs = numel
    elif node.op == "tensor.pad" and _spatial_constant_pad(node):
        pads = node.attrs["pads"]
        window = Window((1, 1), (1, 1), (pads[2], pads[3]))
    elif node.op in VIEW_OPS and inputs:
        inplace = ((outputs[0], inputs[0]),)
    elif node.op == "nn.linear":
        macs = numel * int(node.inputs[1].shape[0])
    return Step(node.name, node.op, inputs, outputs, 0, inplace, inplace_workspace, window, macs)


def _spatial_constant_pad(node: Node) -> bool:
    """A constant pad of H and W only (not N or C), by non-negative amounts, on an NCHW tensor."""
    pads = node.attrs["pads"]
    return (len(node.outputs[0].shape) == 4 and node.attrs["mode"] == "constant" and len(pads) == 8
            and pads[0] == pads[1] == pads[4] == pads[5] == 0 and min(pads) >= 0)


def _window(node: Node, kernel: tuple[int, ...]) -> Window:
    strides = node.attrs.get("strides") or (1, 1)
    pads = node.attrs.get("pads") or (0, 0, 0, 0)
    dilations = node.attrs.get("dilations") or (1, 1)
    return Window(tuple(kernel), tuple(strides), (pads[0], pads[1]), tuple(dilations))
