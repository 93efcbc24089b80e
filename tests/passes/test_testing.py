"""optc.passes.testing itself: its example works, and check_rewrite catches what it promises to."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from optc.ir import Graph, parse
from optc.passes import testing
from optc.passes.cleanup import RemoveIdentities
from optc.passes.rewrite import Any, Const, Op, Rule, RewritePass
from optc.passes.testing import (
    assert_golden,
    assert_refused,
    assert_same_outputs,
    check_rewrite,
    fired_rules,
    op_lines,
    refusal_reasons,
    skeleton,
)

BEFORE = """
    graph g(%x: float32[2,3]) {
      param %one: float32[] = 1.0
      %a: float32[2,3] = math.mul(%x, %one) @a
      %y: float32[2,3] = math.relu(%a) @y
      return %y
    }"""
AFTER = """
    graph g(%x: float32[2,3]) {
      %y: float32[2,3] = math.relu(%x) @y
      return %y
    }"""


def test_the_docstring_example_runs():
    example = testing.__doc__.split("::\n", 1)[1].split("\nGoldens come", 1)[0]
    namespace: dict = {}
    exec(textwrap.dedent(example), namespace)  # noqa: S102 - our own docstring
    namespace["test_mul_by_one_goes_away"]()
    namespace["test_mul_by_two_stays"]()


def test_a_passing_check_returns_the_graph_and_keeps_the_first_runs_statistics():
    identities = RemoveIdentities()
    graph = check_rewrite(identities, BEFORE, AFTER, fired={"mul_by_one"})
    assert [node.op for node in graph.nodes] == ["math.relu"]
    assert fired_rules(identities) == {"mul_by_one": 1}  # the second run used a copy
    assert op_lines(graph) == ["math.relu(x)"]
    assert skeleton(graph) == "%v0: float32[2,3] = math.relu(%x)\nreturn %v0"
    check_rewrite(RemoveIdentities(), BEFORE, ["math.relu(x)"])
    check_rewrite(RemoveIdentities(), BEFORE, """
        %v0: float32[2,3] = math.relu(%x)
        return %v0""", compare="skeleton")


@pytest.mark.parametrize("golden, compare", [
    (AFTER.replace("math.relu", "math.tanh"), "text"),
    (["math.tanh(x)"], None),
    ("%v0: float32[2,3] = math.tanh(%x)\nreturn %v0", "skeleton"),
])
def test_it_catches_a_wrong_golden(golden, compare):
    with pytest.raises(AssertionError, match=r"does not match the golden[\s\S]*-.*math.tanh[\s\S]*\+.*math.relu"):
        check_rewrite(RemoveIdentities(), BEFORE, golden, compare=compare)


def wrong_mul_by_two() -> RewritePass:
    """A buggy rule: x * 2 is not x."""
    return RewritePass("buggy", [Rule("mul_by_two", Op("math.mul", Any("x"), Const("two", 2.0)), lambda ctx, m: m["x"])])


def test_it_catches_a_numerical_change():
    text = BEFORE.replace("1.0", "2.0")
    with pytest.raises(AssertionError, match=r"after buggy the graph computes something else on the inputs of seed 3"):
        check_rewrite(wrong_mul_by_two(), text, AFTER, seed=3)
    with pytest.raises(AssertionError, match="output 'y'"):
        check_rewrite(wrong_mul_by_two(), text, AFTER, feeds={"x": np.ones((2, 3), "float32")})
    # without the outputs check the buggy rule gets through: it is the check that caught it
    check_rewrite(wrong_mul_by_two(), text, AFTER, check_outputs=False)


def swap_add_inputs(graph: Graph) -> bool:
    """Not idempotent: swaps the inputs of every add, every time (the results stay the same)."""
    adds = [node for node in graph.nodes if node.op == "math.add"]
    for node in adds:
        left, right = node.inputs
        graph.set_input(node, 0, right)
        graph.set_input(node, 1, left)
    return bool(adds)


def test_it_catches_a_pass_that_is_not_idempotent():
    text = """
        graph g(%x: float32[3], %z: float32[3]) {
          %a: float32[3] = math.add(%x, %z) @a
          %y: float32[3] = math.relu(%a) @y
          return %y
        }"""
    with pytest.raises(AssertionError, match=r"swap_add_inputs is not idempotent: a second run reported a change"):
        check_rewrite(swap_add_inputs, text)


def test_it_catches_a_wrong_claim_about_changes():
    with pytest.raises(AssertionError, match=r"should have changed the graph[\s\S]*not a constant 1"):
        check_rewrite(RemoveIdentities(), BEFORE.replace("1.0", "2.0"))
    with pytest.raises(AssertionError, match=r"should have left the graph alone[\s\S]*mul_by_one"):
        check_rewrite(RemoveIdentities(), BEFORE, changes=False)

    def silent(graph: Graph) -> bool:
        graph.nodes[0].name = "renamed"  # a change it does not report
        return False

    with pytest.raises(AssertionError, match="reported no change but changed the graph"):
        check_rewrite(silent, AFTER, changes=None)


def test_it_catches_unexpected_rules_and_a_graph_that_does_not_verify():
    with pytest.raises(AssertionError, match=r"rules fired \{'mul_by_one': 1\}, expected \{'mul_by_one': 2\}"):
        check_rewrite(RemoveIdentities(), BEFORE, fired={"mul_by_one": 2})

    def breaks_types(graph: Graph) -> bool:
        graph.outputs[0].type = graph.outputs[0].type.with_shape((3, 2))
        return True

    with pytest.raises(AssertionError, match="the graph after breaks_types does not verify"):
        check_rewrite(breaks_types, BEFORE)


def test_refusal_helpers():
    identities = RemoveIdentities()
    check_rewrite(identities, BEFORE.replace("1.0", "2.0"), changes=False)
    assert refusal_reasons(identities, "mul_by_one") == {"not a constant 1": 1}
    assert_refused(identities, "mul_by_one", "constant 1", fired=0)
    with pytest.raises(AssertionError, match="never refused for"):
        assert_refused(identities, "mul_by_one", "another reason")
    with pytest.raises(AssertionError, match="fired 0 times, expected 1"):
        assert_refused(identities, "mul_by_one", fired=1)
    with pytest.raises(AssertionError, match="has no rule 'mul_by_three'"):
        refusal_reasons(identities, "mul_by_three")


def test_assert_same_outputs_checks_names_dtypes_shapes_and_values():
    reference = {"y": np.zeros(3, "float32"), "z": np.ones(2, "int32")}
    assert_same_outputs(reference, {"y": np.full(3, 1e-7, "float32"), "z": np.ones(2, "int32")})
    with pytest.raises(AssertionError, match="output names changed"):
        assert_same_outputs(reference, {"z": reference["z"], "y": reference["y"]})
    with pytest.raises(AssertionError, match=r"output 'z' is int64\[2\], expected int32\[2\]"):
        assert_same_outputs(reference, {"y": reference["y"], "z": np.ones(2, "int64")})
    with pytest.raises(AssertionError, match="output 'y'"):
        assert_same_outputs(reference, {"y": np.full(3, 1e-3, "float32"), "z": reference["z"]})
    assert_same_outputs(reference, {"y": np.full(3, 1e-3, "float32"), "z": reference["z"]}, atol=1e-2)


def test_assert_golden_diff_names_the_form():
    graph = parse(AFTER)
    assert_golden(graph, AFTER)
    with pytest.raises(AssertionError, match=r"\(ops form\)"):
        assert_golden(graph, ["math.tanh(x)"])
