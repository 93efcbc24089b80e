"""Fold an int8 product's epilogue into the VNNI kernel's stores (no int32 result in memory), and a
padding block into the kernel's reads (``fold_prologue``: no padded copy of the input).

Without this, a dynamic-int8 linear layer writes its int32 product to a buffer as big as the
output and a second loop nest reads it back to dequantize (and add the bias, apply GELU, ...):
for GPT-2's 128 x 50257 head that is 26 MB written and read again. The kernel (``dense_kernel``)
stores each tile as scalar stores in a 16-lane vectorized loop::

    for lane in T.vectorized(16):
        C[row, col + lane] = acc[... + lane] - colsum[... + lane]

``fold_epilogue`` rewrites those stores into the epilogue's own, with the epilogue's value
expression read at that element, and deletes the epilogue's loop nest and the int32 buffer::

    for lane in T.vectorized(16):
        out[row, col + lane] = T.Cast("float32", acc[... + lane] - colsum[... + lane]) * (x_scale[()] * w_scales[col + lane])

TVM's vectorizer makes the store one vector expression again. Only an epilogue of one block
(``find_anchor`` inlines the chain into it) that reads the product at its own iterators, element
for element, is folded (``match_epilogue``); anything else keeps its separate loop nest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm_ffi
from tvm import ir, s_tir, tirx

LOAD = ir.expr.TensorLoad  # the class of tirx.BufferLoad(...) values in TVM 0.27 (BufferLoad is a function)


@dataclass(frozen=True)
class Epilogue:
    block: s_tir.SBlock
    rows: list[tuple[tirx.Var, int]]  # the iterators the product's rows flatten, with their extents
    columns: list[tuple[tirx.Var, int]]  # the same for its columns (a conv's H x W pixels)
    store: tirx.BufferStore  # what the block stores: the output element, a function of the iterators


def _loads_of(expr: tirx.Expr, buffer: tirx.Buffer) -> list[tirx.BufferLoad]:
    found: list[tirx.BufferLoad] = []
    tvm_ffi.structural_walk(expr, [(LOAD, lambda load: found.append(load) if load.source.same_as(buffer) else None)])
    return found


def _static(value) -> int | None:
    return int(value.value) if isinstance(value, tirx.IntImm) else None


def match_epilogue(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV, result: tirx.Buffer, rows: int,
                   columns: int) -> Epilogue | None:
    """The epilogue block as an ``Epilogue`` when it can be folded, else None: one store, spatial
    iterators (rows..., column) over the whole product, the product read only at those iterators."""
    block = sch.get(block_rv)
    store = block.body
    if block.init is not None or not isinstance(store, tirx.BufferStore) or store.buffer.same_as(result):
        return None
    if any(param.same_as(result) for param in sch.mod["main"].params):
        return None  # the product is an output of the function too: it must be stored
    iters = list(block.iter_vars)
    extents = [_static(iv.dom.extent) for iv in iters]
    if not iters or any(iv.iter_type != tirx.IterVar.DataPar for iv in iters) or None in extents:
        return None
    split = next((k for k in range(len(iters) + 1)
                  if math.prod(extents[:k]) == rows and math.prod(extents[k:]) == columns), None)
    if split is None:
        return None
    loads = _loads_of(store.value, result)
    variables = [iv.var for iv in iters]
    for load in loads:
        # unit dims of the product may be indexed by a constant 0 instead of an iterator
        indices = [index for index, size in zip(load.indices, result.shape)
                   if not (_static(index) == 0 and _static(size) == 1)]
        if len(indices) != len(variables) or not all(index.same_as(var) for index, var in zip(indices, variables)):
            return None
    if not loads or any(_loads_of(index, result) for index in store.indices):
        return None
    pairs = list(zip(variables, extents))
    return Epilogue(block, pairs[:split], pairs[split:], store)


def _unflatten(flat: tirx.Expr, iters: list[tuple[tirx.Var, int]]) -> dict[tirx.Var, tirx.Expr]:
    """The iterators at flattened index ``flat`` (row-major over their extents)."""
    values: dict[tirx.Var, tirx.Expr] = {}
    stride = 1
    for var, extent in reversed(iters):
        value = flat if stride == 1 else tirx.floordiv(flat, stride)
        values[var] = tirx.const(0, str(var.ty.dtype)) if extent == 1 else tirx.floormod(value, extent)
        stride *= extent
    return values


def _substitute(node, values: dict, result: tirx.Buffer | None = None, element: tirx.Expr | None = None):
    """``node`` with iterators replaced by ``values`` and loads of ``result`` by ``element``.

    Every ``Let`` gets a variable of its own (fast math binds its intermediate values): the value
    is copied into each of the kernel's stores, and TIR allows one definition per variable.
    """
    values = dict(values)

    def visit_var(var, _mutator):
        for old, new in values.items():
            if var.same_as(old):
                return new
        return var

    def visit_load(load, mutator):
        if result is not None and load.source.same_as(result):
            return element
        return mutator.default_mutate(load)

    def visit_let(let, mutator):
        bound = mutator.mutate(let.value)
        fresh = tirx.Var(let.var.name, let.var.ty)
        values[let.var] = fresh
        return tirx.Let(fresh, bound, mutator.mutate(let.body))

    return tvm_ffi.structural_mutate(node, [(LOAD, visit_load), (tirx.Let, visit_let), (tirx.Var, visit_var)])


def _aliases(body: tirx.Stmt, buffer: tirx.Buffer) -> list[tirx.Buffer]:
    """``buffer`` and the buffers declared on its data (``T.decl_buffer(..., data=buffer.data)``)."""
    found = [buffer]

    def visit(decl) -> None:
        source = decl.data.args[0] if isinstance(decl.data, ir.expr.Call) and decl.data.args else None
        if source is not None and any(source.same_as(alias) for alias in found):
            found.append(decl.buffer)

    tvm_ffi.structural_walk(body, [(tirx.DeclBuffer, visit)])
    return found


def _whole(buffer: tirx.Buffer) -> tirx.BufferRegion:
    return tirx.BufferRegion(buffer, [ir.Range.from_min_extent(0, size) for size in buffer.shape])


def _cast(value: tirx.Expr, dtype: str) -> tirx.Expr:
    return value if str(value.ty.dtype) == dtype else tirx.Cast(dtype, value)


def fold_epilogue(sch: s_tir.Schedule, kernel_rv: s_tir.schedule.SBlockRV, epilogue_rv: s_tir.schedule.SBlockRV,
                  epilogue: Epilogue, result: tirx.Buffer) -> s_tir.Schedule:
    """A schedule of the func with the epilogue computed in the kernel's stores (module docstring)."""
    func = sch.mod["main"]
    kernel = sch.get(kernel_rv)
    loops = sch.get_loops(epilogue_rv)
    nest = sch.get(loops[0]) if loops else None
    views = [match.buffer for match in kernel.match_buffers if match.source.source.same_as(result)]
    if nest is None or len(views) != 1:
        raise ValueError("the kernel does not write the product through one matched buffer")
    # the kernel stores through the matched buffer or through a 2-d view of its data (a conv's [F, H*W])
    aliases = _aliases(kernel.body, views[0])
    store = epilogue.store
    rewritten = []

    def visit_store(node, mutator):
        if not any(node.buffer.same_as(alias) for alias in aliases):
            return mutator.default_mutate(node)
        if len(node.indices) != 2:
            raise ValueError("the kernel's stores are not (row, column)")
        row, column = node.indices
        values = {**_unflatten(row, epilogue.rows), **_unflatten(column, epilogue.columns)}
        values = {var: _cast(value, str(var.ty.dtype)) for var, value in values.items()}
        rewritten.append(node)
        return tirx.BufferStore(store.buffer, _substitute(store.value, values, result, node.value),
                                [_substitute(index, values) for index in store.indices])

    def visit_decl(node, mutator):  # the views of the product go with it
        if any(node.buffer.same_as(alias) for alias in aliases):
            return tirx.Evaluate(0)
        return mutator.default_mutate(node)

    def rewrite(node):
        body = tvm_ffi.structural_mutate(node.body, [(tirx.BufferStore, visit_store), (tirx.DeclBuffer, visit_decl)])
        reads = list(node.reads) + [_whole(region.source) for region in epilogue.block.reads
                                    if not region.source.same_as(result)]
        return s_tir.SBlock(node.iter_vars, reads, [_whole(store.buffer)], node.name_hint, body, node.init,
                            node.alloc_buffers,
                            [match for match in node.match_buffers if not match.buffer.same_as(aliases[0])],
                            node.annotations)

    body = _replace_kernel(func, kernel, rewrite, result, nest)  # the int32 product is no longer allocated
    if not rewritten:
        raise ValueError("found no store of the product in the kernel")
    return s_tir.Schedule(func.with_body(body))


# ---- the prologue: a padding copy read in the kernel ----------------------------------------------------------

@dataclass(frozen=True)
class Padding:
    """A ``pad_temp`` block ``P[.., y, x] = if_then_else(inside, X[.., y - top, x - left], value)``."""

    block: s_tir.SBlock
    top: int
    left: int
    height: int  # X's rows and columns
    width: int
    value: int

    @property
    def spec(self) -> tuple[int, int, int, int, int]:
        """(top, left, height, width, value): what the kernels' shapes take (``ConvShape.padding``)."""
        return self.top, self.left, self.height, self.width, self.value


def match_padding(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> Padding | None:
    """The producer block as a ``Padding`` of the last two axes by a constant, or None."""
    block = sch.get(block_rv)
    store = block.body
    if block.init is not None or not isinstance(store, tirx.BufferStore) or len(store.indices) != 4:
        return None
    value = store.value
    if not (isinstance(value, ir.expr.Call) and str(value.op.name).endswith(".if_then_else")):
        return None
    _, inside, outside = value.args
    if not isinstance(inside, LOAD) or _static(outside) is None or len(inside.indices) != 4:
        return None
    source = inside.source
    offsets = []
    for position, (stored, loaded) in enumerate(zip(store.indices, inside.indices)):
        if _static(stored) is not None:  # a unit axis
            if _static(loaded) != _static(stored):
                return None
            offsets.append(0)
            continue
        found = _constant_difference(loaded, stored)
        if found is None or (position < 2 and found != 0):
            return None
        offsets.append(-found)
    height, width = (_static(size) for size in source.shape[2:])
    if height is None or width is None:
        return None
    return Padding(block, offsets[2], offsets[3], height, width, _static(outside))


def _constant_difference(loaded: tirx.Expr, stored: tirx.Var) -> int | None:
    """``c`` when ``loaded`` is ``stored + c`` (``stored`` alone: 0)."""
    from tvm.sym.pattern import detect_linear_equation  # noqa: PLC0415

    found = detect_linear_equation(loaded, [stored])
    if len(found) != 2 or _static(found[0]) != 1 or _static(found[1]) is None:
        return None
    return _static(found[1])


def fold_prologue(sch: s_tir.Schedule, kernel_name: str, padding: Padding) -> s_tir.Schedule:
    """The func with the kernel reading the padding block's source where it read the padded buffer
    (the block's value at that element), and the padding loop nest and buffer gone. The kernel
    must read only elements inside the source there (it writes the padding itself): the
    ``if_then_else`` is then always true, and TVM's simplifier drops it."""
    func = sch.mod["main"]
    kernel = sch.get(sch.get_sblock(kernel_name))
    producer_rv = sch.get_sblock(padding.block.name_hint)
    producer = sch.get(producer_rv)
    loops = sch.get_loops(producer_rv)
    nest = sch.get(loops[0]) if loops else None
    padded = producer.body.buffer
    views = [match for match in kernel.match_buffers if match.source.source.same_as(padded)]
    if nest is None or len(views) != 1:
        raise ValueError("the kernel does not read the padded buffer through one matched buffer")
    view, starts = views[0].buffer, [region.min for region in views[0].source.region]
    stored = producer.body
    iters = {iv.var: iv for iv in producer.iter_vars}

    def visit_load(load, mutator):
        if not load.source.same_as(view):
            return mutator.default_mutate(load)
        values = {}
        for index, start, at in zip(load.indices, starts, stored.indices):
            if any(at.same_as(var) for var in iters):
                values[next(var for var in iters if at.same_as(var))] = _cast(index + start, str(at.ty.dtype))
        return _substitute(stored.value, values)

    def rewrite(node):
        body = tvm_ffi.structural_mutate(node.body, [(LOAD, visit_load)])
        reads = [region for region in node.reads if not region.source.same_as(padded)]
        reads += [_whole(region.source) for region in producer.reads]
        return s_tir.SBlock(node.iter_vars, reads, node.writes, node.name_hint, body, node.init, node.alloc_buffers,
                            [match for match in node.match_buffers if not match.buffer.same_as(view)], node.annotations)

    return s_tir.Schedule(func.with_body(_replace_kernel(func, kernel, rewrite, padded, nest)))


def _replace_kernel(func: tirx.PrimFunc, kernel: s_tir.SBlock, rewrite, dropped: tirx.Buffer, nest: tirx.For) -> tirx.Stmt:
    """``func``'s body with the ``kernel`` block replaced by ``rewrite(kernel)``, the buffer ``dropped``
    no longer allocated in the root block, and the loop nest ``nest`` (the folded block's) deleted."""

    def visit_block(node, mutator):
        if node.same_as(kernel):
            return rewrite(node)
        if node.same_as(func.body.block):
            body = mutator.mutate(node.body)
            return s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint, body, node.init,
                                [buffer for buffer in node.alloc_buffers if not buffer.same_as(dropped)],
                                node.match_buffers, node.annotations)
        return mutator.default_mutate(node)

    def visit_for(node, mutator):
        return tirx.Evaluate(0) if node.same_as(nest) else mutator.default_mutate(node)

    return tvm_ffi.structural_mutate(func.body, [(s_tir.SBlock, visit_block), (tirx.For, visit_for)])
