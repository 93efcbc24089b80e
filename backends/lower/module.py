"""``lower_graph``: a verified optc Graph becomes a Relax IRModule with one function, ``main``.

``main`` takes the graph inputs, then every param, as parameters (weights stay out of the
compiled library: the artifact stores them and the runtime passes them in), and returns a tuple
with one field per graph output, in order.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax

from ...errors import LoweringError, OptcError
from ...ir.graph import Graph, Node, Value
from ...ir.verify import verify
from .context import LowerContext
from .table import LOWERINGS, lowering_for

ENTRY = "main"
# what relax.transform.LiftTransformParams names the weight-only part of main (run once at load)
TRANSFORM_PARAMS = f"{ENTRY}_transform_params"


def function_params(graph: Graph) -> list[Value]:
    """The values ``main`` takes, in order: graph inputs, then params in graph order."""
    return list(graph.inputs) + list(graph.params)


def parameter_name(value: Value) -> str:
    """The name of ``main``'s parameter for a graph input or param (libraries record it)."""
    return _identifier(value.name)


def lower_graph(graph: Graph) -> tvm.IRModule:
    """Lower ``graph`` to a Relax IRModule; a LoweringError names the node that cannot be lowered."""
    verify(graph)
    _check_coverage(graph)
    builder = relax.BlockBuilder()
    ctx = LowerContext(builder)
    lowered: dict[int, relax.Expr] = ctx.lowered
    params = []
    for value in function_params(graph):
        tensor_type = relax.TensorType([ctx.declare_dim(dim) for dim in value.shape], value.dtype)
        var = relax.Var(parameter_name(value), tensor_type)
        lowered[id(value)] = var
        params.append(var)
    with builder.function(ENTRY, params, attrs={"num_input": len(graph.inputs)}):
        with builder.dataflow():
            for node in graph.nodes:
                for value, var in zip(node.outputs, _lower_node(ctx, node, [lowered[id(v)] for v in node.inputs])):
                    lowered[id(value)] = var
            ctx.node = None
            result = builder.emit_output(relax.Tuple([lowered[id(value)] for value in graph.outputs]))
        builder.emit_func_output(result)
    # a lowering may read past a producer (quant.conv through a zero-point tensor.pad): drop what is left unused
    return relax.transform.DeadCodeElimination()(builder.get())


def _lower_node(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> list[relax.Var]:
    lowering = lowering_for(node)
    ctx.node = node
    try:
        result = lowering(ctx, node, args)
        exprs = [result] if isinstance(result, relax.Expr) else list(result)
        if len(exprs) != len(node.outputs):
            raise ctx.error(f"lowering gave {len(exprs)} results for {len(node.outputs)} outputs")
        outputs = [ctx.emit(expr, _identifier(value.name)) for value, expr in zip(node.outputs, exprs)]
    except OptcError:
        raise
    except Exception as error:  # TVM reports bad operator arguments as TVMError/ValueError/...
        shown = ", ".join(f"%{value.name}: {value.type}" for value in node.inputs)
        raise LoweringError(
            f"node {node.name} ({node.op}) could not be lowered to Relax: {_first_line(error)} "
            f"[inputs {shown}; attrs {node.attrs}]"
        ) from error
    for value, var in zip(node.outputs, outputs):
        _check_type(ctx, value, var)
    return outputs


def _check_type(ctx: LowerContext, value: Value, var: relax.Var) -> None:
    """The lowered tensor must have the type the IR inferred (catches lowering bugs early)."""
    dtype = ctx.dtype_of(var)
    shape = ctx.shape_of(var)
    static_mismatch = len(shape) != value.type.rank or any(
        isinstance(expected, int) and isinstance(actual, int) and expected != actual
        for expected, actual in zip(value.shape, shape)
    )
    if dtype != value.dtype or static_mismatch:
        raise ctx.error(
            f"lowering of %{value.name} produced {dtype}{shape} but the IR infers {value.type}; "
            "this is a bug in the lowering table"
        )


def _check_coverage(graph: Graph) -> None:
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in LOWERINGS:
            missing.setdefault(node.op, []).append(node.name)
    if missing:
        listed = "; ".join(f"{op} (nodes {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" for op, names in sorted(missing.items()))
        raise LoweringError(
            f"graph {graph.name} uses {len(missing)} op(s) with no TVM lowering: {listed}; "
            "add them with @lowers(...) in optc/backends/lower/"
        )


def _identifier(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"v_{cleaned}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # TVM errors carry a C++ backtrace; the message is the last non-empty line
    return (lines[-1] if lines else type(error).__name__)[:500]
