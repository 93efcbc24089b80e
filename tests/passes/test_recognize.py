"""The recognize pass: every rule's golden before/after and numerics, refusals, idempotence, the zoo."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from optc.ir import Graph, TensorType, interpret, parse, verify
from optc.ir.graph import Value
from optc.ir.interpret import random_array
from optc.ir.ops import registry
from optc.passes import PassManager, parse_pipeline
from optc.passes.recognize import RECOGNITION_RULES, recognize

RTOL, ATOL = 1e-4, 1e-5
SQRT2 = "1.4142135381698608"  # float32(sqrt(2)), as exporters store it


# ---- helpers ------------------------------------------------------------------------------------------

def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {value.name: random_array(rng, tuple(value.type.static_shape()), value.dtype) for value in graph.inputs}


def assert_same_outputs(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    assert expected.keys() == got.keys()
    for name, reference in expected.items():
        np.testing.assert_allclose(got[name], reference, rtol=RTOL, atol=ATOL, err_msg=name)


def run_recognize(graph: Graph, feeds: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any]]:
    """Recognize in place; checks the graph verifies, outputs hold and a second run changes nothing."""
    feeds = feeds if feeds is not None else feeds_for(graph)
    before = interpret(graph, feeds)
    rewrite = recognize(verify_each=True)
    rewrite(graph)
    verify(graph)
    assert_same_outputs(before, interpret(graph, feeds))
    assert not recognize()(graph), "a second run still rewrote something"
    return rewrite.explain()


def body(graph: Graph) -> list[str]:
    """The nodes as ``op(inputs) {attrs}``: graph inputs by name, params as ``$shape``, outputs as ``%n``."""
    names = {id(value): value.name for value in graph.inputs}
    names.update({id(value): "$" + ",".join(map(str, value.shape)) for value in graph.params})
    lines = []
    for index, node in enumerate(graph.nodes):
        for position, value in enumerate(node.outputs):
            names[id(value)] = f"%{index}" if len(node.outputs) == 1 else f"%{index}.{position}"
        schema = registry.get(node.op).attrs
        shown = sorted((key, value) for key, value in node.attrs.items()
                       if schema[key].default is registry.REQUIRED or schema[key].default != value)
        attrs = ", ".join(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value!r}" for key, value in shown)
        inputs = ", ".join(names[id(value)] for value in node.inputs)
        lines.append(f"{node.op}({inputs})" + (f" {{{attrs}}}" if attrs else ""))
    return lines


def fired(explain: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: stats["fired"] for name, stats in explain.items() if stats["fired"]}


def refusals(text: str, params: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, int]]:
    """Run the pass on a graph it must leave alone; the refusal reasons per rule."""
    graph = parse(text, params=params)
    printed = str(graph)
    rewrite = recognize()
    assert not rewrite(graph)
    assert str(graph) == printed  # a refusal changes nothing, not even the params
    return {name: stats["refused"] for name, stats in rewrite.explain().items() if stats["refused"]}


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
    graph = parse(LAYER_NORM_ONNX13, params={"gamma": GAMMA, "beta": BETA})
    explain = run_recognize(graph)
    assert body(graph) == ["nn.layer_norm(x, $8, $8) {epsilon=1e-05}"]
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 1), GAMMA)
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 2), BETA)
    assert fired(explain) == {"layer_norm": 1, "fold_norm_scale": 1, "fold_norm_bias": 1}
    assert graph.outputs[0].name == "y"


def test_layer_norm_with_gamma_first_and_the_centering_computed_twice() -> None:
    # torch's capture of w * (x - u) / sqrt(var + eps) + b, written by hand in a module
    graph = parse("""
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
}""", params={"w": GAMMA, "b": BETA})
    explain = run_recognize(graph)
    assert body(graph) == ["nn.layer_norm(x, $8, $8) {epsilon=1e-05}"]
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 1), GAMMA)
    assert fired(explain) == {"layer_norm": 1, "fold_norm_bias": 1}


INVERSE_ROOTS = {
    "rsqrt": "%inv: float32[4,1] = math.rsqrt(%var_eps) @inv",
    "reciprocal": "%root: float32[4,1] = math.sqrt(%var_eps) @root\n  %inv: float32[4,1] = math.reciprocal(%root) @inv",
    "one_over": "%root: float32[4,1] = math.sqrt(%var_eps) @root\n  %inv: float32[4,1] = math.div(%one, %root) @inv",
}


@pytest.mark.parametrize("inverse", sorted(INVERSE_ROOTS))
def test_layer_norm_times_an_inverse_root_with_squares_written_as_products(inverse: str) -> None:
    graph = parse(f"""
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
}}""")
    explain = run_recognize(graph)
    assert body(graph) == ["nn.layer_norm(x, $16) {epsilon=1e-06}"]
    np.testing.assert_array_equal(one_param(graph, "nn.layer_norm", 1), np.ones(16, "float32"))
    assert fired(explain) == {"layer_norm_rsqrt": 1}


def test_layer_norm_over_the_two_trailing_axes() -> None:
    graph = parse("""
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
}""")
    run_recognize(graph)
    assert body(graph) == ["nn.layer_norm(x, $3,4) {axis=-2, epsilon=1e-05}"]


def test_scale_and_bias_after_an_existing_norm_fold_into_it() -> None:
    graph = parse("""
graph g(%x: float32[2,8]) {
  param %s: float32[8]
  param %b: float32[8]
  param %two: float32[1,8]
  param %shift: float32[] = 0.25
  %n: float32[2,8] = nn.layer_norm(%x, %s, %b) @n
  %m: float32[2,8] = math.mul(%two, %n) @m
  %y: float32[2,8] = math.add(%m, %shift) @y
  return %y
}""", params={"s": GAMMA, "b": BETA, "two": np.full((1, 8), 2.0, "float32")})
    run_recognize(graph)
    assert body(graph) == ["nn.layer_norm(x, $8, $8)"]
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 1), 2 * GAMMA)
    np.testing.assert_allclose(one_param(graph, "nn.layer_norm", 2), 2 * BETA + 0.25)


def test_layer_norm_refusals_say_why() -> None:
    # the mean is over the middle axis: not a layer norm over trailing axes
    middle = LAYER_NORM_ONNX13.replace("float32[2,3,1]", "float32[2,1,8]").replace("axes=(2,)", "axes=(1,)")
    reasons = refusals(middle, params={"gamma": GAMMA, "beta": BETA})
    assert reasons["layer_norm"] == {"the mean is over axes (1,), not the trailing axes of a rank-3 tensor": 1}
    # a per-row epsilon is no epsilon
    per_row = LAYER_NORM_ONNX13.replace("param %eps: float32[] = 9.999999747378752e-06", "param %eps: float32[2,3,1]")
    reasons = refusals(per_row, params={"gamma": GAMMA, "beta": BETA, "eps": np.full((2, 3, 1), 1e-5, "float32")})
    assert reasons["layer_norm"] == {"epsilon is not a scalar in [0, 1)": 1}


def test_centering_over_another_axis_is_no_layer_norm_but_still_an_rms_norm() -> None:
    mixed = LAYER_NORM_ONNX13.replace("%mean: float32[2,3,1] = reduce.mean(%x) {axes=(2,)}",
                                      "%mean: float32[1,3,8] = reduce.mean(%x) {axes=(0,)}")
    graph = parse(mixed, params={"gamma": GAMMA, "beta": BETA})
    explain = run_recognize(graph)
    assert explain["layer_norm"]["refused"] == {"the means reduce different axes: [(0,), (2,)]": 1}
    assert body(graph) == ["reduce.mean(x) {axes=(0,)}", "math.sub(x, %0)", "nn.rms_norm(%1, $8) {epsilon=1e-05}",
                           "math.add(%2, $8)"]


def test_fold_norm_scale_refuses_a_multiplier_that_varies_per_row() -> None:
    reasons = refusals("""
graph g(%x: float32[2,8]) {
  param %s: float32[8]
  param %rows: float32[2,1] = [[1.0], [2.0]]
  %n: float32[2,8] = nn.layer_norm(%x, %s) @n
  %y: float32[2,8] = math.mul(%n, %rows) @y
  return %y
}""", params={"s": GAMMA})
    assert reasons["fold_norm_scale"] == {"a (2, 1) constant varies along axes the norm does not normalize": 1}


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
    graph = parse(f"""
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
}}""", params={"w": GAMMA})
    explain = run_recognize(graph)
    assert body(graph) == ["nn.rms_norm(x, $8) {epsilon=1e-06}"]  # float32(1e-6), not quite the default
    np.testing.assert_allclose(one_param(graph, "nn.rms_norm", 1), GAMMA)
    assert fired(explain) == {"rms_norm" if form == "div" else "rms_norm_rsqrt": 1, "fold_norm_scale": 1}


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
    graph = parse(gelu_erf_text(argument, grouping))
    assert fired(run_recognize(graph)) == {"gelu_erf": 1}
    assert body(graph) == ["math.gelu(x)"]
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
    graph = parse(f"""
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
}}""")
    assert fired(run_recognize(graph)) == {"gelu_tanh": 1}
    assert body(graph) == ["math.gelu(x) {approximate='tanh'}"]


def test_gelu_refusals_say_why() -> None:
    # 0.7 is not 1/sqrt(2): an approximation GELU is not
    reasons = refusals(gelu_erf_text("mul", "x_times_sum_then_half").replace("0.7071067690849304", "0.7"))
    assert "not a constant 0.7071068" in reasons["gelu_erf"]
    # the erf is read elsewhere too: replacing the rest would compute it twice
    shared = gelu_erf_text("div", "x_times_sum_then_half").replace("return %y", "return %y, %erf")
    assert "an intermediate result (erf) has users outside the pattern" in refusals(shared)["gelu_erf"]
    # a 0.5 of shape (3,4,8) broadcasts x: gelu(x) would have another shape
    broadcast = gelu_erf_text("div", "x_times_sum_then_half") \
        .replace("param %half: float32[] = 0.5", "param %half: float32[3,4,8]") \
        .replace("%y: float32[4,8] = math.mul(%p, %half)", "%y: float32[3,4,8] = math.mul(%p, %half)")
    reasons = refusals(broadcast, params={"half": np.full((3, 4, 8), 0.5, "float32")})
    assert "a constant broadcasts x to a bigger shape" in reasons["gelu_erf"]


# ---- SiLU, hard-sigmoid, hard-swish ----------------------------------------------------------------------------

def test_silu_forms() -> None:
    graph = parse("""
graph g(%x: float32[4,8], %z: float32[4,8]) {
  param %one: float32[] = 1.0
  %s: float32[4,8] = math.sigmoid(%x) @s
  %a: float32[4,8] = math.mul(%x, %s) @a
  %n: float32[4,8] = math.neg(%z) @n
  %e: float32[4,8] = math.exp(%n) @e
  %d: float32[4,8] = math.add(%one, %e) @d
  %b: float32[4,8] = math.div(%z, %d) @b
  return %a, %b
}""")
    assert fired(run_recognize(graph)) == {"silu": 1, "silu_exp": 1}
    assert body(graph) == ["math.silu(x)", "math.silu(z)"]


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
    graph = parse(relu6_text(relu6, text))
    assert fired(run_recognize(graph)) == {rule: 1}
    assert body(graph) == ["math.hard_swish(x)"]


def test_hard_sigmoid_and_x_times_hard_sigmoid() -> None:
    graph = parse(relu6_text("two_clips", "%y: float32[4,8] = math.div(%r6, %six) @y"))
    assert fired(run_recognize(graph)) == {"hard_sigmoid": 1}
    assert body(graph) == ["math.hard_sigmoid(x) {alpha=0.166667}"]
    # x * (relu6(x + 3) * 1/6): the hard sigmoid first, then x times it
    graph = parse(relu6_text("clip", "%h: float32[4,8] = math.mul(%r6, %sixth) @h\n  %y: float32[4,8] = math.mul(%x, %h) @y"))
    assert fired(run_recognize(graph)) == {"hard_sigmoid_mul": 1, "hard_swish_mul": 1}
    assert body(graph) == ["math.hard_swish(x)"]
    # torch.onnx at opset 13 exports nn.Hardswish as x * HardSigmoid(x, alpha=1/6)
    graph = parse("""
graph g(%x: float32[4,8]) {
  %h: float32[4,8] = math.hard_sigmoid(%x) {alpha=0.1666666716337204} @h
  %y: float32[4,8] = math.mul(%x, %h) @y
  return %y
}""")
    assert fired(run_recognize(graph)) == {"hard_swish_mul": 1}
    assert body(graph) == ["math.hard_swish(x)"]


def test_hard_swish_refuses_another_shift() -> None:
    shifted_by_two = relu6_text("clip", HARD_SWISH_TAILS["div"][0]).replace("%three: float32[] = 3.0", "%three: float32[] = 2.0")
    reasons = refusals(shifted_by_two)
    assert reasons["hard_swish"] == {"not a constant 3": 1}


# ---- softmax ------------------------------------------------------------------------------------------

def test_softmax_with_and_without_the_max() -> None:
    graph = parse("""
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
}""")
    assert fired(run_recognize(graph)) == {"softmax": 2}
    assert body(graph) == ["nn.softmax(x)", "nn.softmax(z) {axis=-3}"]


def test_softmax_refusals_say_why() -> None:
    reasons = refusals("""
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
}""")
    assert reasons["softmax"] == {"the max reduces axes (1,), the sum (2,)": 1, "the sum reduces axes (1, 2), not one axis": 1}


# ---- attention ------------------------------------------------------------------------------------------

def test_attention_as_onnx_exports_vit() -> None:
    # scale on q, k transposed on its last two axes, softmax over axis 3
    graph = parse("""
graph g(%q: float32[1,2,5,8], %k: float32[1,2,5,8], %v: float32[1,2,5,8]) {
  param %scale: float32[] = 0.3535533845424652
  %qs: float32[1,2,5,8] = math.mul(%q, %scale) @qs
  %kt: float32[1,2,8,5] = tensor.transpose(%k) {perm=(0, 1, 3, 2)} @kt
  %s: float32[1,2,5,5] = linalg.matmul(%qs, %kt) @s
  %p: float32[1,2,5,5] = nn.softmax(%s) {axis=3} @p
  %y: float32[1,2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""")
    assert fired(run_recognize(graph)) == {"attention": 1}
    assert body(graph) == ["nn.attention(q, k, v) {scale=0.353553}"]


def test_attention_over_a_decomposed_softmax() -> None:
    graph = parse("""
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
}""")
    assert fired(run_recognize(graph)) == {"softmax": 1, "attention": 1}
    assert body(graph) == ["nn.attention(q, k, v) {scale=0.353553}"]


def test_attention_as_torch_captures_batched_matmuls() -> None:
    # torch's bmm: q, k^T, v and the weights viewed as (B*H, S, D) around the matmuls
    graph = parse("""
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
}""")
    explain = run_recognize(graph)
    assert fired(explain) == {"attention_viewed": 1}
    assert explain["attention"]["refused"] == {"the left operand is not a softmax": 1,  # q @ k^T
                                               "a reshape views the product; attention_viewed rewrites it there": 1}
    assert body(graph) == ["nn.attention(q, k, v, mask) {scale=0.353553}"]


def test_attention_with_a_key_permuted_from_sequence_major_and_the_scale_split_over_q_and_k() -> None:
    # the ONNX exports of GPT-2 and BERT: k^T = transpose(k (B,S,H,D), perm=(0,2,3,1)); the dynamo
    # exporter multiplies q and k^T by sqrt(scale) each
    graph = parse("""
graph g(%q: float32[1,2,5,8], %kh: float32[1,5,2,8], %v: float32[1,2,5,8]) {
  param %root_scale: float32[1] = [0.5946035385131836]
  %kt: float32[1,2,8,5] = tensor.transpose(%kh) {perm=(0, 2, 3, 1)} @kt
  %qs: float32[1,2,5,8] = math.mul(%q, %root_scale) @qs
  %kts: float32[1,2,8,5] = math.mul(%kt, %root_scale) @kts
  %s: float32[1,2,5,5] = linalg.matmul(%qs, %kts) @s
  %p: float32[1,2,5,5] = nn.softmax(%s) @p
  %y: float32[1,2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""")
    run_recognize(graph)
    assert body(graph) == ["tensor.transpose(kh) {perm=(0, 2, 1, 3)}", "nn.attention(q, %0, v) {scale=0.353553}"]


CAUSAL_ADDITIVE = np.where(np.tril(np.ones((5, 5), bool)), 0.0, np.finfo(np.float32).min).astype("float32")


def test_a_constant_lower_triangular_mask_becomes_causal() -> None:
    # an additive causal constant, and (old GPT-2) where(tril, scores / sqrt(d), finfo.min)
    graph = parse("""
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
}""", params={"causal": CAUSAL_ADDITIVE[None], "tril": np.tril(np.ones((5, 5), bool))[None, None]})
    assert fired(run_recognize(graph)) == {"attention": 2}
    assert body(graph) == ["nn.attention(q, k, v) {causal=True, scale=1}",
                           "tensor.reshape(q) {shape=(1, 2, 5, 8)}", "tensor.reshape(k) {shape=(1, 2, 5, 8)}",
                           "tensor.reshape(v) {shape=(1, 2, 5, 8)}", "nn.attention(%1, %2, %3) {causal=True, scale=0.353553}"]


def test_a_constant_mask_that_is_not_causal_stays_a_mask() -> None:
    upper = np.where(np.triu(np.ones((5, 5), bool)), 0.0, -np.inf).astype("float32")  # keeps the upper triangle
    graph = parse("""
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8]) {
  param %upper: float32[5,5]
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %m: float32[2,5,5] = math.add(%s, %upper) @m
  %p: float32[2,5,5] = nn.softmax(%m) @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""", params={"upper": upper})
    run_recognize(graph)
    assert body(graph) == ["nn.attention(q, k, v, $5,5) {scale=1}"]


def test_a_mask_added_before_the_scale_is_scaled_with_it() -> None:
    graph = parse("""
graph g(%q: float32[2,5,8], %k: float32[2,5,8], %v: float32[2,5,8], %bias: float32[2,5,5]) {
  param %scale: float32[] = 0.125
  %kt: float32[2,8,5] = tensor.transpose(%k) {perm=(0, 2, 1)} @kt
  %s: float32[2,5,5] = linalg.matmul(%q, %kt) @s
  %m: float32[2,5,5] = math.add(%bias, %s) @m
  %scaled: float32[2,5,5] = math.mul(%m, %scale) @scaled
  %p: float32[2,5,5] = nn.softmax(%scaled) @p
  %y: float32[2,5,8] = linalg.matmul(%p, %v) @y
  return %y
}""")
    run_recognize(graph)
    assert body(graph) == ["math.mul(bias, $)", "nn.attention(q, k, v, %0) {scale=0.125}"]


# the text form prints an inf param but cannot parse it back: give it as an array
MINUS_INF = {"minus_inf": np.array(-np.inf, "float32")}


def fully_masked_feeds(graph: Graph) -> dict[str, np.ndarray]:
    feeds = feeds_for(graph, seed=3)
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
    run_recognize(graph, feeds)
    assert body(graph) == ["nn.attention(q, k, v, keep) {scale=0.353553}", "math.cast(keep) {dtype='int32'}",
                           "reduce.max(%1) {axes=(-1,)}", "math.cast(%2) {dtype='bool'}", "math.where(%3, %0, $)"]
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
    run_recognize(graph, feeds)
    assert body(graph)[0] == "nn.attention(q, k, v, keep) {scale=0.353553}"
    assert len(body(graph)) == 5  # and the row guard on keep
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
    run_recognize(graph, fully_masked_feeds(graph))
    assert body(graph) == ["math.where(keep, $, $)", "nn.attention(q, k, v, %0) {scale=1}"]


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


def test_attention_refusals_say_why() -> None:
    flags = {"flags": np.eye(5, dtype=bool)}
    plain = "%t: float32[2,5,5] = math.add(%s, %zero) @t"
    # every matmul is a candidate: the q @ k^T one is refused for not following a softmax
    not_softmax = {"the left operand is not a softmax": 1}
    # a softmax over the queries is no attention
    assert refusals(attention_text(plain, axis=1), flags)["attention"] == {
        **not_softmax, "the softmax is not over the last axis": 1}
    # the scores are also a result
    assert refusals(attention_text(plain).replace("return %y", "return %y, %s"), flags)["attention"] == {
        **not_softmax, "a value between q @ k^T and the softmax is also read elsewhere": 1}
    # where(flags, scores, 0) writes a value, not a mask
    written = attention_text("%t: float32[2,5,5] = math.where(%flags, %s, %zero) @t")
    assert refusals(written, flags)["attention"] == {**not_softmax, "a where writes 0 into the scores, which is not a mask": 1}
    # one key head for two query heads: the matmul broadcasts, nn.attention does not
    assert refusals(attention_text(plain, key_batch=1), flags)["attention"] == {
        **not_softmax, "q @ k^T broadcasts its batch dims": 1}


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


BLOCKS: dict[str, Callable[[Any, Value, np.random.Generator], Value]] = {}


def block(function: Callable[[Any, Value, np.random.Generator], Value]) -> Callable[[Any, Value, np.random.Generator], Value]:
    BLOCKS[function.__name__] = function
    return function


def const(graph: Graph, number: float) -> Value:
    return graph.add_param("c", np.array(number, "float32"))


@block
def gelu_erf(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    inner = graph.op("math.erf", graph.op("math.div", x, const(graph, math.sqrt(2))))
    return graph.op("math.mul", graph.op("math.mul", x, const(graph, 0.5)), graph.op("math.add", inner, const(graph, 1.0)))


@block
def gelu_tanh(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    cubic = graph.op("math.mul", graph.op("math.pow", x, const(graph, 3.0)), const(graph, 0.044715))
    inner = graph.op("math.tanh", graph.op("math.mul", graph.op("math.add", x, cubic), const(graph, math.sqrt(2 / math.pi))))
    return graph.op("math.mul", graph.op("math.mul", x, const(graph, 0.5)), graph.op("math.add", inner, const(graph, 1.0)))


@block
def silu(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    return graph.op("math.mul", graph.op("math.sigmoid", x), x)


@block
def layer_norm(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    axes = (x.type.rank - 1,)
    centered = graph.op("math.sub", x, graph.op("reduce.mean", x, axes=axes))
    variance = graph.op("reduce.mean", graph.op("math.mul", centered, centered), axes=axes)
    inverse = graph.op("math.rsqrt", graph.op("math.add", variance, const(graph, 1e-5)))
    gamma = graph.add_param("gamma", rng.uniform(0.5, 1.5, x.shape[-1:]).astype("float32"))
    return graph.op("math.mul", graph.op("math.mul", centered, inverse), gamma)


@block
def softmax(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    axes = (int(rng.integers(x.type.rank)),)
    exp = graph.op("math.exp", graph.op("math.sub", x, graph.op("reduce.max", x, axes=axes)))
    return graph.op("math.div", exp, graph.op("reduce.sum", exp, axes=axes))


@block
def hard_swish(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    clipped = graph.op("math.clip", graph.op("math.add", x, const(graph, 3.0)), min=0.0, max=6.0)
    return graph.op("math.div", graph.op("math.mul", x, clipped), const(graph, 6.0))


@block
def relu(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    return graph.op("math.relu", x)


@pytest.mark.parametrize("seed", range(12))
def test_random_chains_of_decomposed_blocks(seed: int) -> None:
    """Property: any chain of decomposed forms is recognized, verifies, computes the same, settles."""
    rng = np.random.default_rng(seed)
    graph = Graph(f"chain{seed}")
    shape = tuple(int(dim) for dim in rng.integers(2, 6, size=int(rng.integers(2, 4))))
    x = graph.add_input("x", TensorType(shape, "float32"))
    names = [str(name) for name in rng.choice(sorted(BLOCKS), size=int(rng.integers(2, 6)))]
    value = x
    for name in names:
        value = BLOCKS[name](graph, value, rng)
        if rng.random() < 0.3:  # a block's result also read as a graph output
            graph.outputs.append(value)
    graph.outputs = list(dict.fromkeys(graph.outputs + [value]))
    verify(graph)
    run_recognize(graph, feeds_for(graph, seed))
    leftovers = {"math.erf", "math.tanh", "math.sigmoid", "reduce.mean", "reduce.sum", "math.clip"} & set(graph.op_counts())
    assert not leftovers, f"{names} left {leftovers}"


# ---- the zoo ----------------------------------------------------------------------------------------------

ZOO = ("vit", "gpt2", "bert")
LAYERS = {"vit": 2, "gpt2": 2, "bert": 2}  # the tiny sizes


@pytest.fixture(scope="module")
def zoo_graphs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[Graph, dict[str, np.ndarray]]]:
    """(graph, feeds) per zoo model and source ("torch" capture, "onnx" export, "onnx13"), built once."""
    pytest.importorskip("transformers")
    from optc.frontends.onnx import load_onnx
    from optc.frontends.torch import capture
    from optc.tools import zoo

    built: dict[tuple[str, str], tuple[Graph, dict[str, np.ndarray]]] = {}

    def get(name: str, source: str) -> tuple[Graph, dict[str, np.ndarray]]:
        if (name, source) not in built:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
                if source == "torch":
                    model, inputs = zoo.build(name, size="tiny")
                    graph = capture(model, inputs, input_names=zoo.input_names(name), output_names=zoo.output_names(name))
                elif source == "onnx":
                    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
                    model, inputs = zoo.export_onnx(name, path, size="tiny")
                    graph = load_onnx(path)
                else:  # opset 13 has no LayerNormalization: the exporter writes layer norms out
                    import torch

                    path = tmp_path_factory.mktemp(name) / f"{name}13.onnx"
                    model, inputs = zoo.build(name, size="tiny")
                    with torch.no_grad():
                        torch.onnx.export(model, inputs, str(path), input_names=zoo.input_names(name),
                                          output_names=zoo.output_names(name), opset_version=13, dynamo=False)
                    graph = load_onnx(path)
            built[(name, source)] = (graph, {key: tensor.numpy() for key, tensor in zip(zoo.input_names(name), inputs)})
        graph, feeds = built[(name, source)]
        return graph.clone(), feeds

    return get


@pytest.mark.parametrize("source", ["torch", "onnx", "onnx13"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_have_every_norm_gelu_and_attention_recognized(zoo_graphs: Any, name: str, source: str) -> None:
    graph, feeds = zoo_graphs(name, source)
    nodes_before = len(graph.nodes)
    run_recognize(graph, feeds)
    counts = graph.op_counts()
    layers = LAYERS[name]
    assert counts.get("nn.layer_norm") == 2 * layers + 1  # two per block and a final (BERT: the embeddings') one
    assert counts.get("nn.attention") == layers
    assert counts.get("math.gelu") == layers
    assert not {"math.erf", "math.tanh", "nn.softmax", "reduce.mean", "reduce.sum"} & set(counts)
    assert len(graph.nodes) < nodes_before


def test_a_recognized_vit_compiles_and_matches_the_interpreter(zoo_graphs: Any) -> None:
    backends = pytest.importorskip("optc.backends")
    graph, feeds = zoo_graphs("vit", "torch")
    recognize()(graph)
    assert graph.op_counts().get("nn.attention") == 2
    compiled = backends.compile_graph(graph)
    expected = interpret(graph, feeds)
    assert_same_outputs(expected, compiled.run(feeds))
