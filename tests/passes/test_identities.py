"""The identity rules of cleanup: each rule's golden before/after and numerics, and a table of
refusals, each with the reason the rule gives."""

from __future__ import annotations

import pytest

from optc.passes.cleanup import IDENTITY_RULES, RemoveIdentities
from optc.passes.testing import assert_refused, check_rewrite

# ---- identity rules: golden before/after and numerics -----------------------------------------------------

IDENTITY_CASES = {
    "mul_by_one": ("""
        graph g(%x: float32[2,3]) {
          param %one: float32[3] = [1.0, 1.0, 1.0]
          %a: float32[2,3] = math.mul(%one, %x) @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "div_by_one": ("""
        graph g(%x: int32[4]) {
          param %one: int32[] = 1
          %a: int32[4] = math.div(%x, %one) @a
          %y: int32[4] = math.neg(%a) @y
          return %y
        }""", """
        graph g(%x: int32[4]) {
          %y: int32[4] = math.neg(%x) @y
          return %y
        }"""),
    "add_zero": ("""
        graph g(%x: float32[2,3]) {
          param %zero: float32[1,3] = [[0.0, 0.0, 0.0]]
          %a: float32[2,3] = math.add(%x, %zero) @a
          %y: float32[2,3] = math.tanh(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.tanh(%x) @y
          return %y
        }"""),
    "sub_zero": ("""
        graph g(%x: float32[3]) {
          param %zero: float32[] = 0.0
          %a: float32[3] = math.sub(%x, %zero) @a
          %y: float32[3] = math.abs(%a) @y
          return %y
        }""", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.abs(%x) @y
          return %y
        }"""),
    "cast_to_same_dtype": ("""
        graph g(%x: float32[3]) {
          %a: float32[3] = math.cast(%x) {dtype='float32'} @a
          %y: float32[3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.relu(%x) @y
          return %y
        }"""),
    "cast_round_trip": ("""
        graph g(%x: int16[5]) {
          %a: float32[5] = math.cast(%x) {dtype='float32'} @a
          %b: int16[5] = math.cast(%a) {dtype='int16'} @b
          %y: int16[5] = math.neg(%b) @y
          return %y
        }""", """
        graph g(%x: int16[5]) {
          %y: int16[5] = math.neg(%x) @y
          return %y
        }"""),
    "reshape_to_same_shape": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.reshape(%x) {shape=(2, -1)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "reshape_of_reshape": ("""
        graph g(%x: float32[2,3,4]) {
          %a: float32[6,4] = tensor.reshape(%x) {shape=(6, 4)} @a
          %b: float32[2,12] = tensor.reshape(%a) {shape=(2, -1)} @b
          %y: float32[2,12] = math.relu(%b) @y
          return %y
        }""", """
        graph g(%x: float32[2,3,4]) {
          %b_0: float32[2,12] = tensor.reshape(%x) {shape=(2, 12)} @b_0
          %y: float32[2,12] = math.relu(%b_0) @y
          return %y
        }"""),
    "transpose_identity": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.transpose(%x) {perm=(0, 1)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "transpose_of_transpose": ("""
        graph g(%x: float32[2,3,4]) {
          %a: float32[3,2,4] = tensor.transpose(%x) {perm=(1, 0, 2)} @a
          %b: float32[3,4,2] = tensor.transpose(%a) {perm=(0, 2, 1)} @b
          %y: float32[3,4,2] = math.relu(%b) @y
          return %y
        }""", """
        graph g(%x: float32[2,3,4]) {
          %b_0: float32[3,4,2] = tensor.transpose(%x) {perm=(1, 2, 0)} @b_0
          %y: float32[3,4,2] = math.relu(%b_0) @y
          return %y
        }"""),
    "transpose_as_reshape": ("""
        graph g(%x: float32[2,1,3]) {
          %a: float32[1,2,3] = tensor.transpose(%x) {perm=(1, 0, 2)} @a
          %y: float32[1,2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,1,3]) {
          %a_0: float32[1,2,3] = tensor.reshape(%x) {shape=(1, 2, 3)} @a_0
          %y: float32[1,2,3] = math.relu(%a_0) @y
          return %y
        }"""),
    "expand_to_same_shape": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.expand(%x) {shape=(1, 3)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "slice_whole": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.slice(%x) {axes=(1,), ends=(100,), starts=(-3,)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "concat_of_one": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.concat(%x) {axis=1} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "split_into_one": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.split(%x) {axis=0, sizes=(2,)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "pad_by_zero": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.pad(%x) {mode='reflect', pads=(0, 0, 0, 0)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "tile_by_one": ("""
        graph g(%x: float32[2,3]) {
          %a: float32[2,3] = tensor.tile(%x) {repeats=(1, 1)} @a
          %y: float32[2,3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }"""),
    "neg_of_neg": ("""
        graph g(%x: float32[3]) {
          %a: float32[3] = math.neg(%x) @a
          %b: float32[3] = math.neg(%a) @b
          %y: float32[3] = math.relu(%b) @y
          return %y
        }""", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.relu(%x) @y
          return %y
        }"""),
    "clip_unbounded": ("""
        graph g(%x: float32[3]) {
          %a: float32[3] = math.clip(%x) @a
          %y: float32[3] = math.relu(%a) @y
          return %y
        }""", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.relu(%x) @y
          return %y
        }"""),
}


def test_every_identity_rule_has_a_golden_case():
    assert sorted(IDENTITY_CASES) == sorted(rule.name for rule in IDENTITY_RULES)


@pytest.mark.parametrize("rule", sorted(IDENTITY_CASES))
def test_identity_rule_golden_and_numerics(rule: str):
    before, after = IDENTITY_CASES[rule]
    identities = RemoveIdentities()
    check_rewrite(identities, before, after, seed=len(rule))
    assert identities.explain()[rule]["fired"] >= 1


def test_shared_inner_node_stays_for_its_other_users():
    check_rewrite(RemoveIdentities(), """
        graph g(%x: float32[2,3,4]) {
          %a: float32[6,4] = tensor.reshape(%x) {shape=(6, 4)} @a
          %b: float32[24] = tensor.reshape(%a) {shape=(24,)} @b
          %c: float32[6,4] = math.relu(%a) @c
          return %b, %c
        }""", """
        graph g(%x: float32[2,3,4]) {
          %a: float32[6,4] = tensor.reshape(%x) {shape=(6, 4)} @a
          %b: float32[24] = tensor.reshape(%x) {shape=(24,)} @b_0
          %c: float32[6,4] = math.relu(%a) @c
          return %b, %c
        }""")


def test_identity_removal_keeps_output_names():
    check_rewrite(RemoveIdentities(), """
        graph g(%x: float32[3]) {
          param %one: float32[] = 1.0
          %r: float32[3] = math.relu(%x) @r
          %y: float32[3] = math.mul(%r, %one) @y
          return %y
        }""", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.relu(%x) @r
          return %y
        }""")


# ---- identity rules: refusals say why -----------------------------------------------------------------------------

REFUSALS = [
    ("mul_by_one", "the constant broadcasts x to a bigger shape", """
        graph g(%x: float32[3]) {
          param %ones: float32[2,3] = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
          %y: float32[2,3] = math.mul(%x, %ones) @y
          return %y
        }"""),
    ("mul_by_one", "not a constant 1", """
        graph g(%x: float32[3]) {
          param %two: float32[] = 2.0
          %y: float32[3] = math.mul(%x, %two) @y
          return %y
        }"""),
    ("add_zero", "the constant broadcasts x to a bigger shape", """
        graph g(%x: float32[1]) {
          param %zeros: float32[4] = [0.0, 0.0, 0.0, 0.0]
          %y: float32[4] = math.add(%zeros, %x) @y
          return %y
        }"""),
    ("sub_zero", "needs a constant, found a graph input", """
        graph g(%x: float32[3], %z: float32[3]) {
          %y: float32[3] = math.sub(%x, %z) @y
          return %y
        }"""),
    ("cast_to_same_dtype", "casts float32 to int32", """
        graph g(%x: float32[3]) {
          %y: int32[3] = math.cast(%x) {dtype='int32'} @y
          return %y
        }"""),
    ("cast_round_trip", "float32 -> float16 loses values", """
        graph g(%x: float32[3]) {
          %a: float16[3] = math.cast(%x) {dtype='float16'} @a
          %y: float32[3] = math.cast(%a) {dtype='float32'} @y
          return %y
        }"""),
    ("cast_round_trip", "int32 -> float32 loses values", """
        graph g(%x: int32[3]) {
          %a: float32[3] = math.cast(%x) {dtype='float32'} @a
          %y: int32[3] = math.cast(%a) {dtype='int32'} @y
          return %y
        }"""),
    ("reshape_to_same_shape", "changes the shape", """
        graph g(%x: float32[2,3]) {
          %y: float32[3,2] = tensor.reshape(%x) {shape=(3, 2)} @y
          return %y
        }"""),
    ("transpose_as_reshape", "moves axes longer than 1", """
        graph g(%x: float32[2,1,3]) {
          %y: float32[3,1,2] = tensor.transpose(%x) {perm=(2, 1, 0)} @y
          return %y
        }"""),
    ("expand_to_same_shape", "expands x to a bigger shape", """
        graph g(%x: float32[1,3]) {
          %y: float32[2,3] = tensor.expand(%x) {shape=(2, 3)} @y
          return %y
        }"""),
    ("slice_whole", "keeps part of x", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,2] = tensor.slice(%x) {axes=(1,), ends=(2,), starts=(0,)} @y
          return %y
        }"""),
    ("slice_whole", "reverses or strides it", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,3] = tensor.slice(%x) {axes=(1,), ends=(-100,), starts=(100,), steps=(-1,)} @y
          return %y
        }"""),
    ("concat_of_one", "joins several inputs", """
        graph g(%x: float32[2,3]) {
          %y: float32[4,3] = tensor.concat(%x, %x) {axis=0} @y
          return %y
        }"""),
    ("split_into_one", "splits into several parts", """
        graph g(%x: float32[2,3]) {
          %a: float32[1,3], %b: float32[1,3] = tensor.split(%x) {axis=0, sizes=(1, 1)} @s
          %y: float32[1,3] = math.sub(%a, %b) @y
          return %y
        }"""),
    ("pad_by_zero", "pads are not all zero", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,4] = tensor.pad(%x) {pads=(0, 1, 0, 0)} @y
          return %y
        }"""),
    ("tile_by_one", "repeats are not all one", """
        graph g(%x: float32[2,3]) {
          %y: float32[2,6] = tensor.tile(%x) {repeats=(1, 2)} @y
          return %y
        }"""),
    ("neg_of_neg", "needs math.neg, found math.abs", """
        graph g(%x: float32[3]) {
          %a: float32[3] = math.abs(%x) @a
          %y: float32[3] = math.neg(%a) @y
          return %y
        }"""),
    ("clip_unbounded", "clip has a bound", """
        graph g(%x: float32[3]) {
          %y: float32[3] = math.clip(%x) {min=0.0} @y
          return %y
        }"""),
    # %r and %y are both results; dropping the * 1 would leave one value under two output names
    ("mul_by_one", "x is a graph output too", """
        graph g(%x: float32[3]) {
          param %one: float32[] = 1.0
          %r: float32[3] = math.relu(%x) @r
          %y: float32[3] = math.mul(%r, %one) @y
          return %r, %y
        }"""),
]


@pytest.mark.parametrize("rule, reason, before", REFUSALS, ids=[f"{rule}-{reason[:24]}" for rule, reason, _ in REFUSALS])
def test_identity_rule_refuses_with_a_reason(rule: str, reason: str, before: str):
    identities = RemoveIdentities()
    check_rewrite(identities, before, before, changes=False)  # a refusal leaves the text as it was
    assert_refused(identities, rule, reason)
