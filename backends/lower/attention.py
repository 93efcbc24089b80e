"""``nn.attention`` as one TE computation (one kernel): scores, softmax and the weighted sum.

With a static key count the keys are padded to a multiple of ``KEY_LANES`` and the softmax's two
row reductions (max and sum) are split by lane: ``part[i, l] = max_c s[i, c * L + l]``, then
``max_l part[i, l]``. Each part is a vector of independent accumulators, so the CPU schedule
(``schedules/attention.py``) vectorizes the reductions that would otherwise be one serial
dependency chain per row, and no loop is ragged (197 ViT tokens: 13 x 16 = 208 columns).

Padded keys read the last real key and value (no out-of-bounds access) and score ``-inf``, so
their softmax weight is exactly 0. A row with no key left (all masked) is NaN after the softmax
and becomes zeros, as in torch's SDPA. With a symbolic key count the softmax is TVM's
``topi.nn.softmax`` (four blocks, serial reductions).

Blocks (the schedule matches them by name): ``keys_t`` (keys transposed and padded), ``scores``, ``masked_scores`` (padding, causal and
mask), ``row_max_part``, ``row_max``, ``row_exp``, ``row_sum_part``, ``row_sum``, ``weights``
(normalized; NaN rows to 0 when masked), ``attention``.
"""

from __future__ import annotations

from tvm import te, tirx, topi

KEY_LANES = 16  # the lane split of the row reductions (a multiple of every CPU's float32 vector)


def attention_te(query: te.Tensor, key: te.Tensor, value: te.Tensor, mask: te.Tensor | None = None, *,
                 scale: float, causal: bool) -> te.Tensor:
    """softmax(query @ key^T * scale [causal] [mask]) @ value; a fully masked query gets zeros."""
    keys = key.shape[-2]
    if not isinstance(keys, tirx.IntImm | int):
        return _attention_symbolic(query, key, value, mask, scale=scale, causal=causal)
    return _attention_padded(query, key, value, mask, scale=scale, causal=causal)


def _mask_value(mask: te.Tensor, index: tuple, key_index: tirx.Expr) -> tirx.Expr:
    """``mask`` broadcast to the scores' ``index`` (last axis = keys, read at ``key_index``)."""
    offset = len(index) - len(mask.shape)
    full = (*index[:-1], key_index)
    return mask[tuple(0 if int(mask.shape[axis]) == 1 else full[axis + offset] for axis in range(len(mask.shape)))]


def _apply_mask(result: tirx.Expr, mask: te.Tensor | None, index: tuple, key_index: tirx.Expr, causal: bool,
                lowest: tirx.Expr) -> tirx.Expr:
    *_, i, _ = index
    if causal:
        result = tirx.if_then_else(key_index > i, lowest, result)
    if mask is not None:
        entry = _mask_value(mask, index, key_index)
        result = tirx.if_then_else(entry, result, lowest) if mask.dtype == "bool" else result + entry
    return result


def _attention_padded(query, key, value, mask, *, scale: float, causal: bool) -> te.Tensor:
    dtype = query.dtype
    *batch, queries, depth = query.shape
    keys, value_depth = int(key.shape[-2]), value.shape[-1]
    padded = -(-keys // KEY_LANES) * KEY_LANES
    # at least two chunks: a reduction of extent 1 came out wrong from TVM 0.27's C path (the
    # microcontroller target read the partial maximum before updating it)
    lanes = KEY_LANES if padded >= 2 * KEY_LANES else KEY_LANES // 2
    chunks = padded // lanes
    lowest = tirx.const(float("-inf"), dtype)
    zero = tirx.const(0, dtype)

    def real(j: tirx.Expr) -> tirx.Expr:
        if padded == keys:
            return j
        var = j.var if isinstance(j, tirx.IterVar) else j  # a reduce axis is an IterVar
        return tirx.min(var, tirx.const(keys - 1, str(var.ty)))

    # the keys transposed (and padded with the last key): the scores' vectors run along the keys
    keys_t = te.compute((*batch, depth, padded), lambda *index: key[(*index[:-2], real(index[-1]), index[-2])],
                        name="keys_t")
    inner = te.reduce_axis((0, depth), name="d")
    scores = te.compute((*batch, queries, padded), lambda *index: te.sum(
        query[(*index[:-1], inner)] * keys_t[(*index[:-2], inner, index[-1])] * tirx.const(scale, dtype),
        axis=inner), name="scores")

    def masked(*index):
        j = index[-1]
        result = _apply_mask(scores[index], mask, index, real(j), causal, lowest)
        return tirx.if_then_else(j >= keys, lowest, result) if padded != keys else result

    if causal or mask is not None or padded != keys:
        scores = te.compute(scores.shape, masked, name="masked_scores")

    chunk = te.reduce_axis((0, chunks), name="c")
    max_part = te.compute((*batch, queries, lanes), lambda *index: te.max(
        scores[(*index[:-1], chunk * lanes + index[-1])], axis=chunk), name="row_max_part")
    lane = te.reduce_axis((0, lanes), name="l")
    row_max = te.compute((*batch, queries), lambda *index: te.max(max_part[(*index, lane)], axis=lane), name="row_max")
    row_exp = te.compute(scores.shape, lambda *index: te.exp(scores[index] - row_max[index[:-1]]), name="row_exp")
    chunk_sum = te.reduce_axis((0, chunks), name="c")
    sum_part = te.compute((*batch, queries, lanes), lambda *index: te.sum(
        row_exp[(*index[:-1], chunk_sum * lanes + index[-1])], axis=chunk_sum), name="row_sum_part")
    lane_sum = te.reduce_axis((0, lanes), name="l")
    row_sum = te.compute((*batch, queries), lambda *index: te.sum(sum_part[(*index, lane_sum)], axis=lane_sum),
                         name="row_sum")

    def normalized(*index):
        weight = row_exp[index] / row_sum[index[:-1]]
        # softmax of a row of only -inf is NaN; such a query attends to nothing (torch SDPA: zeros)
        return tirx.if_then_else(tirx.isnan(weight), zero, weight) if causal or mask is not None else weight

    weights = te.compute(scores.shape, normalized, name="weights")
    reduce_keys = te.reduce_axis((0, padded), name="k")
    return te.compute((*batch, queries, value_depth), lambda *index: te.sum(
        weights[(*index[:-1], reduce_keys)] * value[(*index[:-2], real(reduce_keys), index[-1])], axis=reduce_keys),
        name="attention")


def _attention_symbolic(query, key, value, mask, *, scale: float, causal: bool) -> te.Tensor:
    dtype = query.dtype
    *batch, queries, depth = query.shape
    keys, value_depth = key.shape[-2], value.shape[-1]
    lowest = tirx.const(float("-inf"), dtype)
    inner = te.reduce_axis((0, depth), name="d")
    scores = te.compute((*batch, queries, keys), lambda *index: te.sum(
        query[(*index[:-1], inner)] * key[(*index[:-2], index[-1], inner)] * tirx.const(scale, dtype), axis=inner),
        name="scores")
    if causal or mask is not None:
        scores = te.compute(scores.shape, lambda *index: _apply_mask(scores[index], mask, index, index[-1], causal,
                                                                     lowest), name="masked_scores")
    weights = topi.nn.softmax(scores, axis=-1)
    if causal or mask is not None:
        weights = te.compute(weights.shape, lambda *index: tirx.if_then_else(
            tirx.isnan(weights[index]), tirx.const(0, dtype), weights[index]), name="guarded_weights")
    reduce_keys = te.reduce_axis((0, keys), name="k")
    return te.compute((*batch, queries, value_depth), lambda *index: te.sum(
        weights[(*index[:-1], reduce_keys)] * value[(*index[:-2], reduce_keys, index[-1])], axis=reduce_keys),
        name="attention")
