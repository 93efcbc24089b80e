"""The arena planner: lifetimes, greedy-by-size, search, aliasing, and MobileNetV2-0.35 figures."""

from __future__ import annotations

import numpy as np
import pytest

from optc.backends.aot.planner import Buffer, buffers_for, greedy_by_size, lower_bound, plan_memory, search
from optc.backends.aot.program import Program, Step, Tensor

KB = 1024


def chain(sizes: list[int], inplace_at: int | None = None) -> Program:
    """x -> t0 -> t1 -> ... -> out, tensor i of sizes[i] bytes (int8)."""
    names = ["x"] + [f"t{i}" for i in range(len(sizes))] + ["out"]
    tensors = {"x": Tensor("x", (8,), "int8"), "out": Tensor("out", (8,), "int8")}
    tensors.update({f"t{i}": Tensor(f"t{i}", (size,), "int8") for i, size in enumerate(sizes)})
    steps = []
    for index in range(len(names) - 1):
        pairs = ((names[index + 1], names[index]),) if index == inplace_at else ()
        steps.append(Step(f"s{index}", "op", (names[index],), (names[index + 1],), inplace=pairs))
    return Program(tensors, tuple(steps), ("x",), ("out",))


def random_program(rng: np.random.Generator, steps: int = 12) -> Program:
    """A random DAG: each step reads 1-3 earlier tensors, writes one, sometimes has workspace or may run in place."""
    tensors = {"x": Tensor("x", (16,), "float32")}
    available = ["x"]
    program_steps = []
    for index in range(steps):
        reads = tuple(dict.fromkeys(rng.choice(available, size=min(len(available), int(rng.integers(1, 4))))))
        name = f"t{index}" if index < steps - 1 else "out"
        tensors[name] = Tensor(name, (int(rng.integers(1, 400)),), "float32")
        pairs = tuple((name, read) for read in reads if rng.random() < 0.3)
        workspace = int(rng.integers(0, 800)) if rng.random() < 0.3 else 0
        program_steps.append(Step(f"s{index}", "op", reads, (name,), workspace=workspace, inplace=pairs))
        available.append(name)
    return Program(tensors, tuple(program_steps), ("x",), ("out",))


def assert_no_live_overlap(plan, program: Program) -> None:
    """Independent of check_plan: at every step, the byte ranges of live tensors and workspace are disjoint."""
    offset = plan.offset
    for index in range(len(program.steps)):
        ranges = []
        for buffer in plan.buffers:
            if buffer.first <= index <= buffer.last:
                start = plan.offsets[buffer.name]
                ranges.append((start, start + buffer.size, buffer.name))
        ranges.sort()
        for (start_a, end_a, a), (start_b, _, b) in zip(ranges, ranges[1:]):
            assert end_a <= start_b, f"step {index}: {a} [{start_a}, {end_a}) overlaps {b} at {start_b}"
        for buffer in plan.buffers:
            for member in buffer.members:
                assert offset[member] == plan.offsets[buffer.name]
        assert all(end <= plan.arena_size for _, end, _ in ranges)


def test_chain_reuses_memory_of_dead_tensors() -> None:
    program = chain([100, 200, 300, 50])
    plan = plan_memory(program, strategy="greedy")
    # a chain needs at most two neighbours at once: the largest pair is 200 + 300 (aligned to 16)
    assert plan.arena_size == 208 + 304
    assert plan.lower_bound == plan.arena_size


def test_inplace_shares_the_input_buffer_only_when_the_input_dies() -> None:
    plan = plan_memory(chain([256, 256, 64], inplace_at=1), inplace=True)
    assert plan.offset["t0"] == plan.offset["t1"]
    assert plan.arena_size == 256 + 64  # t0/t1 share; t2 sits beside them
    # t0 is read again after step 1: no sharing
    program = chain([256, 256, 64], inplace_at=1)
    steps = list(program.steps)
    steps.append(Step("late", "op", ("t0", "out"), ("late",)))
    tensors = dict(program.tensors, late=Tensor("late", (8,), "int8"))
    late = Program(tensors, tuple(steps), ("x",), ("late",))
    assert buffers_for(late, inplace=True) == buffers_for(late, inplace=False)


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_never_overlap_live_tensors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    program = random_program(rng, steps=int(rng.integers(3, 20)))
    greedy = plan_memory(program, strategy="greedy", inplace=bool(seed % 2))
    best = plan_memory(program, strategy="search", inplace=bool(seed % 2))
    for plan in (greedy, best):
        assert_no_live_overlap(plan, program)
        assert plan.arena_size >= plan.lower_bound
    assert best.arena_size <= greedy.arena_size


def test_search_beats_greedy_where_greedy_fragments() -> None:
    # By size, the three 48-byte buffers go first and leave gaps the two 32-byte ones cannot share:
    # 128 bytes. Placing the long-lived buffers first reaches the live-bytes bound of 112.
    buffers = [
        Buffer("a", 48, 0, 1, ("a",)), Buffer("b", 48, 1, 2, ("b",)), Buffer("c", 32, 2, 4, ("c",)),
        Buffer("d", 32, 3, 5, ("d",)), Buffer("e", 48, 4, 5, ("e",)), Buffer("f", 16, 0, 0, ("f",)),
    ]
    greedy = greedy_by_size(buffers)
    found, _ = search(buffers, 6)
    arena = lambda offsets: max(offsets[b.name] + b.size for b in buffers)  # noqa: E731
    assert arena(greedy) == 128
    assert arena(found) == lower_bound(buffers, 6) == 112


@pytest.fixture(scope="module")
def mobilenet_int8() -> Program:
    from optc.tools.mcu_memory import mobilenetv2_program

    return mobilenetv2_program()


def test_mobilenetv2_035_at_144_matches_mcunetv2_figures(mobilenet_int8: Program) -> None:
    from optc.backends.aot.patching import search_patches

    layer_by_layer = plan_memory(mobilenet_int8, inplace=False)
    assert layer_by_layer.arena_size <= 304 * KB
    assert layer_by_layer.arena_size == layer_by_layer.lower_bound  # the planner reaches the live-tensor bound
    inplace = plan_memory(mobilenet_int8, inplace=True)
    assert inplace.arena_size <= 284 * KB
    best = search_patches(mobilenet_int8, 64 * KB)[0]
    assert best.peak <= 64 * KB
    assert 0 < best.extra_macs < 0.5 * best.base_macs
    for plan in (layer_by_layer, inplace, best.patch_plan, best.rest_plan):
        assert_no_live_overlap(plan, mobilenet_int8 if plan in (layer_by_layer, inplace) else _program_of(plan))


def _program_of(plan) -> Program:
    """A stand-in program with the plan's step count (the overlap check only needs steps)."""
    return Program({}, tuple(Step(f"s{i}", "op", (), ()) for i in range(plan.steps)), (), ())
