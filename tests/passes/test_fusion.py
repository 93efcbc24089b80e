"""The fusion passes: a golden before/after and a numerical check per rule, refusals with their
reasons, seeded random conv/linear networks, the zoo CNNs, and one compiled graph."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from optc.ir import Graph, TensorType, interpret, parse, sample_inputs, verify
from optc.ir.graph import Value
from optc.ir.ops import registry
from optc.ir.ops.nn import ACTIVATIONS
from optc.passes import parse_pipeline
from optc.passes.fusion import FUSION_RULES, fold_batch_norm, fold_pads, fold_scale_bias, fuse_epilogues
from optc.passes.rewrite import RewritePass

FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}
PASSES: dict[str, Callable[..., RewritePass]] = {
    "fold_pads": fold_pads,
    "fold_batch_norm": fold_batch_norm,
    "fold_scale_bias": fold_scale_bias,
    "fuse_epilogues": fuse_epilogues,
}


# ---- helpers ------------------------------------------------------------------------------------------------

def skeleton(graph: Graph) -> str:
    """The text form with params (%p0, ...) and node outputs (%v0, ...) numbered in order of use.

    Golden tests compare this, so they do not depend on the names a rewrite generates.
    """
    labels: dict[int, str] = {id(value): f"%{value.name}" for value in graph.inputs}
    params: list[str] = []
    lines: list[str] = []
    computed = 0
    for node in graph.nodes:
        for value in node.inputs:
            if id(value) not in labels:
                labels[id(value)] = f"%p{len(params)}"
                params.append(f"param %p{len(params)}: {value.type}")
        for value in node.outputs:
            labels[id(value)] = f"%v{computed}"
            computed += 1
        schema = registry.get(node.op).attrs
        shown = {key: value for key, value in sorted(node.attrs.items()) if value != schema[key].default}
        attrs = " {" + ", ".join(f"{key}={value!r}" for key, value in shown.items()) + "}" if shown else ""
        outputs = ", ".join(f"{labels[id(value)]}: {value.type}" for value in node.outputs)
        lines.append(f"{outputs} = {node.op}({', '.join(labels[id(value)] for value in node.inputs)}){attrs}")
    lines.append("return " + ", ".join(labels[id(value)] for value in graph.outputs))
    return "\n".join(params + lines)


def golden(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines())


def assert_same_outputs(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    assert reference.keys() == actual.keys()  # output names survive the rewrites
    for name in reference:
        np.testing.assert_allclose(actual[name], reference[name], err_msg=name, **FLOAT32)


def run_pass(name: str, graph: Graph, seed: int = 0) -> RewritePass:
    """Run a fusion pass checking everything a user relies on: it verifies after each rewrite,
    computes what the original graph computed, and a second run finds nothing left to do."""
    original = graph.clone()
    rewrite = PASSES[name](verify_each=True)
    rewrite(graph)
    verify(graph)
    feeds = sample_inputs(original, seed)
    assert_same_outputs(interpret(original, feeds), interpret(graph, feeds))
    assert not PASSES[name]()(graph), f"{name} is not at a fixed point after one run"
    return rewrite


def refusals(rewrite: RewritePass, rule: str) -> str:
    """All refusal reasons of one rule, joined, for substring checks."""
    stat = rewrite.explain()[rule]
    assert stat["fired"] == 0
    return " | ".join(stat["refused"])


def rng_params(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def bn_params(channels: int, seed: int, prefix: str = "") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        f"{prefix}beta": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}mean": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}var": rng.uniform(0.3, 2.0, channels).astype(np.float32),
    }


BN_DECLS = """
  param %gamma: float32[{c}]
  param %beta: float32[{c}]
  param %mean: float32[{c}]
  param %var: float32[{c}]"""


# ---- fold_batch_norm ----------------------------------------------------------------------------------------

def test_conv_bn_gets_a_bias_and_keeps_the_output_name():
    graph = parse("""
graph g(%x: float32[2,3,8,8]) {
  param %w: float32[4,3,3,3]""" + BN_DECLS.format(c=4) + """
  %c: float32[2,4,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %y: float32[2,4,8,8] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) {epsilon=0.001} @bn
  %r: float32[2,4,8,8] = math.relu(%y) @relu
  return %r, %y
}""", params={**rng_params(0, w=(4, 3, 3, 3)), **bn_params(4, 1)})
    # %y is a graph output: conv and batch norm fold, relu stays a separate reader
    rewrite = run_pass("fold_batch_norm", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[2,4,8,8] = nn.conv(%x, %p0, %p1) {pads=(1, 1, 1, 1)}
        %v1: float32[2,4,8,8] = math.relu(%v0)
        return %v1, %v0""")
    assert [value.name for value in graph.outputs] == ["r", "y"]
    assert rewrite.explain()["conv_bn_to_conv"]["fired"] == 1


def test_grouped_conv_with_bias_and_conv_transpose_fold_per_output_channel():
    graph = parse("""
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
}""", params={**rng_params(2, w=(6, 2, 3, 3), b=(6,), tw=(6, 2, 2, 2)), **bn_params(6, 3), **bn_params(6, 4, "t_")})
    run_pass("fold_batch_norm", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[6,2,3,3]
        param %p1: float32[6]
        param %p2: float32[6,2,2,2]
        param %p3: float32[6]
        %v0: float32[1,6,3,3] = nn.conv(%x, %p0, %p1) {groups=2, pads=(1, 1, 1, 1), strides=(2, 2)}
        %v1: float32[1,6,6,6] = nn.conv_transpose(%v0, %p2, %p3) {groups=3, strides=(2, 2)}
        return %v1""")


def test_linear_and_matmul_bn_on_the_feature_axis():
    graph = parse("""
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
}""", params={**rng_params(5, w=(3, 4), b=(4,), w2=(4, 4)), **bn_params(4, 6),
              **{key.replace("gamma", "g2").replace("beta", "b2").replace("mean", "m2").replace("var", "v2"): value
                 for key, value in bn_params(4, 7).items()}})
    rewrite = run_pass("fold_batch_norm", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[3,4]
        param %p1: float32[4]
        param %p2: float32[4,4]
        param %p3: float32[4]
        %v0: float32[5,4] = nn.linear(%x, %p0, %p1)
        %v1: float32[5,4] = nn.linear(%v0, %p2, %p3)
        return %v1""")
    fired = {rule for rule, stat in rewrite.explain().items() if stat["fired"]}
    assert fired == {"linear_bn_to_linear", "matmul_bn_to_linear"}


def test_bn_before_an_unpadded_conv_folds_per_input_channel():
    graph = parse("""
graph g(%x: float32[2,4,7,7]) {""" + BN_DECLS.format(c=4) + """
  param %w: float32[6,2,3,3]
  param %b: float32[6]
  %n: float32[2,4,7,7] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[2,6,3,3] = nn.conv(%n, %w, %b) {groups=2, strides=(2, 2), activation='relu'} @conv
  return %y
}""", params={**bn_params(4, 8), **rng_params(9, w=(6, 2, 3, 3), b=(6,))})
    run_pass("fold_batch_norm", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[6,2,3,3]
        param %p1: float32[6]
        %v0: float32[2,6,3,3] = nn.conv(%x, %p0, %p1) {activation='relu', groups=2, strides=(2, 2)}
        return %v0""")


def test_bn_before_linear_and_matmul():
    graph = parse("""
graph g(%x: float32[3,4], %z: float32[3,4]) {""" + BN_DECLS.format(c=4) + """
  param %w: float32[4,5]
  param %w2: float32[4,2]
  %n: float32[3,4] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[3,5] = nn.linear(%n, %w) {activation='tanh'} @fc
  %n2: float32[3,4] = nn.batch_norm(%z, %gamma, %beta, %mean, %var) @bn2
  %y2: float32[3,2] = linalg.matmul(%n2, %w2) @fc2
  return %y, %y2
}""", params={**bn_params(4, 10), **rng_params(11, w=(4, 5), w2=(4, 2))})
    run_pass("fold_batch_norm", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[4,5]
        param %p1: float32[5]
        param %p2: float32[4,2]
        param %p3: float32[2]
        %v0: float32[3,5] = nn.linear(%x, %p0, %p1) {activation='tanh'}
        %v1: float32[3,2] = nn.linear(%z, %p2, %p3)
        return %v0, %v1""")


def test_bn_before_a_padded_conv_is_refused_unless_its_shift_is_zero():
    text = """
graph g(%x: float32[1,2,5,5]) {""" + BN_DECLS.format(c=2) + """
  param %w: float32[3,2,3,3]
  %n: float32[1,2,5,5] = nn.batch_norm(%x, %gamma, %beta, %mean, %var) @bn
  %y: float32[1,3,5,5] = nn.conv(%n, %w) {pads=(1, 1, 1, 1)} @conv
  return %y
}"""
    params = {**bn_params(2, 12), **rng_params(13, w=(3, 2, 3, 3))}
    graph = parse(text, params=params)
    rewrite = run_pass("fold_batch_norm", graph)
    assert "pads the normalized input with zeros" in refusals(rewrite, "bn_conv_to_conv")
    assert [node.op for node in graph.nodes] == ["nn.batch_norm", "nn.conv"]
    # with beta = mean * gamma / sqrt(var + eps) the shift is zero and padding commutes
    params["beta"] = (params["mean"].astype(np.float64) * params["gamma"] / np.sqrt(params["var"] + 1e-5)).astype(np.float32)
    zero_shift = parse(text, params=params)
    original = zero_shift.clone()
    fold_batch_norm()(zero_shift)
    feeds = sample_inputs(original, 0)
    np.testing.assert_allclose(interpret(zero_shift, feeds)["y"], interpret(original, feeds)["y"], rtol=1e-4, atol=1e-4)
    assert [node.op for node in zero_shift.nodes] == ["nn.conv"]


def test_batch_norm_refusals_say_why():
    graph = parse("""
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
}""", params={**bn_params(2, 14), **rng_params(15, w2=(2, 2, 1, 1), w3=(2, 2, 3, 3), lw=(4, 4)),
              **{key[0] + "3": value for key, value in bn_params(3, 16).items()}})
    rewrite = run_pass("fold_batch_norm", graph)
    conv_bn = refusals(rewrite, "conv_bn_to_conv")
    assert "needs a constant, found a graph input" in conv_bn  # bn1: the conv weight is a graph input
    assert "activation='relu' does not fit" in conv_bn  # bn2: the conv applies relu first
    assert "users outside the pattern" in conv_bn  # bn3: %c3 is a graph output too
    assert "needs a constant, found a computed value" in conv_bn  # bn4: its variance is computed
    assert "normalizes axis 1" in refusals(rewrite, "linear_bn_to_linear")  # bn5: channels are on axis 2
    assert "pads the normalized input with zeros" in " ".join(rewrite.explain()["bn_conv_to_conv"]["refused"])
    # bn1 folds forward into conv2 instead: conv2's weight is a constant and conv2 does not pad
    assert rewrite.explain()["bn_conv_to_conv"]["fired"] == 1
    assert [node.name for node in graph.nodes if node.op == "nn.batch_norm"] == ["bn2", "bn3", "bn4", "bn5"]


# ---- fold_scale_bias ----------------------------------------------------------------------------------------

def test_conv_mul_add_chain_folds_into_weight_and_bias():
    graph = parse("""
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
}""", params=rng_params(16, w=(4, 3, 3, 3), s=(1, 4, 1, 1), t=(4, 1, 1)))
    rewrite = run_pass("fold_scale_bias", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[2,4,4,4] = nn.conv(%x, %p0, %p1)
        return %v0""")
    fired = {rule: stat["fired"] for rule, stat in rewrite.explain().items() if stat["fired"]}
    assert fired == {"conv_mul_to_conv": 1, "conv_add_to_conv": 1, "conv_div_to_conv": 1, "conv_sub_to_conv": 1}


def test_matmul_linear_and_conv_transpose_scale_bias():
    graph = parse("""
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
}""", params=rng_params(17, w=(3, 4), s=(4,), b=(1, 1, 4), w2=(4, 2), b2=(2,), tw=(2, 3, 2, 2), ts=(3, 1, 1)))
    run_pass("fold_scale_bias", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[3,4]
        param %p1: float32[4]
        param %p2: float32[4,2]
        param %p3: float32[2]
        param %p4: float32[2,3,2,2]
        %v0: float32[2,5,4] = nn.linear(%x, %p0, %p1)
        %v1: float32[2,5,2] = nn.linear(%v0, %p2, %p3)
        %v2: float32[1,3,4,4] = nn.conv_transpose(%z, %p4)
        return %v1, %v2""")


def test_scale_bias_refusals_say_why():
    graph = parse("""
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
}""", params={**rng_params(18, w2=(2, 2, 1, 1), spatial=(1, 1, 3, 3), wide=(2, 2, 1, 3, 3)), "zero": np.zeros((2, 1, 1), np.float32)})
    rewrite = PASSES["fold_scale_bias"]()
    assert not rewrite(graph)
    mul = refusals(rewrite, "conv_mul_to_conv")
    assert "the constant varies along axis 2, not only along the channel axis 1" in mul
    assert "more dims than the output" in mul
    assert "needs a constant, found a graph input" in mul  # mul4: scaling needs a constant weight
    assert "the divisor has zeros" in refusals(rewrite, "conv_div_to_conv")


# ---- fold_pads ----------------------------------------------------------------------------------------------

def test_zero_pad_folds_into_conv_pads():
    graph = parse("""
graph g(%x: float32[1,2,5,6]) {
  param %w: float32[3,2,3,3]
  param %b: float32[3]
  %p: float32[1,2,8,7] = tensor.pad(%x) {pads=(0, 0, 2, 0, 0, 0, 1, 1)} @pad
  %y: float32[1,3,3,6] = nn.conv(%p, %w, %b) {pads=(0, 1, 0, 0), strides=(2, 1), activation='silu'} @conv
  return %y
}""", params=rng_params(19, w=(3, 2, 3, 3), b=(3,)))
    run_pass("fold_pads", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[3,2,3,3]
        param %p1: float32[3]
        %v0: float32[1,3,3,6] = nn.conv(%x, %p0, %p1) {activation='silu', pads=(2, 1, 1, 1), strides=(2, 1)}
        return %v0""")


def test_zero_pad_folds_into_avg_pool_counting_the_pad():
    graph = parse("""
graph g(%x: float32[1,2,5,5]) {
  %p: float32[1,2,7,7] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @pad
  %y: float32[1,2,3,3] = nn.avg_pool(%p) {kernel=(3, 3), strides=(2, 2)} @pool
  %p2: float32[1,2,7,7] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @pad2
  %y2: float32[1,2,4,4] = nn.avg_pool(%p2) {kernel=(2, 2), strides=(2, 2), pads=(1, 1, 0, 0), count_include_pad=True} @pool2
  return %y, %y2
}""")
    run_pass("fold_pads", graph)
    assert skeleton(graph) == golden("""
        %v0: float32[1,2,3,3] = nn.avg_pool(%x) {count_include_pad=True, kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2)}
        %v1: float32[1,2,4,4] = nn.avg_pool(%x) {count_include_pad=True, kernel=(2, 2), pads=(2, 2, 1, 1), strides=(2, 2)}
        return %v0, %v1""")


def test_lowest_value_pad_folds_into_max_pool():
    lowest = float(np.finfo(np.float32).min)
    graph = parse(f"""
graph g(%x: float32[1,2,5,5]) {{
  %p: float32[1,2,7,6] = tensor.pad(%x) {{pads=(0, 0, 1, 1, 0, 0, 1, 0), value={lowest!r}}} @pad
  %y: float32[1,2,3,3] = nn.max_pool(%p) {{kernel=(3, 3), strides=(2, 2), pads=(0, 0, 0, 1)}} @pool
  return %y
}}""")
    run_pass("fold_pads", graph)
    assert skeleton(graph) == golden("""
        %v0: float32[1,2,3,3] = nn.max_pool(%x) {kernel=(3, 3), pads=(1, 1, 1, 1), strides=(2, 2)}
        return %v0""")


def test_minus_infinity_pad_folds_into_max_pool():
    # built in code: the text form prints value=-inf, which its parser cannot read back
    graph = Graph("g")
    x = graph.add_input("x", TensorType((1, 1, 4, 4), "float32"))
    padded = graph.op("tensor.pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1), value=float("-inf"))
    graph.outputs = [graph.op("nn.max_pool", padded, kernel=(2, 2), strides=(2, 2))]
    run_pass("fold_pads", graph)
    assert skeleton(graph) == golden("""
        %v0: float32[1,1,3,3] = nn.max_pool(%x) {kernel=(2, 2), pads=(1, 1, 1, 1), strides=(2, 2)}
        return %v0""")


def test_pad_refusals_say_why():
    graph = parse("""
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
}""", params=rng_params(20, w=(2, 2, 3, 3), w4=(2, 4, 3, 3)))
    rewrite = run_pass("fold_pads", graph)
    conv = refusals(rewrite, "pad_conv_to_conv")
    for reason in ("reflect padding is not constant padding", "the pad fills with 1; a conv pads with zeros",
                   "the pad also pads the batch or channel axis", "the pad crops"):
        assert reason in conv
    avg = refusals(rewrite, "pad_avg_pool_to_avg_pool")
    assert "leaves its own pads out of the average" in avg
    assert "ceil mode" in avg
    assert "a max pool pads with -inf" in refusals(rewrite, "pad_max_pool_to_max_pool")
    assert sum(node.op == "tensor.pad" for node in graph.nodes) == 7


# ---- fuse_epilogues -----------------------------------------------------------------------------------------

def test_matmul_bias_gelu_becomes_one_linear():
    graph = parse("""
graph g(%x: float32[2,3,8]) {
  param %w: float32[8,16]
  param %b: float32[16]
  %m: float32[2,3,16] = linalg.matmul(%x, %w) @fc
  %a: float32[2,3,16] = math.add(%b, %m) @add
  %y: float32[2,3,16] = math.gelu(%a) {approximate='tanh'} @gelu
  return %y
}""", params=rng_params(21, w=(8, 16), b=(16,)))
    rewrite = run_pass("fuse_epilogues", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[8,16]
        param %p1: float32[16]
        %v0: float32[2,3,16] = nn.linear(%x, %p0, %p1) {activation='gelu_tanh'}
        return %v0""")
    fired = {rule for rule, stat in rewrite.explain().items() if stat["fired"]}
    assert fired == {"matmul_to_linear", "linear_add_to_linear", "linear_gelu_tanh_to_linear"}


def test_conv_bias_add_and_relu6_fuse_into_the_conv():
    graph = parse("""
graph g(%x: float32[1,3,6,6]) {
  param %w: float32[4,3,3,3]
  param %b: float32[1,4,1,1]
  %c: float32[1,4,6,6] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %a: float32[1,4,6,6] = math.add(%c, %b) @add
  %y: float32[1,4,6,6] = math.clip(%a) {min=0.0, max=6.0} @relu6
  return %y
}""", params=rng_params(22, w=(4, 3, 3, 3), b=(1, 4, 1, 1)))
    run_pass("fuse_epilogues", graph)
    assert skeleton(graph) == golden("""
        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[1,4,6,6] = nn.conv(%x, %p0, %p1) {activation='relu6', pads=(1, 1, 1, 1)}
        return %v0""")


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
    rewrite = run_pass("fuse_epilogues", graph)
    assert [(node.op, node.attrs.get("activation")) for node in graph.nodes] == [
        ("nn.conv", activation), ("tensor.reshape", None), ("nn.linear", activation)]
    assert rewrite.explain()[f"conv_{activation}_to_conv"]["fired"] == 1


def test_epilogue_refusals_say_why():
    graph = parse("""
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
}""", params=rng_params(24, w=(2, 2, 1, 1), wl=(4, 4)))
    rewrite = run_pass("fuse_epilogues", graph)
    assert "max=5.0 does not fit" in refusals(rewrite, "conv_relu6_to_conv")
    assert "users outside the pattern" in refusals(rewrite, "conv_relu_to_conv")
    assert "needs a constant, found a graph input" in refusals(rewrite, "matmul_to_linear")
    assert "activation='relu' does not fit" in refusals(rewrite, "linear_sigmoid_to_linear")
    assert len(graph.nodes) == 7


# ---- the passes by name, and all rules together -------------------------------------------------------------

def test_passes_are_registered_under_their_names():
    passes = parse_pipeline("fold_pads,fold_batch_norm,fold_scale_bias,fuse_epilogues(verify_each=True)")
    assert [p.pass_name for p in passes][:3] == ["fold_pads", "fold_batch_norm", "fold_scale_bias"]
    assert all(isinstance(p, RewritePass) for p in passes) and passes[3].verify_each
    names = [rule.name for rule in FUSION_RULES]
    assert len(names) == len(set(names)) and {"conv_bn_to_conv", "pad_conv_to_conv", "conv_relu_to_conv"} <= set(names)


# ---- property tests: seeded random conv / linear networks ---------------------------------------------------

class RandomNet:
    """A random small CNN + MLP: pads, grouped/strided/dilated convs and transposed convs, bn before
    and after, per-channel scale/bias, every activation, padded pools, matmul heads with bias and bn."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.graph = Graph(f"random_{seed}")

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.graph.add_param(name, np.asarray(array, dtype=np.float32))

    def batch_norm(self, x: Value, channels: int) -> Value:
        rng = self.rng
        return self.graph.op("nn.batch_norm", x, self.const("gamma", rng.uniform(0.5, 1.5, channels)),
                             self.const("beta", rng.normal(0, 0.5, channels)), self.const("mean", rng.normal(0, 0.5, channels)),
                             self.const("var", rng.uniform(0.3, 2.0, channels)), epsilon=float(rng.choice([1e-5, 1e-3])))

    def activation(self, x: Value) -> Value:
        name = str(self.rng.choice(list(ACTIVATIONS)))
        spec = ACTIVATIONS[name]
        return x if spec is None else self.graph.op(spec[0], x, **spec[1])

    def epilogue(self, x: Value, channels: int, channel_shape: tuple[int, ...]) -> Value:
        choice = self.rng.integers(0, 4)
        if choice == 1:
            x = self.batch_norm(x, channels)
        elif choice == 2:
            scale, shift = self.rng.choice(["math.mul", "math.div"]), self.rng.choice(["math.add", "math.sub"])
            x = self.graph.op(str(scale), x, self.const("scale", self.rng.uniform(0.5, 1.5, channels).reshape(channel_shape)))
            x = self.graph.op(str(shift), x, self.const("shift", self.rng.normal(0, 0.5, channels).reshape(channel_shape)))
        elif choice == 3:
            x = self.graph.op("math.add", x, self.const("bias", self.rng.normal(0, 0.5, channels).reshape(channel_shape)))
        return self.activation(x)

    def conv_block(self, x: Value) -> Value:
        rng, graph = self.rng, self.graph
        channels = x.shape[1]
        normalized = rng.random() < 0.3
        if normalized:
            x = self.batch_norm(x, channels)
        if rng.random() < 0.2:
            return self.conv_transpose_block(x)
        explicit = not normalized and rng.random() < 0.5
        if explicit:
            widths = [int(w) for w in rng.integers(0, 3, 4)]
            x = graph.op("tensor.pad", x, pads=(0, 0, widths[0], widths[1], 0, 0, widths[2], widths[3]))
        groups = int(rng.choice([g for g in (1, 2, 3) if channels % g == 0]))
        out_channels = groups * int(rng.integers(1, 4))
        kernel, dilation = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        pads = tuple(int(p) for p in rng.integers(0, 2, 4)) if rng.random() < 0.5 else None
        if min(x.shape[2:]) < dilation * (kernel - 1) + 1:
            kernel = 1
        weight = self.const("w", rng.standard_normal((out_channels, channels // groups, kernel, kernel)) / kernel)
        inputs = [x, weight] + ([self.const("b", rng.normal(0, 0.3, out_channels))] if rng.random() < 0.5 else [])
        x = graph.op("nn.conv", *inputs, pads=pads, strides=(int(rng.integers(1, 3)),) * 2,
                     dilations=(dilation, dilation), groups=groups)
        x = self.epilogue(x, out_channels, (out_channels, 1, 1))
        if rng.random() < 0.4 and min(x.shape[2:]) >= 2:
            if rng.random() < 0.5:
                x = graph.op("tensor.pad", x, pads=(0, 0, 1, 0, 0, 0, 0, 1), value=float("-inf"))
                x = graph.op("nn.max_pool", x, kernel=(2, 2), strides=(1, 1))
            else:
                x = graph.op("tensor.pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1))
                x = graph.op("nn.avg_pool", x, kernel=(3, 3), strides=(1, 1))
        return x

    def conv_transpose_block(self, x: Value) -> Value:
        rng = self.rng
        channels = x.shape[1]
        groups = int(rng.choice([g for g in (1, 2) if channels % g == 0]))
        out_channels = groups * int(rng.integers(1, 3))
        weight = self.const("tw", rng.standard_normal((channels, out_channels // groups, 2, 2)) / 2)
        inputs = [x, weight] + ([self.const("tb", rng.normal(0, 0.3, out_channels))] if rng.random() < 0.5 else [])
        x = self.graph.op("nn.conv_transpose", *inputs, strides=(int(rng.integers(1, 3)),) * 2, groups=groups)
        return self.epilogue(x, out_channels, (out_channels, 1, 1))

    def build(self) -> Graph:
        rng, graph = self.rng, self.graph
        x = graph.add_input("x", TensorType((2, int(rng.integers(1, 5)), 9, 9), "float32"))
        for _ in range(int(rng.integers(1, 4))):
            if min(x.shape[2:]) < 4:
                break
            x = self.conv_block(x)
        features = int(np.prod(x.shape[1:]))
        x = graph.op("tensor.reshape", x, shape=(2, features))
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < 0.25:
                x = self.batch_norm(x, features)
            width = int(rng.integers(2, 7))
            x = graph.op("linalg.matmul", x, self.const("fc", rng.standard_normal((features, width)) / np.sqrt(features)))
            x = self.epilogue(x, width, (width,))
            features = width
        graph.outputs = [x]
        verify(graph)
        return graph


@pytest.mark.parametrize("seed", range(32))
def test_random_networks_fuse_without_changing_what_they_compute(seed: int):
    graph = RandomNet(seed).build()
    original = graph.clone()
    for name in PASSES:
        run_pass(name, graph, seed)
    assert not any(node.op == "tensor.pad" for node in graph.nodes)  # every generated pad is foldable
    assert not any(node.op == "linalg.matmul" for node in graph.nodes)
    # all rules at once reach the same kind of fixed point from the original graph
    together = original.clone()
    assert RewritePass("fuse", FUSION_RULES, verify_each=True)(together)  # there is always a matmul head
    feeds = sample_inputs(original, seed)
    assert_same_outputs(interpret(original, feeds), interpret(together, feeds))
    assert not RewritePass("fuse", FUSION_RULES)(together)
    assert len(together.nodes) <= len(graph.nodes)


# ---- the zoo --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_zoo_cnns_lose_every_batch_norm(name: str):
    from optc.frontends.torch import capture
    from optc.tools import zoo

    model, inputs = zoo.build(name, size="tiny")
    graph = capture(model, inputs)
    original = graph.clone()
    run_pass("fold_batch_norm", graph)
    run_pass("fuse_epilogues", graph)
    assert not any(node.op == "nn.batch_norm" for node in graph.nodes)
    assert len(graph.nodes) < len(original.nodes) - original.op_counts()["nn.batch_norm"]
    feeds = sample_inputs(original, 0)
    reference, fused = interpret(original, feeds), interpret(graph, feeds)
    for output in reference:
        scale = float(np.abs(reference[output]).max())
        np.testing.assert_allclose(fused[output], reference[output], rtol=1e-4, atol=1e-5 * scale)


# ---- compiled ------------------------------------------------------------------------------------------------

def conv_bn_relu_linear_gelu() -> Graph:
    graph = parse("""
graph g(%x: float32[2,3,8,8]) {
  param %w: float32[4,3,3,3]""" + BN_DECLS.format(c=4) + """
  param %fc: float32[256,10]
  param %fc_bias: float32[10]
  %c: float32[2,4,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %n: float32[2,4,8,8] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) @bn
  %r: float32[2,4,8,8] = math.relu(%n) @relu
  %f: float32[2,256] = tensor.reshape(%r) {shape=(2, 256)} @flatten
  %m: float32[2,10] = linalg.matmul(%f, %fc) @fc
  %a: float32[2,10] = math.add(%m, %fc_bias) @add
  %y: float32[2,10] = math.gelu(%a) @gelu
  return %y
}""", params={**rng_params(25, w=(4, 3, 3, 3), fc_bias=(10,)), **bn_params(4, 26),
              "fc": (np.random.default_rng(27).standard_normal((256, 10)) / 16).astype(np.float32)})
    return graph


def test_fused_graph_compiles_to_the_same_results():
    from optc.backends import compile_graph

    original = conv_bn_relu_linear_gelu()
    fused = original.clone()
    fold_batch_norm()(fused)
    fuse_epilogues()(fused)
    assert [node.op for node in fused.nodes] == ["nn.conv", "tensor.reshape", "nn.linear"]
    assert len(fused.nodes) < len(original.nodes)
    feeds = sample_inputs(original, 0)
    reference = interpret(original, feeds)
    compiled_original = compile_graph(original, target="cpu").run(feeds)
    compiled_fused = compile_graph(fused, target="cpu").run(feeds)
    for name in reference:
        np.testing.assert_allclose(compiled_original[name], reference[name], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(compiled_fused[name], reference[name], rtol=1e-4, atol=1e-4)


def test_activation_behind_a_reshape_fuses_into_the_linear():
    rng = np.random.default_rng(7)
    graph = parse("""
graph g(%x: float32[2,3,8]) {
  param %w: float32[8,6]
  param %b: float32[6]
  %flat: float32[6,8] = tensor.reshape(%x) {shape=(6, 8)} @flat
  %lin: float32[6,6] = nn.linear(%flat, %w, %b) @lin
  %back: float32[2,3,6] = tensor.reshape(%lin) {shape=(2, 3, 6)} @back
  %y: float32[2,3,6] = math.gelu(%back) @y
  return %y
}""", params={"w": rng.standard_normal((8, 6)).astype("float32"), "b": rng.standard_normal(6).astype("float32")})
    feeds = {"x": rng.standard_normal((2, 3, 8)).astype("float32")}
    expected = interpret(graph, feeds)["y"]
    assert fuse_epilogues(verify_each=True)(graph)
    assert [node.op for node in graph.nodes] == ["tensor.reshape", "nn.linear", "tensor.reshape"]
    assert graph.nodes[1].attrs["activation"] == "gelu" and graph.outputs[0].name == "y"
    np.testing.assert_allclose(interpret(graph, feeds)["y"], expected, rtol=1e-5, atol=1e-6)
    assert not fuse_epilogues()(graph)
