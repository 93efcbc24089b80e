"""The rewrite engine: matching, captures, refusals, fixed point, output names, explain stats."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import VerificationError
from optc.ir import interpret, parse, verify
from optc.passes import PassManager
from optc.passes.rewrite import Any, Const, Mismatch, Op, Param, Rule, RewritePass, RuleSet, apply_rules


def drop_multiply_by_one(ctx, m):
    if m["x"].type != m.root.output.type:
        return Mismatch("the constant broadcasts x to a bigger shape")
    return m["x"]


MUL_BY_ONE = Rule("mul_by_one", Op("math.mul", Any("x"), Const("one", 1.0)), drop_multiply_by_one)


def test_rule_fires_in_either_input_order_and_keeps_output_names():
    graph = parse("""
graph g(%x: float32[2,3]) {
  param %one: float32[] = 1.0
  %a: float32[2,3] = math.mul(%one, %x) @a
  %b: float32[2,3] = math.relu(%a) @b
  %y: float32[2,3] = math.mul(%b, %one) @y
  return %y
}""")
    stats = {}
    assert apply_rules(graph, [MUL_BY_ONE], stats, verify_each=True) == 2
    verify(graph)
    assert [node.op for node in graph.nodes] == ["math.relu"]
    assert graph.outputs[0].name == "y"  # the graph output keeps its name
    assert stats["mul_by_one"].fired == 2
    assert not graph.params  # the unused constant is gone


def test_rule_refusal_is_recorded_with_its_reason():
    graph = parse("""
graph g(%x: float32[3]) {
  param %ones: float32[2,3]
  %y: float32[2,3] = math.mul(%x, %ones) @y
  return %y
}""", params={"ones": np.ones((2, 3), "float32")})
    rewrite = RewritePass("cleanup_test", [MUL_BY_ONE])
    assert not rewrite(graph)
    assert rewrite.explain()["mul_by_one"]["refused"] == {"the constant broadcasts x to a bigger shape": 1}


def test_repeated_capture_must_be_the_same_value():
    silu = Rule("silu", Op("math.mul", Any("x"), Op("math.sigmoid", Any("x"), name="sig")),
                lambda ctx, m: ctx.op("math.silu", m["x"]))
    graph = parse("""
graph g(%x: float32[4], %z: float32[4]) {
  %s: float32[4] = math.sigmoid(%x) @s
  %y: float32[4] = math.mul(%s, %x) @y
  %t: float32[4] = math.sigmoid(%z) @t
  %w: float32[4] = math.mul(%x, %t) @w
  return %y, %w
}""")
    feeds = {"x": np.linspace(-2, 2, 4, dtype="float32"), "z": np.ones(4, "float32")}
    before = interpret(graph, feeds)
    stats = {}
    assert apply_rules(graph, [silu], stats, verify_each=True) == 1
    assert [node.op for node in graph.nodes] == ["math.silu", "math.sigmoid", "math.mul"]
    after = interpret(graph, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-6)
    assert "'x' would be two different values" in stats["silu"].refused


def test_intermediates_with_outside_users_are_not_fused():
    silu = Rule("silu", Op("math.mul", Any("x"), Op("math.sigmoid", Any("x"), name="sig")),
                lambda ctx, m: ctx.op("math.silu", m["x"]))
    graph = parse("""
graph g(%x: float32[4]) {
  %s: float32[4] = math.sigmoid(%x) @s
  %y: float32[4] = math.mul(%x, %s) @y
  return %y, %s
}""")
    stats = {}
    assert apply_rules(graph, [silu], stats) == 0
    assert any("users outside the pattern" in reason for reason in stats["silu"].refused)


def test_param_predicates_and_attribute_predicates():
    rule = Rule(
        "softmax_last",
        Op("nn.softmax", Op("math.add", Any("x"), Param("bias", lambda a: a.ndim == 1), name="add"),
           attrs={"axis": lambda axis: axis >= 0}),
        lambda ctx, m: ctx.op("nn.softmax", ctx.op("math.add", m["x"], m["bias"]), axis=-1),
    )
    graph = parse("""
graph g(%x: float32[2,3]) {
  param %b: float32[3] = [0.0, 1.0, 2.0]
  %a: float32[2,3] = math.add(%x, %b) @a
  %y: float32[2,3] = nn.softmax(%a) {axis=1} @y
  return %y
}""")
    stats = {}
    assert apply_rules(graph, [rule], stats, verify_each=True) == 1
    assert graph.nodes[-1].attrs["axis"] == -1
    assert stats["softmax_last"].fired == 1  # the replacement was visited again and did not match


def test_a_rule_that_never_settles_is_stopped():
    looping = RuleSet([Rule("relu_again", Op("math.relu", Any("x")), lambda ctx, m: ctx.op("math.relu", m["x"]))])
    graph = parse("graph g(%x: float32[2]) {\n  %y: float32[2] = math.relu(%x) @y\n  return %y\n}")
    with pytest.raises(VerificationError, match="fixed point after 5 rewrites"):
        apply_rules(graph, looping, max_rewrites=5)


def test_replacement_of_another_type_is_an_error():
    bad = Rule("bad", Op("math.relu", Any("x")), lambda ctx, m: ctx.op("tensor.reshape", m["x"], shape=(6,)))
    graph = parse("graph g(%x: float32[2,3]) {\n  %y: float32[2,3] = math.relu(%x) @y\n  return %y\n}")
    with pytest.raises(VerificationError, match="replaced %y: float32\\[2,3\\] with"):
        apply_rules(graph, [bad])


def test_output_that_would_become_an_input_is_refused():
    graph = parse("""
graph g(%x: float32[3]) {
  param %one: float32[] = 1.0
  %y: float32[3] = math.mul(%x, %one) @y
  return %y
}""")
    stats = {}
    assert apply_rules(graph, [MUL_BY_ONE], stats) == 0
    assert graph.outputs[0].name == "y"
    assert any("graph input" in reason for reason in stats["mul_by_one"].refused)


def test_pass_manager_report_explains_rules():
    graph = parse("""
graph g(%x: float32[3]) {
  param %one: float32[] = 1.0
  %r: float32[3] = math.relu(%x) @r
  %y: float32[3] = math.mul(%r, %one) @y
  return %y
}""")
    report = PassManager([RewritePass("identities", [MUL_BY_ONE])]).run(graph)
    assert report.rows[0].rules == {"mul_by_one": {"fired": 1, "refused": {}}}
    assert "mul_by_one                       fired 1" in report.explain()


def test_two_outputs_are_never_merged_into_one_value():
    graph = parse("""
graph g(%x: float32[3]) {
  param %one: float32[] = 1.0
  %r: float32[3] = math.relu(%x) @r
  %y: float32[3] = math.mul(%r, %one) @y
  return %r, %y
}""")
    stats = {}
    assert apply_rules(graph, [MUL_BY_ONE], stats) == 0
    assert [value.name for value in graph.outputs] == ["r", "y"]
    assert any("two graph outputs" in reason for reason in stats["mul_by_one"].refused)


def test_a_refusing_rule_leaves_no_constants_behind():
    def refuse_after_building(ctx, m):
        ctx.const(np.zeros(3, "float32"), name="scratch")
        ctx.op("math.add", m["x"], ctx.const(np.ones(3, "float32")))
        return Mismatch("changed my mind")

    graph = parse("graph g(%x: float32[3]) {\n  %y: float32[3] = math.relu(%x) @y\n  return %y\n}")
    before = str(graph)
    stats = {}
    assert apply_rules(graph, [Rule("undecided", Op("math.relu", Any("x")), refuse_after_building)], stats) == 0
    assert str(graph) == before
    assert stats["undecided"].refused == {"changed my mind": 1}
