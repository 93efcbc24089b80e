"""The fusion rules: a golden before/after and a numerical check per rule, and refusals with their
reasons, for fold_batch_norm, fold_scale_bias, fold_pads and fuse_epilogues. Random networks, the
zoo and compiled graphs are in test_fusion_properties.py."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, TensorType
from optc.ir.ops.nn import ACTIVATIONS
from optc.passes import parse_pipeline
from optc.passes.fusion import FUSION_RULES, fold_batch_norm, fold_pads, fold_scale_bias, fuse_epilogues
from optc.passes.rewrite import RewritePass
from optc.passes.testing import assert_refused, batch_norm_params, check_rewrite, random_params

# goldens compare the skeleton (generated names do not matter); folded float32 weights round differently
FUSED = {"compare": "skeleton", "rtol": 1e-4, "atol": 1e-5}

BN_DECLS = """
  param %gamma: float32[{c}]
  param %beta: float32[{c}]
  param %mean: float32[{c}]
  param %var: float32[{c}]"""


# ---- fold_batch_norm ----------------------------------------------------------------------------------------

def test_conv_bn_gets_a_bias_and_keeps_the_output_name():
    # %y is a graph output: conv and batch norm fold, relu stays a separate reader
    rewrite = fold_batch_norm(verify_each=True)
    graph = check_rewrite(rewrite, """
graph g(%x: float32[2,3,8,8]) {
  param %w: float32[4,3,3,3]""" + BN_DECLS.format(c=4) + """
  %c: float32[2,4,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %y: float32[2,4,8,8] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) {epsilon=0.001} @bn
  %r: float32[2,4,8,8] = math.relu(%y) @relu
  return %r, %y
}""", """
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[2,4,8,8] = nn.conv(%x, %p0, %p1) {pads=(1, 1, 1, 1)}
        %v1: float32[2,4,8,8] = math.relu(%v0)
        return %v1, %v0""", params={**random_params(0, w=(4, 3, 3, 3)), **batch_norm_params(4, 1)}, **FUSED)
    assert [value.name for value in graph.outputs] == ["r", "y"]
    assert rewrite.explain()["conv_bn_to_conv"]["fired"] == 1


def test_grouped_conv_with_bias_and_conv_transpose_fold_per_output_channel():
    check_rewrite(fold_batch_norm(verify_each=True), """
graph g(%x: float32[1,4,6,6]) {
  param %w: float32[6,2,3,3]
  param %b: float32[6]""" + BN_DECLS.format(c=6) + """
  param %tw: float32[6,2,2,2]
  param %t_gamma: float32[6]
  param %t_beta: float32[6]
  param %t_mean: float32[6]
  param %t_var: float32[6]
  %c: float32[1,6,3,3] = nn.conv(%x, %w, %b) {groups=2, strides=(2, 2), pads=(1, 1, 1, 1)} @conv
  %n: float32[1,6,3,3] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) @bn
  %t: float32[1,6,6,6] = nn.conv_transpose(%n, %tw) {groups=3, strides=(2, 2)} @deconv
  %y: float32[1,6,6,6] = nn.batch_norm(%t, %t_gamma, %t_beta, %t_mean, %t_var) @bn2
  return %y
}""", """
        param %p0: float32[6,2,3,3]
        param %p1: float32[6]
        param %p2: float32[6,2,2,2]
        param %p3: float32[6]
        %v0: float32[1,6,3,3] = nn.conv(%x, %p0, %p1) {groups=2, pads=(1, 1, 1, 1), strides=(2, 2)}
        %v1: float32[1,6,6,6] = nn.conv_transpose(%v0, %p2, %p3) {groups=3, strides=(2, 2)}
        return %v1""", params={**random_params(2, w=(6, 2, 3, 3), b=(6,), tw=(6, 2, 2, 2)), **batch_norm_params(6, 3),
                               **batch_norm_params(6, 4, "t_")}, **FUSED)


def test_linear_and_matmul_bn_on_the_feature_axis():
    params = {**random_params(5, w=(3, 4), b=(4,), w2=(4, 4)), **batch_norm_params(4, 6),
              **{key.replace("gamma", "g2").replace("beta", "b2").replace("mean", "m2").replace("var", "v2"): value
                 for key, value in batch_norm_params(4, 7).items()}}
    check_rewrite(fold_batch_norm(verify_each=True), """
graph g(%x: float32[5,3]) {
  param %w: float32[3,4]
  param %b: float32[4]""" + BN_DECLS.format(c=4) + """
  param %w2: float32[4,4]
  param %g2: float32[4]
  param %b2: float32[4]
  param %m2: float32[4]
  param %v2: float32[4]
  %l: float32[5,4] = nn.linear(%x, %w, %b) @fc1
  %n: float32[5,4] = nn.batch_norm(%l, %gamma, %beta, %mean, %var) @bn1
  %m: float32[5,4] = linalg.matmul(%n, %w2) @fc2
  %y: float32[5,4] = nn.batch_norm(%m, %g2, %b2, %m2, %v2) @bn2
  return %y
}""", """
        param %p0: float32[3,4]
        param %p1: float32[4]
        param %p2: float32[4,4]
        param %p3: float32[4]
        %v0: float32[5,4] = nn.linear(%x, %p0, %p1)
        %v1: float32[5,4] = nn.linear(%v0, %p2, %p3)
        return %v1""", params=params, fired={"linear_bn_to_linear", "matmul_bn_to_linear"}, **FUSED)


def test_bn_before_an_unpadded_conv_folds_per_input_channel():
    check_rewrite(fold_batch_norm(verify_each=True), """
graph g(%x: float32[2,4,7,7]) {""" + BN_DECLS.format(c=4) + """
  param %w: float32[6,2,3,3]
  param %b: float32[6]
  %n: float32[2,4,7,7] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[2,6,3,3] = nn.conv(%n, %w, %b) {groups=2, strides=(2, 2), activation='relu'} @conv
  return %y
}""", """
        param %p0: float32[6,2,3,3]
        param %p1: float32[6]
        %v0: float32[2,6,3,3] = nn.conv(%x, %p0, %p1) {activation='relu', groups=2, strides=(2, 2)}
        return %v0""", params={**batch_norm_params(4, 8), **random_params(9, w=(6, 2, 3, 3), b=(6,))}, **FUSED)


def test_bn_before_linear_and_matmul():
    check_rewrite(fold_batch_norm(verify_each=True), """
graph g(%x: float32[3,4], %z: float32[3,4]) {""" + BN_DECLS.format(c=4) + """
  param %w: float32[4,5]
  param %w2: float32[4,2]
  %n: float32[3,4] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[3,5] = nn.linear(%n, %w) {activation='tanh'} @fc
  %n2: float32[3,4] = nn.batch_norm(%z, %gamma, %beta, %mean, %var) @bn2
  %y2: float32[3,2] = linalg.matmul(%n2, %w2) @fc2
  return %y, %y2
}""", """
        param %p0: float32[4,5]
        param %p1: float32[5]
        param %p2: float32[4,2]
        param %p3: float32[2]
        %v0: float32[3,5] = nn.linear(%x, %p0, %p1) {activation='tanh'}
        %v1: float32[3,2] = nn.linear(%z, %p2, %p3)
        return %v0, %v1""", params={**batch_norm_params(4, 10), **random_params(11, w=(4, 5), w2=(4, 2))}, **FUSED)


def test_bn_before_a_padded_conv_is_refused_unless_its_shift_is_zero():
    text = """
graph g(%x: float32[1,2,5,5]) {""" + BN_DECLS.format(c=2) + """
  param %w: float32[3,2,3,3]
  %n: float32[1,2,5,5] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[1,3,5,5] = nn.conv(%n, %w) {pads=(1, 1, 1, 1)} @conv
  return %y
}"""
    params = {**batch_norm_params(2, 12), **random_params(13, w=(3, 2, 3, 3))}
    rewrite = fold_batch_norm(verify_each=True)
    graph = check_rewrite(rewrite, text, params=params, changes=False, **FUSED)
    assert_refused(rewrite, "bn_conv_to_conv", "pads the normalized input with zeros", fired=0)
    assert [node.op for node in graph.nodes] == ["nn.batch_norm", "nn.conv"]
    # with beta = mean * gamma / sqrt(var + eps) the shift is zero and padding commutes
    params["beta"] = (params["mean"].astype(np.float64) * params["gamma"] / np.sqrt(params["var"] + 1e-5)).astype(np.float32)
    zero_shift = check_rewrite(fold_batch_norm(), text, params=params, rtol=1e-4, atol=1e-4)
    assert [node.op for node in zero_shift.nodes] == ["nn.conv"]


def test_batch_norm_refusals_say_why():
    rewrite = fold_batch_norm(verify_each=True)
    graph = check_rewrite(rewrite, """
graph g(%x: float32[1,2,4,4], %w: float32[2,2,1,1], %v: float32[2], %t: float32[2,3,4]) {""" + BN_DECLS.format(c=2) + """
  param %w2: float32[2,2,1,1]
  param %w3: float32[2,2,3,3]
  param %lw: float32[4,4]
  param %g3: float32[3]
  param %b3: float32[3]
  param %m3: float32[3]
  param %v3: float32[3]
  %c1: float32[1,2,4,4] = nn.conv(%x, %w) @conv1
  %n1: float32[1,2,4,4] = nn.batch_norm(%c1, %gamma, %beta, %mean, %var) @bn1
  %c2: float32[1,2,4,4] = nn.conv(%n1, %w2) {activation='relu'} @conv2
  %n2: float32[1,2,4,4] = nn.batch_norm(%c2, %gamma, %beta, %mean, %var) @bn2
  %c3: float32[1,2,4,4] = nn.conv(%n2, %w3) {pads=(1, 1, 1, 1)} @conv3
  %n3: float32[1,2,4,4] = nn.batch_norm(%c3, %gamma, %beta, %mean, %var) @bn3
  %c4: float32[1,2,4,4] = nn.conv(%x, %w2) @conv4
  %positive: float32[2] = math.abs(%v) @positive
  %n4: float32[1,2,4,4] = nn.batch_norm(%c4, %gamma, %beta, %mean, %positive) @bn4
  %l: float32[2,3,4] = nn.linear(%t, %lw) @fc
  %n5: float32[2,3,4] = nn.batch_norm(%l, %g3, %b3, %m3, %v3) @bn5
  return %n3, %c3, %n4, %n5
}""", params={**batch_norm_params(2, 14), **random_params(15, w2=(2, 2, 1, 1), w3=(2, 2, 3, 3), lw=(4, 4)),
              **{key[0] + "3": value for key, value in batch_norm_params(3, 16).items()}}, **FUSED)
    assert_refused(rewrite, "conv_bn_to_conv",
                   "needs a constant, found a graph input",  # bn1: the conv weight is a graph input
                   "activation='relu' does not fit",  # bn2: the conv applies relu first
                   "users outside the pattern",  # bn3: %c3 is a graph output too
                   "needs a constant, found a computed value",  # bn4: its variance is computed
                   fired=0)
    assert_refused(rewrite, "linear_bn_to_linear", "normalizes axis 1", fired=0)  # bn5: channels are on axis 2
    # bn1 folds forward into conv2 instead: conv2's weight is a constant and conv2 does not pad
    assert_refused(rewrite, "bn_conv_to_conv", "pads the normalized input with zeros", fired=1)
    assert [node.name for node in graph.nodes if node.op == "nn.batch_norm"] == ["bn2", "bn3", "bn4", "bn5"]


# ---- fold_scale_bias ----------------------------------------------------------------------------------------

def test_conv_mul_add_chain_folds_into_weight_and_bias():
    check_rewrite(fold_scale_bias(verify_each=True), """
graph g(%x: float32[2,3,6,6]) {
  param %w: float32[4,3,3,3]
  param %s: float32[1,4,1,1]
  param %t: float32[4,1,1]
  param %half: float32[] = 0.5
  %c: float32[2,4,4,4] = nn.conv(%x, %w) @conv
  %m: float32[2,4,4,4] = math.mul(%s, %c) @mul
  %a: float32[2,4,4,4] = math.add(%m, %t) @add
  %d: float32[2,4,4,4] = math.div(%a, %half) @div
  %y: float32[2,4,4,4] = math.sub(%d, %t) @sub
  return %y
}""", """
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[2,4,4,4] = nn.conv(%x, %p0, %p1)
        return %v0""", params=random_params(16, w=(4, 3, 3, 3), s=(1, 4, 1, 1), t=(4, 1, 1)),
        fired={"conv_mul_to_conv": 1, "conv_add_to_conv": 1, "conv_div_to_conv": 1, "conv_sub_to_conv": 1}, **FUSED)


def test_matmul_linear_and_conv_transpose_scale_bias():
    check_rewrite(fold_scale_bias(verify_each=True), """
graph g(%x: float32[2,5,3], %z: float32[1,2,3,3]) {
  param %w: float32[3,4]
  param %s: float32[4]
  param %b: float32[1,1,4]
  param %w2: float32[4,2]
  param %b2: float32[2]
  param %three: float32[] = 3.0
  param %tw: float32[2,3,2,2]
  param %ts: float32[3,1,1]
  %m: float32[2,5,4] = linalg.matmul(%x, %w) @fc
  %ms: float32[2,5,4] = math.mul(%m, %s) @mul
  %mb: float32[2,5,4] = math.add(%b, %ms) @add
  %l: float32[2,5,2] = nn.linear(%mb, %w2, %b2) @fc2
  %y: float32[2,5,2] = math.mul(%l, %three) @mul2
  %t: float32[1,3,4,4] = nn.conv_transpose(%z, %tw) @deconv
  %y2: float32[1,3,4,4] = math.mul(%t, %ts) @mul3
  return %y, %y2
}""", """
        param %p0: float32[3,4]
        param %p1: float32[4]
        param %p2: float32[4,2]
        param %p3: float32[2]
        param %p4: float32[2,3,2,2]
        %v0: float32[2,5,4] = nn.linear(%x, %p0, %p1)
        %v1: float32[2,5,2] = nn.linear(%v0, %p2, %p3)
        %v2: float32[1,3,4,4] = nn.conv_transpose(%z, %p4)
        return %v1, %v2""", params=random_params(17, w=(3, 4), s=(4,), b=(1, 1, 4), w2=(4, 2), b2=(2,), tw=(2, 3, 2, 2),
                                      ts=(3, 1, 1)), **FUSED)


def test_scale_bias_refusals_say_why():
    rewrite = fold_scale_bias()
    check_rewrite(rewrite, """
graph g(%x: float32[1,2,3,3], %w: float32[2,2,1,1]) {
  param %w2: float32[2,2,1,1]
  param %spatial: float32[1,1,3,3]
  param %wide: float32[2,2,1,3,3]
  param %zero: float32[2,1,1]
  %c1: float32[1,2,3,3] = nn.conv(%x, %w2) @conv1
  %m1: float32[1,2,3,3] = math.mul(%c1, %spatial) @mul1
  %c2: float32[1,2,3,3] = nn.conv(%m1, %w2) @conv2
  %m2: float32[2,2,2,3,3] = math.mul(%c2, %wide) @mul2
  %c3: float32[1,2,3,3] = nn.conv(%x, %w2) @conv3
  %m3: float32[1,2,3,3] = math.div(%c3, %zero) @div3
  %c4: float32[1,2,3,3] = nn.conv(%x, %w) @conv4
  %m4: float32[1,2,3,3] = math.mul(%c4, %zero) @mul4
  return %m2, %m3, %m4
}""", params={**random_params(18, w2=(2, 2, 1, 1), spatial=(1, 1, 3, 3), wide=(2, 2, 1, 3, 3)),
              "zero": np.zeros((2, 1, 1), np.float32)}, changes=False, check_outputs=False)  # %m3 divides by zero
    assert_refused(rewrite, "conv_mul_to_conv",
                   "the constant varies along axis 2, not only along the channel axis 1",
                   "more dims than the output",
                   "needs a constant, found a graph input",  # mul4: scaling needs a constant weight
                   fired=0)
    assert_refused(rewrite, "conv_div_to_conv", "the divisor has zeros", fired=0)


# ---- fold_pads ----------------------------------------------------------------------------------------------

def test_zero_pad_folds_into_conv_pads():
    check_rewrite(fold_pads(verify_each=True), """
graph g(%x: float32[1,2,5,6]) {
  param %w: float32[3,2,3,3]
  param %b: float32[3]
  %p: float32[1,2,8,7] = tensor.pad(%x) {pads=(0, 0, 2, 0, 0, 0, 1, 1)} @pad
  %y: float32[1,3,3,6] = nn.conv(%p, %w, %b) {pads=(0, 1, 0, 0), strides=(2, 1), activation='silu'} @conv
  return %y
}""", """
        param %p0: float32[3,2,3,3]
        param %p1: float32[3]
        %v0: float32[1,3,3,6] = nn.conv(%x, %p0, %p1) {activation='silu', pads=(2, 1, 1, 1), strides=(2, 1)}
        return %v0""", params=random_params(19, w=(3, 2, 3, 3), b=(3,)), **FUSED)


def test_zero_pad_folds_into_avg_pool_counting_the_pad():
    check_rewrite(fold_pads(verify_each=True), """
graph g(%x: float32[1,2,5,5]) {
  %p: float32[1,2,7,7] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @pad
  %y: float32[1,2,3,3] = nn.avg_pool(%p) {kernel=(3, 3), strides=(2, 2)} @pool
  %p2: float32[1,2,7,7] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @pad2
  %y2: float32[1,2,4,4] = nn.avg_pool(%p2) {kernel=(2, 2), strides=(2, 2), pads=(1, 1, 0, 0), count_include_pad=True} @pool2
  return %y, %y2
}""", """
        %v0: float32[1,2,3,3] = nn.avg_pool(%x) {count_include_pad=True, kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2)}
        %v1: float32[1,2,4,4] = nn.avg_pool(%x) {count_include_pad=True, kernel=(2, 2), pads=(2, 2, 1, 1), strides=(2, 2)}
        return %v0, %v1""", **FUSED)


def test_lowest_value_pad_folds_into_max_pool():
    lowest = float(np.finfo(np.float32).min)
    check_rewrite(fold_pads(verify_each=True), f"""
graph g(%x: float32[1,2,5,5]) {{
  %p: float32[1,2,7,6] = tensor.pad(%x) {{pads=(0, 0, 1, 1, 0, 0, 1, 0), value={lowest!r}}} @pad
  %y: float32[1,2,3,3] = nn.max_pool(%p) {{kernel=(3, 3), strides=(2, 2), pads=(0, 0, 0, 1)}} @pool
  return %y
}}""", """
        %v0: float32[1,2,3,3] = nn.max_pool(%x) {kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2)}
        return %v0""", **FUSED)


def test_minus_infinity_pad_folds_into_max_pool():
    # built in code: the text form prints value=-inf, which its parser cannot read back
    graph = Graph("g")
    x = graph.add_input("x", TensorType((1, 1, 4, 4), "float32"))
    padded = graph.op("tensor.pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1), value=float("-inf"))
    graph.outputs = [graph.op("nn.max_pool", padded, kernel=(2, 2), strides=(2, 2))]
    check_rewrite(fold_pads(verify_each=True), graph, """
        %v0: float32[1,1,3,3] = nn.max_pool(%x) {kernel=(2, 2), pads=(1, 1, 1, 1), strides=(2, 2)}
        return %v0""", **FUSED)


def test_pad_refusals_say_why():
    rewrite = fold_pads(verify_each=True)
    graph = check_rewrite(rewrite, """
graph g(%x: float32[1,2,6,6]) {
  param %w: float32[2,2,3,3]
  param %w4: float32[2,4,3,3]
  %reflect: float32[1,2,8,8] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1), mode='reflect'} @reflect
  %c1: float32[1,2,6,6] = nn.conv(%reflect, %w) @conv1
  %ones: float32[1,2,8,8] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1), value=1.0} @ones
  %c2: float32[1,2,6,6] = nn.conv(%ones, %w) @conv2
  %chan: float32[1,4,6,6] = tensor.pad(%x) {pads=(0, 1, 0, 0, 0, 1, 0, 0)} @chan
  %c3: float32[1,2,4,4] = nn.conv(%chan, %w4) @conv3
  %crop: float32[1,2,4,6] = tensor.pad(%x) {pads=(0, 0, -1, 0, 0, 0, -1, 0)} @crop
  %c4: float32[1,2,2,4] = nn.conv(%crop, %w) @conv4
  %zeros: float32[1,2,8,8] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @zeros
  %a1: float32[1,2,5,5] = nn.avg_pool(%zeros) {kernel=(2, 2), strides=(2, 2), pads=(1, 1, 1, 1)} @avg1
  %zeros2: float32[1,2,8,8] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @zeros2
  %a2: float32[1,2,4,4] = nn.avg_pool(%zeros2) {kernel=(3, 3), strides=(2, 2), ceil_mode=True} @avg2
  %zeros3: float32[1,2,8,8] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @zeros3
  %m1: float32[1,2,4,4] = nn.max_pool(%zeros3) {kernel=(2, 2), strides=(2, 2)} @max1
  return %c1, %c2, %c3, %c4, %a1, %a2, %m1
}""", params=random_params(20, w=(2, 2, 3, 3), w4=(2, 4, 3, 3)), changes=False, **FUSED)
    assert_refused(rewrite, "pad_conv_to_conv", "reflect padding is not constant padding",
                   "the pad fills with 1; a conv pads with zeros", "the pad also pads the batch or channel axis",
                   "the pad crops", fired=0)
    assert_refused(rewrite, "pad_avg_pool_to_avg_pool", "leaves its own pads out of the average", "ceil mode", fired=0)
    assert_refused(rewrite, "pad_max_pool_to_max_pool", "a max pool pads with -inf", fired=0)
    assert sum(node.op == "tensor.pad" for node in graph.nodes) == 7


# ---- fuse_epilogues -----------------------------------------------------------------------------------------

def test_matmul_bias_gelu_becomes_one_linear():
    check_rewrite(fuse_epilogues(verify_each=True), """
graph g(%x: float32[2,3,8]) {
  param %w: float32[8,16]
  param %b: float32[16]
  %m: float32[2,3,16] = linalg.matmul(%x, %w) @fc
  %a: float32[2,3,16] = math.add(%b, %m) @add
  %y: float32[2,3,16] = math.gelu(%a) {approximate='tanh'} @gelu
  return %y
}""", """
        param %p0: float32[8,16]
        param %p1: float32[16]
        %v0: float32[2,3,16] = nn.linear(%x, %p0, %p1) {activation='gelu_tanh'}
        return %v0""", params=random_params(21, w=(8, 16), b=(16,)),
        fired={"matmul_to_linear", "linear_add_to_linear", "linear_gelu_tanh_to_linear"}, **FUSED)


def test_conv_bias_add_and_relu6_fuse_into_the_conv():
    check_rewrite(fuse_epilogues(verify_each=True), """
graph g(%x: float32[1,3,6,6]) {
  param %w: float32[4,3,3,3]
  param %b: float32[1,4,1,1]
  %c: float32[1,4,6,6] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %a: float32[1,4,6,6] = math.add(%c, %b) @add
  %y: float32[1,4,6,6] = math.clip(%a) {min=0.0, max=6.0} @relu6
  return %y
}""", """
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[1,4,6,6] = nn.conv(%x, %p0, %p1) {activation='relu6', pads=(1, 1, 1, 1)}
        return %v0""", params=random_params(22, w=(4, 3, 3, 3), b=(1, 4, 1, 1)), **FUSED)


@pytest.mark.parametrize("activation", [name for name, spec in ACTIVATIONS.items() if spec is not None])
def test_every_activation_fuses_into_conv_and_linear(activation: str):
    op, attrs = ACTIVATIONS[activation]
    graph = Graph("g")
    rng = np.random.default_rng(23)
    x = graph.add_input("x", TensorType((1, 2, 5, 5), "float32"))
    conv = graph.op("nn.conv", x, graph.add_param("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)))
    flat = graph.op("tensor.reshape", graph.op(op, conv, **attrs), shape=(1, 27))
    weight = graph.add_param("w2", (rng.standard_normal((27, 4)) * 2).astype(np.float32))
    graph.outputs = [graph.op(op, graph.op("nn.linear", flat, weight), **attrs)]
    rewrite = fuse_epilogues(verify_each=True)
    check_rewrite(rewrite, graph, **FUSED)
    assert [(node.op, node.attrs.get("activation")) for node in graph.nodes] == [
        ("nn.conv", activation), ("tensor.reshape", None), ("nn.linear", activation)]
    assert rewrite.explain()[f"conv_{activation}_to_conv"]["fired"] == 1


def test_epilogue_refusals_say_why():
    rewrite = fuse_epilogues(verify_each=True)
    graph = check_rewrite(rewrite, """
graph g(%x: float32[1,2,4,4], %v: float32[3,4], %k: float32[4,4]) {
  param %w: float32[2,2,1,1]
  param %wl: float32[4,4]
  %c: float32[1,2,4,4] = nn.conv(%x, %w) @conv
  %y: float32[1,2,4,4] = math.clip(%c) {min=0.0, max=5.0} @clip
  %c2: float32[1,2,4,4] = nn.conv(%x, %w) @conv2
  %r: float32[1,2,4,4] = math.relu(%c2) @relu
  %l: float32[3,4] = linalg.matmul(%v, %k) @dyn
  %l2: float32[3,4] = nn.linear(%v, %wl) {activation='relu'} @fc
  %s: float32[3,4] = math.sigmoid(%l2) @sigmoid
  return %y, %r, %c2, %l, %s
}""", params=random_params(24, w=(2, 2, 1, 1), wl=(4, 4)), changes=False, **FUSED)
    assert_refused(rewrite, "conv_relu6_to_conv", "max=5.0 does not fit", fired=0)
    assert_refused(rewrite, "conv_relu_to_conv", "users outside the pattern", fired=0)
    assert_refused(rewrite, "matmul_to_linear", "needs a constant, found a graph input", fired=0)
    assert_refused(rewrite, "linear_sigmoid_to_linear", "activation='relu' does not fit", fired=0)
    assert len(graph.nodes) == 7


# ---- the passes by name, and all rules together -------------------------------------------------------------

def test_passes_are_registered_under_their_names():
    passes = parse_pipeline("fold_pads,fold_batch_norm,fold_scale_bias,fuse_epilogues(verify_each=True)")
    assert [p.pass_name for p in passes][:3] == ["fold_pads", "fold_batch_norm", "fold_scale_bias"]
    assert all(isinstance(p, RewritePass) for p in passes) and passes[3].verify_each
    names = [rule.name for rule in FUSION_RULES]
    assert len(names) == len(set(names)) and {"conv_bn_to_conv", "pad_conv_to_conv", "conv_relu_to_conv"} <= set(names)

