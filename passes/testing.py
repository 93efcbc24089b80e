"""Testing utilities for people who write rewrite rules and graph passes (like ``torch.testing``).

``check_rewrite`` runs a pass on a graph given in text form (or built in code) and checks what
every pass promises: the graph still verifies, the pass says whether it changed something (and
really changed nothing when it says so), the result matches a golden, it computes what the
original computed on seeded inputs, and a second run finds nothing left to do::

    from optc.passes.cleanup import RemoveIdentities
    from optc.passes.testing import assert_refused, check_rewrite

    def test_mul_by_one_goes_away():
        identities = RemoveIdentities()
        check_rewrite(identities, '''
            graph g(%x: float32[2,3]) {
              param %one: float32[] = 1.0
              %a: float32[2,3] = math.mul(%x, %one) @a
              %y: float32[2,3] = math.relu(%a) @y
              return %y
            }''', '''
            graph g(%x: float32[2,3]) {
              %y: float32[2,3] = math.relu(%x) @y
              return %y
            }''', fired={"mul_by_one": 1})

    def test_mul_by_two_stays():
        identities = RemoveIdentities()
        check_rewrite(identities, '''
            graph g(%x: float32[3]) {
              param %two: float32[] = 2.0
              %y: float32[3] = math.mul(%x, %two) @y
              return %y
            }''', changes=False)
        assert_refused(identities, "mul_by_one", "not a constant 1")

Goldens come in three forms (``compare=``):

- ``"text"``: the exact text form (``print(graph)``), indentation of the golden removed;
- ``"ops"``: one line per node, ``op(inputs) {attrs}`` with graph inputs by name, params as
  ``$shape`` and node results as ``%index`` (see ``op_lines``); float attributes to 6 digits;
- ``"skeleton"``: the text form without names (see ``skeleton``), for rewrites whose generated
  value and node names are beside the point.

Everything raises ``AssertionError`` with the pass, the graph before and after and a diff, so
it reads well from pytest. A rewrite pass built with ``verify_each=True`` also verifies the
graph after every single rewrite, which names the rule that broke it.
"""

from __future__ import annotations

import copy
import difflib
import textwrap
from collections.abc import Mapping, Sequence, Set
from typing import Any, Literal

import numpy as np

from ..errors import OptcError
from ..ir.graph import Graph
from ..ir.interpret import interpret, sample_inputs
from ..ir.ops import registry
from ..ir.text import parse
from ..ir.verify import verify
from .pipeline import Pass, pass_name

Compare = Literal["text", "ops", "skeleton"]

RTOL, ATOL = 1e-5, 1e-6
SHOWN_LINES = 80  # longer graphs are shortened in messages

__all__ = [
    "assert_golden",
    "assert_refused",
    "assert_same_outputs",
    "batch_norm_params",
    "check_rewrite",
    "fired_rules",
    "op_lines",
    "random_params",
    "refusal_reasons",
    "skeleton",
]


# ---- the forms goldens compare ----------------------------------------------------------------------------

def skeleton(graph: Graph) -> str:
    """The text form with params (%p0, ...) and node outputs (%v0, ...) numbered in order of use.

    Params are listed as they are first read, node names are left out and attributes equal to
    the op's default are hidden, so a golden does not depend on the names a rewrite generates::

        param %p0: float32[4,3,3,3]
        param %p1: float32[4]
        %v0: float32[2,4,8,8] = nn.conv(%x, %p0, %p1) {pads=(1, 1, 1, 1)}
        return %v0
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


def op_lines(graph: Graph) -> list[str]:
    """The nodes as ``op(inputs) {attrs}``: graph inputs by name, params as ``$shape``, results as ``%n``.

    ``%n`` is the result of the n-th node (``%n.i`` its i-th of several); float attributes are
    shown to 6 significant digits, others as ``repr``; defaults are left out::

        ["nn.layer_norm(x, $8, $8) {epsilon=1e-05}", "math.gelu(%0)"]
    """
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


def _form(graph: Graph, expected: str | Sequence[str], compare: Compare | None) -> tuple[list[str], list[str], str]:
    """(actual lines, expected lines, form name) for a golden comparison."""
    if compare is None:
        compare = "text" if isinstance(expected, str) else "ops"
    if compare == "text":
        if not isinstance(expected, str):
            raise TypeError("a text golden is one string")
        return str(graph).splitlines(), textwrap.dedent(expected).strip().splitlines(), compare
    if compare == "skeleton":
        if not isinstance(expected, str):
            raise TypeError("a skeleton golden is one string")
        return skeleton(graph).splitlines(), _stripped_lines(expected), compare
    if compare == "ops":
        return op_lines(graph), _stripped_lines(expected) if isinstance(expected, str) else list(expected), compare
    raise ValueError(f"compare must be 'text', 'ops' or 'skeleton', not {compare!r}")


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def assert_golden(graph: Graph, expected: str | Sequence[str], compare: Compare | None = None) -> None:
    """Assert ``graph`` matches a golden in one of three forms (the module docstring lists them).

    ``compare`` defaults to ``"ops"`` when ``expected`` is a list of lines, ``"text"`` otherwise.
    """
    actual, wanted, form = _form(graph, expected, compare)
    if actual != wanted:
        diff = "\n".join(difflib.unified_diff(wanted, actual, "expected", "actual", lineterm=""))
        raise AssertionError(f"the graph does not match the golden ({form} form):\n{diff}")


# ---- outputs -------------------------------------------------------------------------------------------------

def assert_same_outputs(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *,
                        rtol: float = RTOL, atol: float = ATOL) -> None:
    """Assert two sets of named outputs agree: the same names in the same order, the same dtype and
    shape per output, and values within ``rtol``/``atol`` (NaN equals NaN)."""
    if list(actual) != list(expected):
        raise AssertionError(f"output names changed: expected {list(expected)}, got {list(actual)}")
    for name, reference in expected.items():
        reference, got = np.asarray(reference), np.asarray(actual[name])
        if got.dtype != reference.dtype or got.shape != reference.shape:
            raise AssertionError(f"output '{name}' is {got.dtype.name}{list(got.shape)}, "
                                 f"expected {reference.dtype.name}{list(reference.shape)}")
        np.testing.assert_allclose(got, reference, rtol=rtol, atol=atol, err_msg=f"output '{name}'")


# ---- seeded params for graphs in text form ----------------------------------------------------------------------

def random_params(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """float32 params drawn from N(0, 1), by name: ``random_params(0, w=(4, 3, 3, 3), b=(4,))``."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def batch_norm_params(channels: int, seed: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Plausible inference batch-norm params (``gamma``, ``beta``, ``mean``, ``var``, names after
    ``prefix``): scales near 1 and a variance bounded away from zero, so folds stay well conditioned."""
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        f"{prefix}beta": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}mean": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}var": rng.uniform(0.3, 2.0, channels).astype(np.float32),
    }


# ---- rule statistics -----------------------------------------------------------------------------------------

def _explain(pass_: Pass) -> dict[str, dict[str, Any]]:
    explain = getattr(pass_, "explain", None)
    if explain is None:
        raise TypeError(f"{pass_name(pass_)} keeps no per-rule statistics (it has no explain())")
    return explain()


def fired_rules(pass_: Pass) -> dict[str, int]:
    """How often each rule fired in the pass's last run, for the rules that fired at all."""
    return {rule: stat["fired"] for rule, stat in _explain(pass_).items() if stat["fired"]}


def refusal_reasons(pass_: Pass, rule: str) -> dict[str, int]:
    """Why ``rule`` refused candidates in the pass's last run: reason -> how many times."""
    explain = _explain(pass_)
    if rule not in explain:
        raise AssertionError(f"{pass_name(pass_)} has no rule '{rule}'; its rules: {sorted(explain)}")
    return dict(explain[rule]["refused"])


def assert_refused(pass_: Pass, rule: str, *reasons: str, fired: int | None = None) -> None:
    """Assert that in the pass's last run ``rule`` refused for each of ``reasons`` (each one a
    substring of some recorded reason) and, when ``fired`` is given, fired that many times."""
    recorded = refusal_reasons(pass_, rule)
    missing = [reason for reason in reasons if not any(reason in shown for shown in recorded)]
    if missing:
        raise AssertionError(f"rule {rule} never refused for {missing}; its refusals: {recorded or 'none'}")
    count = _explain(pass_)[rule]["fired"]
    if fired is not None and count != fired:
        raise AssertionError(f"rule {rule} fired {count} times, expected {fired}")


def _refusal_summary(pass_: Pass) -> str:
    try:
        explain = _explain(pass_)
    except TypeError:
        return ""
    refused = {rule: stat["refused"] for rule, stat in explain.items() if stat["refused"]}
    if not refused:
        return "\nno rule refused a candidate (did any rule's root op occur?)"
    return "\nrefusals:" + "".join(f"\n  {rule}: {reasons}" for rule, reasons in sorted(refused.items()))


def _fired_summary(pass_: Pass) -> str:
    try:
        return f"\nrules that fired: {fired_rules(pass_)}"
    except TypeError:
        return ""


# ---- check_rewrite -------------------------------------------------------------------------------------------

def _shown(text: str) -> str:
    lines = text.splitlines()
    if len(lines) > SHOWN_LINES:
        half = SHOWN_LINES // 2
        lines = lines[:half] + [f"  ... {len(lines) - SHOWN_LINES} lines left out ..."] + lines[-half:]
    return textwrap.indent("\n".join(lines), "    ")


def _diff(before: str, after: str) -> str:
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm=""))


def _verify(graph: Graph, when: str, context: str) -> None:
    try:
        verify(graph)
    except OptcError as error:
        raise AssertionError(f"{when} does not verify: {error}{context}") from error


def _fresh(pass_: Pass) -> Pass:
    """A copy of the pass as it is before its first run, for the idempotence run (so the caller's
    instance keeps the statistics of the first run); the pass itself when it cannot be copied."""
    try:
        return copy.deepcopy(pass_)
    except Exception:  # noqa: BLE001 - a pass holding something uncopyable is run twice instead
        return pass_


def check_rewrite(
    pass_: Pass,
    before: str | Graph,
    after: str | Sequence[str] | None = None,
    *,
    compare: Compare | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    changes: bool | None = True,
    fired: Mapping[str, int] | Set[str] | None = None,
    check_outputs: bool = True,
) -> Graph:
    """Run ``pass_`` on ``before`` and check everything a pass promises; returns the rewritten graph.

    ``before`` is a graph in text form (parsed with ``params`` for the params whose values it
    does not print) or a ``Graph``, which is rewritten in place. In order, it checks that:

    - the graph verifies before the pass and after it;
    - the pass reports a change (``changes=True``), reports none (``False``) or either (``None``);
      and when it reports none, the text form is unchanged;
    - the result matches ``after`` when given: exact text, op lines or skeleton, see
      ``assert_golden`` (``compare`` defaults to "ops" for a list of lines, "text" otherwise);
    - ``fired`` rules fired: a mapping is compared with ``fired_rules(pass_)`` exactly, a set
      with the names of the rules that fired;
    - unless ``check_outputs=False`` (a graph the interpreter cannot run), the result computes what
      the original did on ``feeds`` (default: ``sample_inputs(graph, seed)``), compared with
      ``assert_same_outputs(rtol=, atol=)``;
    - a second run, on a fresh copy of the pass, returns False and changes nothing (idempotence).

    ``pass_`` itself keeps the statistics of the first run, for ``fired_rules``,
    ``refusal_reasons`` and ``assert_refused`` afterwards.
    """
    if isinstance(before, str):
        graph = parse(before, params=params)
    else:
        if params is not None:
            raise TypeError("params only apply to a graph given in text form")
        graph = before
    name = pass_name(pass_)
    _verify(graph, f"the graph before {name}", "")
    before_text = str(graph)
    second = _fresh(pass_)
    fed = "the given inputs" if feeds is not None else f"the inputs of seed {seed}"
    if check_outputs:
        feeds = dict(feeds) if feeds is not None else sample_inputs(graph, seed)
        expected = interpret(graph, feeds)

    changed = bool(pass_(graph))
    after_text = str(graph)
    context = f"\nbefore:\n{_shown(before_text)}\nafter:\n{_shown(after_text)}"
    _verify(graph, f"the graph after {name}", context)
    if not changed and after_text != before_text:
        raise AssertionError(f"{name} reported no change but changed the graph:\n{_diff(before_text, after_text)}")
    if changes is True and not changed:
        raise AssertionError(f"{name} should have changed the graph but reported no change{_refusal_summary(pass_)}"
                             f"\ngraph:\n{_shown(before_text)}")
    if changes is False and changed:
        raise AssertionError(f"{name} should have left the graph alone but changed it{_fired_summary(pass_)}"
                             f"\n{_diff(before_text, after_text)}")
    if after is not None:
        try:
            assert_golden(graph, after, compare)
        except AssertionError as error:
            raise AssertionError(f"after {name}, {error}{_fired_summary(pass_)}\nbefore:\n{_shown(before_text)}") from None
    if fired is not None:
        actual = fired_rules(pass_)
        if isinstance(fired, Set):
            if set(actual) != set(fired):
                raise AssertionError(f"{name}: rules that fired {sorted(actual)}, expected {sorted(fired)}"
                                     f"{_refusal_summary(pass_)}")
        elif actual != dict(fired):
            raise AssertionError(f"{name}: rules fired {actual}, expected {dict(fired)}{_refusal_summary(pass_)}")
    if check_outputs:
        try:
            assert_same_outputs(expected, interpret(graph, feeds), rtol=rtol, atol=atol)
        except AssertionError as error:
            raise AssertionError(f"after {name} the graph computes something else on {fed}: {error}{context}") from None

    again = bool(second(graph))
    again_text = str(graph)
    _verify(graph, f"the graph after a second run of {name}", context)
    if again or again_text != after_text:
        raise AssertionError(f"{name} is not idempotent: a second run "
                             f"{'reported a change' if again else 'changed the graph without reporting it'}"
                             f"{_fired_summary(second)}\n{_diff(after_text, again_text)}{context}")
    return graph
