"""The recognize pass on attention: the forms exporters and captures write, masks and their
guards, and the refusals with their reasons."""

from __future__ import annotations

import numpy as np

from optc.ir import Graph, interpret, parse, sample_inputs
from optc.passes.recognize import recognize
from optc.passes.testing import check_rewrite, op_lines, refusal_reasons

TOL = {"rtol": 1e-4, "atol": 1e-5}  # a fused op rounds differently from its decomposed form


def test_attention_as_onnx_exports_vit() -> None:
    # scale on q, k transposed on its last two axes, softmax over axis 3
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[1,2,5,8], %k: float32[1,2,5,8], %v: float32[1,2,5,8]) {
  param %scale: float32[] = 0.3535533845424652
  %qs: float32[1,2,5,8] = math.mul(%q, %scale) @qs
  %kt: float32[1,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %s: float32[1,2,5,5] = linalg.matmul(%qs, %kt) @s
  %p: float32[1,2,5,5] = nn.softmax(%s) {axis=3} @p
  %y: float32[1,2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", ["nn.attention(q, k, v) {scale=0.353553}"], fired={"attention": 1}, **TOL)


def test_attention_over_a_decomposed_softmax() -> None:
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8]) {
  param %root_d: float32[] = 2.8284270763397217
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %scaled: float32[2,5,5] = math.div(%s, %root_d) @scaled
  %max: float32[2,5,1] = reduce.max(%scaled) {axes=(2,)} @max
  %shifted: float32[2,5,5] = math.sub(%scaled, %max) @shifted
  %e: float32[2,5,5] = math.exp(%shifted) @e
  %sum: float32[2,5,1] = reduce.sum(%e) {axes=(2,)} @sum
  %p: float32[2,5,5] = math.div(%e, %sum) @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", ["nn.attention(q, k, v) {scale=0.353553}"], fired={"softmax": 1, "attention": 1}, **TOL)


def test_attention_as_torch_captures_batched_matmuls() -> None:
    # torch's bmm: q, k^T, v and the weights viewed as (B*H, S, D) around the matmuls
    rewrite = recognize(verify_each=True)
    check_rewrite(rewrite, """
graph g(%q: float32[1,2,5,8], %k: float32[1,2,5,8], %v: float32[1,2,5,8], %mask: float32[1,1,5,5]) {
  param %scale: float32[] = 0.3535533845424652
  %kt: float32[1,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %q3: float32[2,5,8] = tensor.reshape(%q) {shape=(2, 5, 8)} @q3
  %kt3: float32[2,8,5] = tensor.reshape(%kt) {shape=(2, 8, 5)} @kt3
  %s3: float32[2,5,5] = linalg.matmul(%q3, %kt3) @s3
  %s: float32[1,2,5,5] = tensor.reshape(%s3) {shape=(1, 2, 5, 5)} @s
  %scaled: float32[1,2,5,5] = math.mul(%s, %scale) @scaled
  %masked: float32[1,2,5,5] = math.add(%scaled, %mask) @masked
  %p: float32[1,2,5,5] = nn.softmax(%masked) {axis=3} @p
  %p3: float32[2,5,5] = tensor.reshape(%p) {shape=(2, 5, 5)} @p3
  %v3: float32[2,5,8] = tensor.reshape(%v) {shape=(2, 5, 8)} @v3
  %o3: float32[2,5,8] = linalg.matmul(%p3, %v3) @o3
  %y: float32[1,2,5,8] = tensor.reshape(%o3) {shape=(1, 2, 5, 8)} @y
  return %y
}""", ["nn.attention(q, k, v, mask) {scale=0.353553}"], fired={"attention_viewed": 1}, **TOL)
    assert refusal_reasons(rewrite, "attention") == {"the left operand is not a softmax": 1,  # q @ k^T
                                                     "a reshape views the product; attention_viewed rewrites it there": 1}


def test_attention_with_a_key_permuted_from_sequence_major_and_the_scale_split_over_q_and_k() -> None:
    # the ONNX exports of GPT-2 and BERT: k^T = transpose(k (B,S,H,D), perm=(0,2,3,1)); the dynamo
    # exporter multiplies q and k^T by sqrt(scale) each
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[1,2,5,8], %kh: float32[1,5,2,8], %v: float32[1,2,5,8]) {
  param %root_scale: float32[1] = [0.5946035385131836]
  %kt: float32[1,2,8,5] = tensor.transpose(%kh) {perm=(0, 2, 3, 1)} @kt
  %qs: float32[1,2,5,8] = math.mul(%q, %root_scale) @qs
  %kts: float32[1,2,8,5] = math.mul(%kt, %root_scale) @kts
  %s: float32[1,2,5,5] = linalg.matmul(%qs, %kts) @s
  %p: float32[1,2,5,5] = nn.softmax(%s) @p
  %y: float32[1,2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", ["tensor.transpose(kh) {perm=(0, 2, 1, 3)}", "nn.attention(q, %0, v) {scale=0.353553}"], **TOL)


CAUSAL_ADDITIVE = np.where(np.tril(np.ones((5, 5), bool)), 0.0, np.finfo(np.float32).min).astype("float32")


def test_a_constant_lower_triangular_mask_becomes_causal() -> None:
    # an additive causal constant, and (old GPT-2) where(tril, scores / sqrt(d), finfo.min)
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8]) {
  param %causal: float32[1,5,5]
  param %tril: bool[1,1,5,5]
  param %root_d: float32[] = 2.8284270763397217
  param %lowest: float32[] = -3.4028234663852886e+38
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %m: float32[2,5,5] = math.add(%causal, %s) @m
  %p: float32[2,5,5] = nn.softmax(%m) @p
  %a: float32[2,5,8] = linalg.matmul(%p, %v) @a
  %q4: float32[1,2,5,8] = tensor.reshape(%q) {shape=(1, 2, 5, 8)} @q4
  %k4: float32[1,2,5,8] = tensor.reshape(%k) {shape=(1, 2, 5, 8)} @k4
  %v4: float32[1,2,5,8] = tensor.reshape(%v) {shape=(1, 2, 5, 8)} @v4
  %kt4: float32[1,2,8,5] = tensor.transpose(%k4) {perm=(0, 1, 3, 2)} @kt4
  %s4: float32[1,2,5,5] = linalg.matmul(%q4, %kt4) @s4
  %d4: float32[1,2,5,5] = math.div(%s4, %root_d) @d4
  %w4: float32[1,2,5,5] = math.where(%tril, %d4, %lowest) @w4
  %p4: float32[1,2,5,5] = nn.softmax(%w4) @p4
  %b: float32[1,2,5,8] = linalg.matmul(%p4, %v4) @b
  return %a, %b
}""", ["nn.attention(q, k, v) {causal=True, scale=1}",
        "tensor.reshape(q) {shape=(1, 2, 5, 8)}", "tensor.reshape(k) {shape=(1, 2, 5, 8)}",
        "tensor.reshape(v) {shape=(1, 2, 5, 8)}", "nn.attention(%1, %2, %3) {causal=True, scale=0.353553}"],
        params={"causal": CAUSAL_ADDITIVE[None], "tril": np.tril(np.ones((5, 5), bool))[None, None]},
        fired={"attention": 2}, **TOL)


def test_a_constant_mask_that_is_not_causal_stays_a_mask() -> None:
    upper = np.where(np.triu(np.ones((5, 5), bool)), 0.0, -np.inf).astype("float32")  # keeps the upper triangle
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8]) {
  param %upper: float32[5,5]
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %m: float32[2,5,5] = math.add(%s, %upper) @m
  %p: float32[2,5,5] = nn.softmax(%m) @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", ["nn.attention(q, k, v, $5,5) {scale=1}"], params={"upper": upper}, **TOL)


def test_a_mask_added_before_the_scale_is_scaled_with_it() -> None:
    check_rewrite(recognize(verify_each=True), """
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8], %bias: float32[2,5,5]) {
  param %scale: float32[] = 0.125
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %m: float32[2,5,5] = math.add(%bias, %s) @m
  %scaled: float32[2,5,5] = math.mul(%m, %scale) @scaled
  %p: float32[2,5,5] = nn.softmax(%scaled) @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", ["math.mul(bias, $)", "nn.attention(q, k, v, %0) {scale=0.125}"], **TOL)


# the text form prints an inf param but cannot parse it back: give it as an array
MINUS_INF = {"minus_inf": np.array(-np.inf, "float32")}


def fully_masked_feeds(graph: Graph) -> dict[str, np.ndarray]:
    feeds = sample_inputs(graph, seed=3)
    keep = np.random.default_rng(4).random((2, 1, 5, 5)) > 0.4
    keep[0, 0, 1] = False  # a query that may attend to nothing: exporters' fixes give zeros
    feeds["keep"] = keep
    return feeds


def test_torch_sdpa_with_a_bool_mask_and_its_zero_row_guard() -> None:
    # the torch frontend's converter of F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    graph = parse("""
graph g(%q: float32[2,2,5,8], %k: float32[2,2,5,8], %v: float32[2,2,5,8], %keep: bool[2,1,5,5]) {
  param %scale: float32[] = 0.3535533845424652
  param %minus_inf: float32[]
  param %zero: float32[] = 0.0
  %kt: float32[2,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %s: float32[2,2,5,5] = linalg.matmul(%q, %kt) @s
  %ss: float32[2,2,5,5] = math.mul(%s, %scale) @ss
  %w: float32[2,2,5,5] = math.where(%keep, %ss, %minus_inf) @w
  %p: float32[2,2,5,5] = nn.softmax(%w) @p
  %e: bool[2,2,5,5] = math.equal(%w, %minus_inf) @e
  %n: bool[2,2,5,5] = math.not(%e) @n
  %c: int32[2,2,5,5] = math.cast(%n) {dtype='int32'} @c
  %r: int32[2,2,5,1] = reduce.max(%c) {axes=(-1,)} @r
  %rb: bool[2,2,5,1] = math.cast(%r) {dtype='bool'} @rb
  %g: float32[2,2,5,5] = math.where(%rb, %p, %zero) @g
  %y: float32[2,2,5,8] = linalg.matmul(%g, %v) @y
  return %y
}""", params=MINUS_INF)
    feeds = fully_masked_feeds(graph)
    check_rewrite(recognize(verify_each=True), graph, [
        "nn.attention(q, k, v, keep) {scale=0.353553}", "math.cast(keep) {dtype='int32'}",
        "reduce.max(%1) {axes=(-1,)}", "math.cast(%2) {dtype='bool'}", "math.where(%3, %0, $)"], feeds=feeds, **TOL)
    assert np.all(interpret(graph, feeds)["y"][0, :, 1] == 0)


def test_onnx_sdpa_with_a_bool_mask_and_its_nan_guard() -> None:
    # torch.onnx (opset 17) of the same: the mask added as where(keep, 0, -inf), NaN rows zeroed
    graph = parse("""
graph g(%q: float32[2,2,5,8], %k: float32[2,2,5,8], %v: float32[2,2,5,8], %keep: bool[2,1,5,5]) {
  param %root_scale: float32[1] = [0.5946035385131836]
  param %zero: float32[1] = [0.0]
  param %minus_inf: float32[1]
  %kt: float32[2,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %qs: float32[2,2,5,8] = math.mul(%q, %root_scale) @qs
  %kts: float32[2,2,8,5] = math.mul(%kt, %root_scale) @kts
  %s: float32[2,2,5,5] = linalg.matmul(%qs, %kts) @s
  %bias: float32[2,1,5,5] = math.where(%keep, %zero, %minus_inf) @bias
  %m: float32[2,2,5,5] = math.add(%s, %bias) @m
  %p: float32[2,2,5,5] = nn.softmax(%m) @p
  %nan: bool[2,2,5,5] = math.isnan(%p) @nan
  %g: float32[2,2,5,5] = math.where(%nan, %zero, %p) @g
  %y: float32[2,2,5,8] = linalg.matmul(%g, %v) @y
  return %y
}""", params={"minus_inf": np.array([-np.inf], "float32")})
    feeds = fully_masked_feeds(graph)
    check_rewrite(recognize(verify_each=True), graph, feeds=feeds, **TOL)
    assert op_lines(graph)[0] == "nn.attention(q, k, v, keep) {scale=0.353553}"
    assert len(op_lines(graph)) == 5  # and the row guard on keep
    assert np.all(interpret(graph, feeds)["y"][0, :, 1] == 0)


def test_a_guard_is_dropped_when_no_mask_can_mask_a_whole_row() -> None:
    # the dynamo exporter masks with finfo.min, so its NaN guard never fires
    graph = parse("""
graph g(%q: float32[2,2,5,8], %k: float32[2,2,5,8], %v: float32[2,2,5,8], %keep: bool[2,1,5,5]) {
  param %zero: float32[] = 0.0
  param %lowest: float32[] = -3.4028234663852886e+38
  %kt: float32[2,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %s: float32[2,2,5,5] = linalg.matmul(%q, %kt) @s
  %bias: float32[2,1,5,5] = math.where(%keep, %zero, %lowest) @bias
  %m: float32[2,2,5,5] = math.add(%bias, %s) @m
  %p: float32[2,2,5,5] = nn.softmax(%m) @p
  %nan: bool[2,2,5,5] = math.isnan(%p) @nan
  %g: float32[2,2,5,5] = math.where(%nan, %zero, %p) @g
  %y: float32[2,2,5,8] = linalg.matmul(%g, %v) @y
  return %y
}""")
    check_rewrite(recognize(verify_each=True), graph, ["math.where(keep, $, $)", "nn.attention(q, k, v, %0) {scale=1}"],
                  feeds=fully_masked_feeds(graph), **TOL)


def attention_text(scores: str, axis: int = -1, key_batch: int = 2) -> str:
    return f"""
graph g(%q: float32[2,5,8], %k: float32[{key_batch},5,8], %v: float32[2,5,8]) {{
  param %zero: float32[] = 0.0
  param %flags: bool[5,5]
  %kt: float32[{key_batch},8,5] = tensor.transpose(%k) {{perm=(0, 2, 1)}} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  {scores}
  %p: float32[2,5,5] = nn.softmax(%t) {{axis={axis}}} @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}}"""


def attention_refusals(text: str) -> dict[str, int]:
    """Why the attention rule refused on a graph recognize must leave alone."""
    rewrite = recognize()
    check_rewrite(rewrite, text, params={"flags": np.eye(5, dtype=bool)}, changes=False)
    return refusal_reasons(rewrite, "attention")


def test_attention_refusals_say_why() -> None:
    plain = "%t: float32[2,5,5] = math.add(%s, %zero) @t"
    # every matmul is a candidate: the q @ k^T one is refused for not following a softmax
    not_softmax = {"the left operand is not a softmax": 1}
    # a softmax over the queries is no attention
    assert attention_refusals(attention_text(plain, axis=1)) == {
        **not_softmax, "the softmax is not over the last axis": 1}
    # the scores are also a result
    assert attention_refusals(attention_text(plain).replace("return %y", "return %y, %s")) == {
        **not_softmax, "a value between q @ k^T and the softmax is also read elsewhere": 1}
    # where(flags, scores, 0) writes a value, not a mask
    written = attention_text("%t: float32[2,5,5] = math.where(%flags, %s, %zero) @t")
    assert attention_refusals(written) == {**not_softmax, "a where writes 0 into the scores, which is not a mask": 1}
    # one key head for two query heads: the matmul broadcasts, nn.attention does not
    assert attention_refusals(attention_text(plain, key_batch=1)) == {
        **not_softmax, "q @ k^T broadcasts its batch dims": 1}

