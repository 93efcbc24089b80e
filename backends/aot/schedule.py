"""A memory schedule for the C kernels: small scratch, and channel-by-channel depthwise in place.

Unscheduled, a fused conv + bias + ReLU from TVM keeps a padded copy of its input and a
full-size accumulator in workspace: about twice the activations. ``memory_schedule`` inlines
what can be inlined and computes epilogues per output element; depthwise convs and pools (each
output channel reads only its own input channel) compute one channel into a one-channel buffer
and copy it out, so their output may overwrite their input (MCUNet's in-place depthwise).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.stmt import SBlock

from .inplace import INPLACE_ATTR, walk


def memory_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Keep a kernel's scratch small: inline padding and elementwise stages into their readers,
    and compute each reduction's elementwise consumer per output element (``reverse_compute_at``
    under the reduction's spatial loops), so the reduction's buffer shrinks to one element.

    Unscheduled, a fused conv + bias + ReLU keeps a padded copy of its input and a full-size
    accumulator in workspace: about twice the activations. A primitive that does not apply is
    skipped; the result computes the same values in the same order per element.
    """
    schedule = s_tir.Schedule(func)
    changed = True
    while changed:
        changed = False
        for block in _block_names(schedule):
            try:
                schedule.compute_inline(schedule.get_sblock(block))
                changed = True
            except Exception:  # an output, a reduction, or not injective: keep it
                continue
    for block in _block_names(schedule):
        try:
            sblock = schedule.get_sblock(block)
            consumers = schedule.get_consumers(sblock)
            stmt = schedule.get(sblock)
            spatial = sum(1 for iter_var in stmt.iter_vars if iter_var.iter_type == tirx.IterVar.DataPar)
            if len(consumers) != 1 or spatial == len(stmt.iter_vars) or spatial == 0:
                continue
            loops = schedule.get_loops(sblock)
            schedule.reverse_compute_at(consumers[0], loops[spatial - 1])
        except Exception:
            continue
    channel_input = _depthwise_in_place(schedule)
    result = schedule.mod["main"]
    if channel_input is not None:
        result = result.with_attr(INPLACE_ATTR, [channel_input])
    if func.attrs is not None and "global_symbol" in func.attrs:
        result = result.with_attr("global_symbol", func.attrs["global_symbol"])
    return result


def _depthwise_in_place(schedule) -> int | None:
    """MCUNet's in-place depthwise: compute one channel into a one-channel buffer, then copy it out.

    For a depthwise conv (each output channel reads only its own input channel) the copy of
    channel c runs after every read of input channel c, and channels after c read only their
    own, so the output may overwrite the input. Returns the index of the input param that may
    be overwritten, or None when the kernel is not a depthwise conv of that shape.
    """
    func = schedule.mod["main"]
    params = list(func.params)
    output = params[-1]
    blocks = [node for node in walk(func.body) if isinstance(node, SBlock) and node.name_hint != "root"]
    reductions = [b for b in blocks if any(v.iter_type != tirx.IterVar.DataPar for v in b.iter_vars)]
    if len(reductions) != 1:
        return None
    conv = reductions[0]
    spatial = [v for v in conv.iter_vars if v.iter_type == tirx.IterVar.DataPar]
    reduce_vars = [v for v in conv.iter_vars if v.iter_type != tirx.IterVar.DataPar]
    if len(spatial) != 4 or not isinstance(conv.body, tirx.BufferStore):
        return None
    channel = spatial[1].var
    unit = [v.var for v in reduce_vars if int(v.dom.extent) == 1]
    source = None
    for load in (n for n in walk(conv.body.value) if isinstance(n, TensorLoad)):
        index = [p for p, param in enumerate(params[:-1]) if load.source.same_as(param)]
        if not index or len(load.indices) != 4 or len(load.source.shape) != 4:
            continue
        names = [n for n in walk(load.indices[1]) if isinstance(n, tirx.Var)]
        allowed = [channel, *unit]
        if not any(n.same_as(channel) for n in names) or not all(any(n.same_as(a) for a in allowed) for n in names):
            continue
        if load.source.dtype != output.dtype:
            continue
        source = index[0]
    if source is None:
        return None
    data = params[source]
    if sum(1 for b in blocks if any(r.source.same_as(data) for r in b.reads)) != 1:
        return None  # something else reads the input too
    if int(output.shape[1]) != int(data.shape[1]) or \
            int(output.shape[2]) * int(output.shape[3]) > int(data.shape[2]) * int(data.shape[3]):
        return None
    writers = [b for b in blocks if any(w.source.same_as(output) for w in b.writes)]
    if len(writers) != 1:
        return None
    try:
        loops = schedule.get_loops(schedule.get_sblock(conv.name_hint))
        copy = schedule.cache_write(schedule.get_sblock(writers[0].name_hint), 0, "global")
        schedule.reverse_compute_at(copy, loops[1])
    except Exception:
        return None
    return source


def _block_names(schedule) -> list[str]:
    return [node.name_hint for node in walk(schedule.mod["main"].body)
            if isinstance(node, SBlock) and node.name_hint != "root"]
