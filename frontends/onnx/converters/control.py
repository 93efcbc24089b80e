"""Control flow resolved at import: If becomes its branch (constant condition) or a select."""

from __future__ import annotations

import numpy as np
import onnx

from ....ir.graph import Value
from ..importer import ConverterResult, ImportContext, OnnxNode, SequenceValue, converter
from .common import reshape


def _inline(ctx: ImportContext, branch: onnx.GraphProto) -> list:
    for tensor in branch.initializer:
        ctx.initializers.setdefault(tensor.name, tensor)
    ctx.convert_nodes(branch.node)
    return [ctx.entry(output.name) for output in branch.output]


@converter("If")
def convert_if(ctx: ImportContext, node: OnnxNode) -> ConverterResult:
    """A constant condition inlines one branch. Otherwise both branches are computed and each
    output is ``where(condition, then, else)``, which needs outputs of one shape and dtype and
    branches without side effects (ONNX branches have none)."""
    condition_value = ctx.input(node, 0)
    condition = ctx.constant(condition_value)
    if condition is not None:
        chosen = node.attr("then_branch") if bool(np.asarray(condition).reshape(-1)[0]) else node.attr("else_branch")
        return _inline(ctx, chosen)
    then_outputs = _inline(ctx, node.attr("then_branch"))
    else_outputs = _inline(ctx, node.attr("else_branch"))
    if condition_value.type.numel != 1:
        ctx.refuse(f"condition of shape {condition_value.shape} is not a single value")
    flag = reshape(ctx, condition_value, ())
    results: list[Value] = []
    for index, (then_value, else_value) in enumerate(zip(then_outputs, else_outputs)):
        if isinstance(then_value, SequenceValue) or isinstance(else_value, SequenceValue):
            ctx.refuse("branches produce sequences and the condition is computed at run time")
        if then_value.type != else_value.type:
            ctx.refuse(f"branches produce {then_value.type} and {else_value.type} and the condition is computed at run time")
        results.append(ctx.emit("math.where", flag, then_value, else_value, output=index))
    return results
