"""The recognize pass: the golden before/after, numerics and refusals of its norm, GELU, SiLU,
hard-swish and softmax rules, and the pass as a whole. Attention is in test_recognize_attention.py,
random chains and the zoo in test_recognize_zoo.py."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, parse
from optc.passes import PassManager, parse_pipeline
from optc.passes.recognize import RECOGNITION_RULES, recognize
from optc.passes.testing import check_rewrite, refusal_reasons

TOL = {"rtol": 1e-4, "atol": 1e-5}  # a fused op rounds differently from its decomposed form
SQRT2 = "1.4142135381698608"  # float32(sqrt(2)), as exporters store it


def one_param(graph: Graph, op: str, position: int) -> np.ndarray:
    node = next(node for node in graph.nodes if node.op == op)
    return graph.params[node.inputs[position]]


GAMMA = np.linspace(0.5, 1.5, 8, dtype="float32")
BETA = np.linspace(-0.3, 0.3, 8, dtype="float32")


# ---- layer norm ----------------------------------------------------------------------------------------

LAYER_NORM_ONNX13 = """
graph g(%x: float32[2,3,8]) {
  param %two: float32[] = 2.0
  param %eps: float32[] = 9.999999747378752e-06
  param %gamma: float32[8]
  param %beta: float32[8]
  %mean: float32[2,3,1] = reduce.mean(%x) {axes=(2,)} @mean
  %centered: float32[2,3,8] = math.sub(%x, %mean) @sub
  %square: float32[2,3,8] = math.pow(%centered, %two) @pow
  %var: float32[2,3,1] = reduce.mean(%square) {axes=(2,)} @var
  %var_eps: float32[2,3,1] = math.add(%var, %eps) @add
  %root: float32[2,3,1] = math.sqrt(%var_eps) @sqrt
  %normalized: float32[2,3,8] = math.div(%centered, %root) @div
  %scaled: float32[2,3,8] = math.mul(%normalized, %gamma) @mul
  %y: float32[2,3,8] = math.add(%scaled, %beta) @add_1
  return %y
}"""


def test_layer_norm_as_onnx_opset_13_exports_it() -> None:
    graph = check_rewrite(recognize(verify_each=True), LAYER_NORM_ONNX13, ["nn.layer_norm(x, $8, $8) {epsilon=1e-05}"],
                          params={"gamma": GAMMA, "beta": BETA},
                          fired={"layer_norm": 1, "fold_norm_scale": 1, "fold_norm_bias": 1}, **TOL)
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 1), GAMMA)
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 2), BETA)
    assert graph.outputs[0].name == "y"


def test_layer_norm_with_gamma_first_and_the_centering_computed_twice() -> None:
    # torch's capture of w * (x - u) / sqrt(var + eps) + b, written by hand in a module
    graph = check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[2,3,8]) {
  param %two: float32[] = 2.0
  param %eps: float32[] = 9.999999747378752e-06
  param %w: float32[8]
  param %b: float32[8]
  %mean: float32[2,3,1] = reduce.mean(%x) {axes=(2,)} @mean
  %sub: float32[2,3,8] = math.sub(%x, %mean) @sub
  %pow: float32[2,3,8] = math.pow(%sub, %two) @pow
  %var: float32[2,3,1] = reduce.mean(%pow) {axes=(2,)} @var
  %sub_1: float32[2,3,8] = math.sub(%x, %mean) @sub_1
  %mul: float32[2,3,8] = math.mul(%w, %sub_1) @mul
  %add: float32[2,3,1] = math.add(%var, %eps) @add
  %sqrt: float32[2,3,1] = math.sqrt(%add) @sqrt
  %div: float32[2,3,8] = math.div(%mul, %sqrt) @div
  %y: float32[2,3,8] = math.add(%div, %b) @add_1
  return %y
}""", ["nn.layer_norm(x, $8, $8) {epsilon=1e-05}"], params={"w": GAMMA, "b": BETA},
        fired={"layer_norm": 1, "fold_norm_bias": 1}, **TOL)
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 1), GAMMA)


INVERSE_ROOTS = {
    "rsqrt": "%inv: float32[4,1] = math.rsqrt(%var_eps) @inv",
    "reciprocal": "%root: float32[4,1] = math.sqrt(%var_eps) @root\n  %inv: float32[4,1] = math.reciprocal(%root) @inv",
    "one_over": "%root: float32[4,1] = math.sqrt(%var_eps) @root\n  %inv: float32[4,1] = math.div(%one, %root) @inv",
}


@pytest.mark.parametrize("inverse", sorted(INVERSE_ROOTS))
def test_layer_norm_times_an_inverse_root_with_squares_written_as_products(inverse: str) -> None:
    graph = check_rewrite(recognize(verify_each=True), f"""
graph g(%x: float32[4,16]) {{
  param %one: float32[] = 1.0
  param %eps: float32[] = 1e-6
  %mean: float32[4,1] = reduce.mean(%x) {{axes=(-1,)}} @mean
  %centered: float32[4,16] = math.sub(%x, %mean) @sub
  %square: float32[4,16] = math.mul(%centered, %centered) @square
  %var: float32[4,1] = reduce.mean(%square) {{axes=(1,)}} @var
  %var_eps: float32[4,1] = math.add(%eps, %var) @add
  {INVERSE_ROOTS[inverse]}
  %y: float32[4,16] = math.mul(%inv, %centered) @y
  return %y
}}""", ["nn.layer_norm(x, $16) {epsilon=1e-06}"], fired={"layer_norm_rsqrt": 1}, **TOL)
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 1), np.ones(16, "float32"))


def test_layer_norm_over_the_two_trailing_axes() -> None:
    check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[2,3,4]) {
  param %eps: float32[1] = [1e-5]
  %mean: float32[2,1,1] = reduce.mean(%x) {axes=(1, 2)} @mean
  %c: float32[2,3,4] = math.sub(%x, %mean) @sub
  %sq: float32[2,3,4] = math.mul(%c, %c) @sq
  %var: float32[2,1,1] = reduce.mean(%sq) {axes=(-2, -1)} @var
  %ve: float32[2,1,1] = math.add(%var, %eps) @add
  %root: float32[2,1,1] = math.sqrt(%ve) @sqrt
  %y: float32[2,3,4] = math.div(%c, %root) @y
  return %y
}""", ["nn.layer_norm(x, $3,4) {axis=-2, epsilon=1e-05}"], **TOL)


def test_scale_and_bias_after_an_existing_norm_fold_into_it() -> None:
    graph = check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[2,8]) {
  param %s: float32[8]
  param %b: float32[8]
  param %two: float32[1,8]
  param %shift: float32[] = 0.25
  %n: float32[2,8] = nn.layer_norm(%x, %s, %b) @n
  %m: float32[2,8] = math.mul(%two, %n) @m
  %y: float32[2,8] = math.add(%m, %shift) @y
  return %y
}""", ["nn.layer_norm(x, $8, $8)"], params={"s": GAMMA, "b": BETA, "two": np.full((1, 8), 2.0, "float32")}, **TOL)
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 1), 2 * GAMMA)
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 2), 2 * BETA + 0.25)


def test_layer_norm_refusals_say_why() -> None:
    # the mean is over the middle axis: not a layer norm over trailing axes
    middle = LAYER_NORM_ONNX13.replace("float32[2,3,1]", "float32[2,1,8]").replace("axes=(2,)", "axes=(1,)")
    rewrite = recognize()
    check_rewrite(rewrite, middle, params={"gamma": GAMMA, "beta": BETA}, changes=False)
    assert refusal_reasons(rewrite, "layer_norm") == {"the mean is over axes (1,), not the trailing axes of a rank-3 tensor": 1}
    # a per-row epsilon is no epsilon
    per_row = LAYER_NORM_ONNX13.replace("param %eps: float32[] = 9.999999747378752e-06", "param %eps: float32[2,3,1]")
    rewrite = recognize()
    check_rewrite(rewrite, per_row, params={"gamma": GAMMA, "beta": BETA, "eps": np.full((2, 3, 1), 1e-5, "float32")}, changes=False)
    assert refusal_reasons(rewrite, "layer_norm") == {"epsilon is not a scalar in [0, 1)": 1}


def test_centering_over_another_axis_is_no_layer_norm_but_still_an_rms_norm() -> None:
    mixed = LAYER_NORM_ONNX13.replace("%mean: float32[2,3,1] = reduce.mean(%x) {axes=(2,)}",
                                      "%mean: float32[1,3,8] = reduce.mean(%x) {axes=(0,)}")
    rewrite = recognize(verify_each=True)
    check_rewrite(rewrite, mixed, ["reduce.mean(x) {axes=(0,)}", "math.sub(x, %0)", "nn.rms_norm(%1, $8) {epsilon=1e-05}",
                                   "math.add(%2, $8)"], params={"gamma": GAMMA, "beta": BETA}, **TOL)
    assert refusal_reasons(rewrite, "layer_norm") == {"the means reduce different axes: [(0,), (2,)]": 1}


def test_fold_norm_scale_refuses_a_multiplier_that_varies_per_row() -> None:
    rewrite = recognize()
    check_rewrite(rewrite, """
graph g(%x: float32[2,8]) {
  param %s: float32[8]
  param %rows: float32[2,1] = [[1.0], [2.0]]
  %n: float32[2,8] = nn.layer_norm(%x, %s) @n
  %y: float32[2,8] = math.mul(%n, %rows) @y
  return %y
}""", params={"s": GAMMA}, changes=False)
    assert refusal_reasons(rewrite, "fold_norm_scale") == {"a (2, 1) constant varies along axes the norm does not normalize": 1}


# ---- RMS norm ------------------------------------------------------------------------------------------

RMS_FORMS = {
    # torch's capture of nn.RMSNorm and of LLaMA's RMSNorm
    "torch": ("%inv: float32[2,3,1] = math.rsqrt(%ve) @inv\n  %n: float32[2,3,8] = math.mul(%x, %inv) @n",
              "%y: float32[2,3,8] = math.mul(%n, %w) @y"),
    # torch.onnx at opset 13: 1 / sqrt(...)
    "onnx13": ("%r: float32[2,3,1] = math.sqrt(%ve) @r\n  %inv: float32[2,3,1] = math.div(%one, %r) @inv\n"
               "  %n: float32[2,3,8] = math.mul(%x, %inv) @n", "%y: float32[2,3,8] = math.mul(%w, %n) @y"),
    # the dynamo exporter: reciprocal(sqrt(...))
    "dynamo": ("%r: float32[2,3,1] = math.sqrt(%ve) @r\n  %inv: float32[2,3,1] = math.reciprocal(%r) @inv\n"
               "  %n: float32[2,3,8] = math.mul(%x, %inv) @n", "%y: float32[2,3,8] = math.mul(%n, %w) @y"),
    "div": ("%r: float32[2,3,1] = math.sqrt(%ve) @r\n  %n: float32[2,3,8] = math.div(%x, %r) @n",
            "%y: float32[2,3,8] = math.mul(%n, %w) @y"),
}


@pytest.mark.parametrize("form", sorted(RMS_FORMS))
def test_rms_norm(form: str) -> None:
    normalize, weigh = RMS_FORMS[form]
    rule = "rms_norm" if form == "div" else "rms_norm_rsqrt"
    graph = check_rewrite(recognize(verify_each=True), f"""
graph g(%x: float32[2,3,8]) {{
  param %two: float32[] = 2.0
  param %one: float32[] = 1.0
  param %eps: float32[] = 9.999999974752427e-07
  param %w: float32[8]
  %sq: float32[2,3,8] = math.pow(%x, %two) @sq
  %ms: float32[2,3,1] = reduce.mean(%sq) {{axes=(2,)}} @ms
  %ve: float32[2,3,1] = math.add(%ms, %eps) @ve
  {normalize}
  {weigh}
  return %y
}}""", ["nn.rms_norm(x, $8) {epsilon=1e-06}"],  # float32(1e-6), not quite the default
        params={"w": GAMMA}, fired={rule: 1, "fold_norm_scale": 1}, **TOL)
    np.testing.assert_allclose(one_param(graph, "nn.rms_norm", 1), GAMMA)


# ---- GELU --------------------------------------------------------------------------------------------

ERF_ARGUMENTS = {"div": "math.div(%x, %sqrt2)", "mul": "math.mul(%x, %inv_sqrt2)"}
GELU_GROUPINGS = {
    # (x * (1 + erf)) * 0.5: torch.onnx's nn.GELU
    "x_times_sum_then_half": "%p: float32[4,8] = math.mul(%x, %one_plus) @p\n  %y: float32[4,8] = math.mul(%p, %half) @y",
    # (0.5 * x) * (1 + erf): 0.5 * x * (1 + erf(...)) written in a module
    "half_x_times_sum": "%p: float32[4,8] = math.mul(%half, %x) @p\n  %y: float32[4,8] = math.mul(%p, %one_plus) @y",
    # x * ((1 + erf) * 0.5)
    "x_times_half_sum": "%p: float32[4,8] = math.mul(%one_plus, %half) @p\n  %y: float32[4,8] = math.mul(%x, %p) @y",
    # x * (0.5 + 0.5 * erf)
    "x_times_half_plus_half_erf": "%h: float32[4,8] = math.mul(%erf, %half) @h\n"
                                  "  %p: float32[4,8] = math.add(%half, %h) @p\n  %y: float32[4,8] = math.mul(%x, %p) @y",
}


def gelu_erf_text(argument: str, grouping: str) -> str:
    one_plus = "" if grouping == "x_times_half_plus_half_erf" else "%one_plus: float32[4,8] = math.add(%erf, %one) @one_plus"
    return f"""
graph g(%x: float32[4,8]) {{
  param %sqrt2: float32[] = {SQRT2}
  param %inv_sqrt2: float32[] = 0.7071067690849304
  param %one: float32[] = 1.0
  param %half: float32[] = 0.5
  %arg: float32[4,8] = {ERF_ARGUMENTS[argument]} @arg
  %erf: float32[4,8] = math.erf(%arg) @erf
  {one_plus}
  {GELU_GROUPINGS[grouping]}
  return %y
}}"""


@pytest.mark.parametrize("argument", sorted(ERF_ARGUMENTS))
@pytest.mark.parametrize("grouping", sorted(GELU_GROUPINGS))
def test_gelu_erf_forms(argument: str, grouping: str) -> None:
    graph = check_rewrite(recognize(verify_each=True), gelu_erf_text(argument, grouping), ["math.gelu(x)"],
                          fired={"gelu_erf": 1}, **TOL)
    assert not graph.params


GELU_TANH_CUBES = {
    # GPT-2's gelu_new as torch captures it and torch.onnx exports it
    "pow": "%cube: float32[4,8] = math.pow(%x, %three) @cube\n  %cubic: float32[4,8] = math.mul(%cube, %c) @cubic\n"
           "  %poly: float32[4,8] = math.add(%x, %cubic) @poly",
    # torch.onnx's nn.GELU(approximate="tanh"): x * (x * x)
    "products": "%sq: float32[4,8] = math.mul(%x, %x) @sq\n  %cube: float32[4,8] = math.mul(%x, %sq) @cube\n"
                "  %cubic: float32[4,8] = math.mul(%c, %cube) @cubic\n  %poly: float32[4,8] = math.add(%x, %cubic) @poly",
    # x * (1 + 0.044715 x^2)
    "factored": "%sq: float32[4,8] = math.mul(%x, %x) @sq\n  %q: float32[4,8] = math.mul(%sq, %c) @q\n"
                "  %q1: float32[4,8] = math.add(%q, %one) @q1\n  %poly: float32[4,8] = math.mul(%x, %q1) @poly",
}


@pytest.mark.parametrize("cube", sorted(GELU_TANH_CUBES))
def test_gelu_tanh_forms(cube: str) -> None:
    check_rewrite(recognize(verify_each=True), f"""
graph g(%x: float32[4,8]) {{
  param %three: float32[] = 3.0
  param %c: float32[] = 0.044714998453855515
  param %k: float32[] = 0.7978845834732056
  param %one: float32[] = 1.0
  param %half: float32[] = 0.5
  %hx: float32[4,8] = math.mul(%x, %half) @hx
  {GELU_TANH_CUBES[cube]}
  %arg: float32[4,8] = math.mul(%poly, %k) @arg
  %t: float32[4,8] = math.tanh(%arg) @t
  %t1: float32[4,8] = math.add(%t, %one) @t1
  %y: float32[4,8] = math.mul(%hx, %t1) @y
  return %y
}}""", ["math.gelu(x) {approximate='tanh'}"], fired={"gelu_tanh": 1}, **TOL)


def test_gelu_refusals_say_why() -> None:
    # 0.7 is not 1/sqrt(2): an approximation GELU is not
    rewrite = recognize()
    check_rewrite(rewrite, gelu_erf_text("mul", "x_times_sum_then_half").replace("0.7071067690849304", "0.7"), changes=False)
    assert "not a constant 0.7071068" in refusal_reasons(rewrite, "gelu_erf")
    # the erf is read elsewhere too: replacing the rest would compute it twice
    shared = gelu_erf_text("div", "x_times_sum_then_half").replace("return %y", "return %y, %erf")
    rewrite = recognize()
    check_rewrite(rewrite, shared, changes=False)
    assert "an intermediate result (erf) has users outside the pattern" in refusal_reasons(rewrite, "gelu_erf")
    # a 0.5 of shape (3,4,8) broadcasts x: gelu(x) would have another shape
    broadcast = gelu_erf_text("div", "x_times_sum_then_half") \
        .replace("param %half: float32[] = 0.5", "param %half: float32[3,4,8]") \
        .replace("%y: float32[4,8] = math.mul(%p, %half)", "%y: float32[3,4,8] = math.mul(%p, %half)")
    rewrite = recognize()
    check_rewrite(rewrite, broadcast, params={"half": np.full((3, 4, 8), 0.5, "float32")}, changes=False)
    assert "a constant broadcasts x to a bigger shape" in refusal_reasons(rewrite, "gelu_erf")


# ---- SiLU, hard-sigmoid, hard-swish ----------------------------------------------------------------------------

def test_silu_forms() -> None:
    check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[4,8], %z: float32[4,8]) {
  param %one: float32[] = 1.0
  %s: float32[4,8] = math.sigmoid(%x) @s
  %a: float32[4,8] = math.mul(%x, %s) @a
  %n: float32[4,8] = math.neg(%z) @n
  %e: float32[4,8] = math.exp(%n) @e
  %d: float32[4,8] = math.add(%one, %e) @d
  %b: float32[4,8] = math.div(%z, %d) @b
  return %a, %b
}""", ["math.silu(x)", "math.silu(z)"], fired={"silu": 1, "silu_exp": 1}, **TOL)


RELU6_FORMS = {
    # torch captures F.hardswish's clamp as two clips
    "two_clips": "%lo: float32[4,8] = math.clip(%s) {min=0.0} @lo\n  %r6: float32[4,8] = math.clip(%lo) {max=6.0} @r6",
    "clip": "%r6: float32[4,8] = math.clip(%s) {min=0.0, max=6.0} @r6",
    "max_min": "%lo: float32[4,8] = math.maximum(%zero, %s) @lo\n  %r6: float32[4,8] = math.minimum(%lo, %six) @r6",
}
HARD_SWISH_TAILS = {
    "div": ("%m: float32[4,8] = math.mul(%x, %r6) @m\n  %y: float32[4,8] = math.div(%m, %six) @y", "hard_swish"),
    "mul_sixth": ("%m: float32[4,8] = math.mul(%r6, %x) @m\n  %y: float32[4,8] = math.mul(%m, %sixth) @y", "hard_swish_mul"),
}


def relu6_text(relu6: str, tail: str) -> str:
    return f"""
graph g(%x: float32[4,8]) {{
  param %zero: float32[] = 0.0
  param %three: float32[] = 3.0
  param %six: float32[] = 6.0
  param %sixth: float32[] = 0.1666666716337204
  %s: float32[4,8] = math.add(%x, %three) @s
  {RELU6_FORMS[relu6]}
  {tail}
  return %y
}}"""


@pytest.mark.parametrize("relu6", sorted(RELU6_FORMS))
@pytest.mark.parametrize("tail", sorted(HARD_SWISH_TAILS))
def test_hard_swish_forms(relu6: str, tail: str) -> None:
    text, rule = HARD_SWISH_TAILS[tail]
    check_rewrite(recognize(verify_each=True), relu6_text(relu6, text), ["math.hard_swish(x)"], fired={rule: 1}, **TOL)


def test_hard_sigmoid_and_x_times_hard_sigmoid() -> None:
    check_rewrite(recognize(verify_each=True), relu6_text("two_clips", "%y: float32[4,8] = math.div(%r6, %six) @y"),
                  ["math.hard_sigmoid(x) {alpha=0.166667}"], fired={"hard_sigmoid": 1}, **TOL)
    # x * (relu6(x + 3) * 1/6): the hard sigmoid first, then x times it
    check_rewrite(recognize(verify_each=True),
                  relu6_text("clip", "%h: float32[4,8] = math.mul(%r6, %sixth) @h\n  %y: float32[4,8] = math.mul(%x, %h) @y"),
                  ["math.hard_swish(x)"], fired={"hard_sigmoid_mul": 1, "hard_swish_mul": 1}, **TOL)
    # torch.onnx at opset 13 exports nn.Hardswish as x * HardSigmoid(x, alpha=1/6)
    check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[4,8]) {
  %h: float32[4,8] = math.hard_sigmoid(%x) {alpha=0.1666666716337204} @h
  %y: float32[4,8] = math.mul(%x, %h) @y
  return %y
}""", ["math.hard_swish(x)"], fired={"hard_swish_mul": 1}, **TOL)


def test_hard_swish_refuses_another_shift() -> None:
    shifted_by_two = relu6_text("clip", HARD_SWISH_TAILS["div"][0]).replace("%three: float32[] = 3.0", "%three: float32[] = 2.0")
    rewrite = recognize()
    check_rewrite(rewrite, shifted_by_two, changes=False)
    assert refusal_reasons(rewrite, "hard_swish") == {"not a constant 3": 1}


# ---- softmax ------------------------------------------------------------------------------------------

def test_softmax_with_and_without_the_max() -> None:
    check_rewrite(recognize(verify_each=True), """
graph g(%x: float32[2,3,8], %z: float32[2,3,8]) {
  %max: float32[2,3,1] = reduce.max(%x) {axes=(2,)} @max
  %shifted: float32[2,3,8] = math.sub(%x, %max) @shifted
  %e: float32[2,3,8] = math.exp(%shifted) @e
  %s: float32[2,3,1] = reduce.sum(%e) {axes=(-1,)} @s
  %a: float32[2,3,8] = math.div(%e, %s) @a
  %ez: float32[2,3,8] = math.exp(%z) @ez
  %sz: float32[1,3,8] = reduce.sum(%ez) {axes=(0,)} @sz
  %b: float32[2,3,8] = math.div(%ez, %sz) @b
  return %a, %b
}""", ["nn.softmax(x)", "nn.softmax(z) {axis=-3}"], fired={"softmax": 2}, **TOL)


def test_softmax_refusals_say_why() -> None:
    rewrite = recognize()
    check_rewrite(rewrite, """
graph g(%x: float32[2,3,8]) {
  %max: float32[2,1,8] = reduce.max(%x) {axes=(1,)} @max
  %shifted: float32[2,3,8] = math.sub(%x, %max) @shifted
  %e: float32[2,3,8] = math.exp(%shifted) @e
  %s: float32[2,3,1] = reduce.sum(%e) {axes=(2,)} @s
  %y: float32[2,3,8] = math.div(%e, %s) @y
  %e2: float32[2,3,8] = math.exp(%x) @e2
  %s2: float32[2,1,1] = reduce.sum(%e2) {axes=(1, 2)} @s2
  %y2: float32[2,3,8] = math.div(%e2, %s2) @y2
  return %y, %y2
}""", changes=False)
    assert refusal_reasons(rewrite, "softmax") == {"the max reduces axes (1,), the sum (2,)": 1, "the sum reduces axes (1, 2), not one axis": 1}



# ---- the pass as a whole -----------------------------------------------------------------------------------

def test_the_pass_is_registered_and_its_rules_are_data() -> None:
    (rewrite,) = parse_pipeline("recognize")
    assert rewrite(parse(gelu_erf_text("div", "x_times_sum_then_half")))
    assert set(rewrite.explain()) == {rule.name for rule in RECOGNITION_RULES}
    assert {"layer_norm", "rms_norm", "gelu_erf", "gelu_tanh", "silu", "hard_swish", "softmax", "attention"} <= \
        {rule.name for rule in RECOGNITION_RULES}
    graph = parse(gelu_erf_text("div", "x_times_sum_then_half"))
    report = PassManager("recognize").run(graph)
    assert report.rows[0].rules["gelu_erf"]["fired"] == 1

