"""Which kernel outputs may overwrite which inputs, read from the kernel's TIR.

A pair (output, input) is safe when every statement that reads the input either runs before the
first statement that writes the output (a kernel that copies or pads its input into scratch
first), or is a spatial block that reads the input only at the flat offset it writes (an
elementwise epilogue such as a residual add, a reshape). Kernels that ``schedule.py`` builds to
run in place (MCUNet's channel-by-channel depthwise) say so in the ``INPLACE_ATTR`` attribute.
"""

from __future__ import annotations

import tvm
import tvm.sym
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.stmt import SBlock, SBlockRealize

INPLACE_ATTR = "optc.inplace_inputs"  # params a kernel's output may overwrite, by construction


def inplace_pairs(func: tirx.PrimFunc, arguments: list[str], outputs: list[str]) -> tuple[tuple[str, str], ...]:
    """(output, input) pairs this kernel computes correctly when both share one buffer.

    Safe when every statement that reads the input either runs before the first statement that
    writes the output (a depthwise conv that pads its input into workspace first), or is a
    spatial block that reads the input only at the flat offset it writes (an elementwise
    epilogue such as a residual add, a reshape).
    """
    buffers = list(func.params)
    if len(buffers) != len(arguments) + len(outputs):
        return ()
    pairs = []
    by_construction = [int(i) for i in (func.attrs[INPLACE_ATTR] if func.attrs is not None and INPLACE_ATTR in func.attrs else [])]
    if len(outputs) == 1:
        pairs += [(outputs[0], arguments[index]) for index in by_construction if arguments.count(arguments[index]) == 1]
    for out_index, output in enumerate(outputs):
        out_buffer = buffers[len(arguments) + out_index]
        for in_index, source in enumerate(arguments):
            in_buffer = buffers[in_index]
            if source in outputs or in_buffer.dtype != out_buffer.dtype or (output, source) in pairs:
                continue
            if arguments.count(source) > 1:
                continue
            try:
                safe = _inplace_safe(func, in_buffer, out_buffer)
            except Exception:  # an unfamiliar TIR shape: not safe
                safe = False
            if safe:
                pairs.append((output, source))
    return tuple(pairs)


def _top_statements(func: tirx.PrimFunc) -> list:
    body = func.body
    if isinstance(body, SBlockRealize):
        body = body.block.body
    return list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]


def _blocks(stmt) -> list:
    return [node for node in walk(stmt) if isinstance(node, SBlock)]


def _inplace_safe(func: tirx.PrimFunc, in_buffer, out_buffer) -> bool:
    writing = False
    for stmt in _top_statements(func):
        blocks = _blocks(stmt)
        writes = any(any(region.source.same_as(out_buffer) for region in block.writes) for block in blocks)
        writing = writing or writes
        if not writing:
            continue
        for block in blocks:
            if any(region.source.same_as(in_buffer) for region in block.reads):
                if not _pointwise(block, in_buffer, out_buffer):
                    return False
    return True


def _pointwise(block, in_buffer, out_buffer) -> bool:
    """A spatial block ``out[f(v)] = g(in[f(v)], ...)`` that writes each element once."""
    if any(iter_var.iter_type != tirx.IterVar.DataPar for iter_var in block.iter_vars):
        return False
    store = block.body
    if not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(out_buffer):
        return False
    store_vars = [node for index in store.indices for node in walk(index) if isinstance(node, tirx.Var)]
    if any(not any(iter_var.var.same_as(var) for var in store_vars) for iter_var in block.iter_vars):
        return False
    analyzer = tvm.sym.Analyzer()
    for iter_var in block.iter_vars:
        analyzer.bind(iter_var.var, iter_var.dom)
    target = _flat(store.indices, out_buffer.shape)
    loads = [node for node in walk(store.value) if isinstance(node, TensorLoad)]
    return all(
        _is_zero(analyzer.canonical_simplify(_flat(load.indices, in_buffer.shape) - target))
        for load in loads if load.source.same_as(in_buffer)
    )


def _is_zero(expr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr.value) == 0


_CHILDREN = ("seq", "block", "init", "body", "then_case", "else_case", "indices", "value", "a", "b", "args",
             "condition", "true_value", "false_value", "min", "extent")


def walk(node):
    """Every TIR statement and expression under ``node`` (TVM 0.27 has no Python TIR visitor)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None:
            continue
        if isinstance(current, (list, tuple, tvm_ffi.Array)):
            stack.extend(current)
            continue
        yield current
        if isinstance(current, (tirx.Var, tirx.IntImm, tirx.FloatImm)):
            continue
        for field in _CHILDREN:
            child = getattr(current, field, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)


def _flat(indices, shape):
    offset = tirx.const(0, "int64")
    for index, extent in zip(indices, shape):
        offset = offset * tirx.Cast("int64", extent) + tirx.Cast("int64", index)
    return offset
