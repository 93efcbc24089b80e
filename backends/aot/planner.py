"""Static memory planning: tensor lifetimes from the call sequence, offsets in one arena.

    plan = plan_memory(program)                 # search (default) or strategy="greedy"
    plan.arena_size, plan.offset["conv1_out"]   # bytes, byte offset of a tensor
    check_plan(plan)                            # raises if two live buffers overlap

Buffers are the arena's tenants: an intermediate tensor (live from the step that writes it to
the last step that reads it), a group of tensors that share memory (an in-place depthwise conv
or residual add writes its output over an input that dies there), or one step's kernel
workspace (live during that step only).

``greedy_by_size`` is TensorFlow Lite Micro's GreedyMemoryPlanner: buffers by decreasing size,
each at the lowest offset that does not overlap a placed buffer whose lifetime meets its own.
``search`` runs that first fit over several orders (size, size x lifetime, lifetime, first use,
conflict weight, and seeded shuffles of near-equal sizes) and with best fit, keeps the
smallest arena, and stops at the live-bytes lower bound, which no plan can beat.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .program import ALIGNMENT, Program, align


@dataclass(frozen=True)
class Buffer:
    """One arena tenant: ``size`` bytes live during steps ``first`` to ``last`` (inclusive)."""

    name: str
    size: int
    first: int
    last: int
    members: tuple[str, ...] = ()
    kind: str = "tensor"  # "tensor" or "workspace"

    def meets(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Plan:
    """Offsets for every buffer; ``offset`` also maps each member tensor to its buffer's offset."""

    buffers: tuple[Buffer, ...]
    offsets: dict[str, int]
    algorithm: str
    steps: int
    lower_bound: int

    @property
    def arena_size(self) -> int:
        return max((self.offsets[b.name] + b.size for b in self.buffers), default=0)

    @property
    def offset(self) -> dict[str, int]:
        return {member: self.offsets[b.name] for b in self.buffers for member in b.members}

    def buffer_of(self, tensor: str) -> Buffer:
        for buffer in self.buffers:
            if tensor in buffer.members:
                return buffer
        raise KeyError(tensor)

    def live_bytes(self) -> list[int]:
        """Bytes of live buffers at each step (what any plan must hold at that step)."""
        return live_bytes(self.buffers, self.steps)

    def high_water(self) -> list[int]:
        """Per step, the end of the highest live buffer in this plan."""
        marks = [0] * self.steps
        for buffer in self.buffers:
            end = self.offsets[buffer.name] + buffer.size
            for step in range(buffer.first, buffer.last + 1):
                marks[step] = max(marks[step], end)
        return marks


def live_bytes(buffers: Sequence[Buffer], steps: int) -> list[int]:
    totals = [0] * steps
    for buffer in buffers:
        for step in range(buffer.first, buffer.last + 1):
            totals[step] += buffer.size
    return totals


def lower_bound(buffers: Sequence[Buffer], steps: int) -> int:
    """The most bytes live at any one step: no placement of these buffers can use less."""
    return max(live_bytes(buffers, steps), default=0)


# ---- lifetimes ------------------------------------------------------------------------------------

def buffers_for(program: Program, *, inplace: bool = True, alignment: int = ALIGNMENT) -> list[Buffer]:
    """The arena's buffers: intermediates (merged where a step may run in place) and workspaces.

    A step's (output, input) in-place pair is taken when the input is an intermediate that no
    later step reads (with everything already sharing its memory); the output then joins the
    input's buffer, which grows to the larger of the two.
    """
    external = program.external
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, step in enumerate(program.steps):
        for name in step.outputs:
            first.setdefault(name, index)
            last[name] = max(last.get(name, index), index)
        for name in step.inputs:
            last[name] = index
            first.setdefault(name, index)  # read before written: only happens for external inputs
    group = {name: name for name in first if name not in external}

    def root(name: str) -> str:
        while group[name] != name:
            group[name] = group[group[name]]
            name = group[name]
        return name

    members: dict[str, list[str]] = {name: [name] for name in group}
    extra_workspace = [0] * len(program.steps)
    if inplace:
        for index, step in enumerate(program.steps):
            for output, source in step.inplace:
                if output not in group or source not in group or source in step.outputs:
                    continue
                source_root, output_root = root(source), root(output)
                if source_root == output_root:
                    continue
                # the input's memory must be free after this step: nothing sharing it is read later
                if max(last[m] for m in members[source_root]) > index:
                    continue
                # and the output must not already share memory with a tensor written earlier
                if len(members[output_root]) > 1:
                    continue
                group[output_root] = source_root
                members[source_root] += members.pop(output_root)
                extra_workspace[index] += step.inplace_workspace
    buffers = []
    for name, names in members.items():
        buffers.append(Buffer(
            name=name,
            size=align(max(program.tensors[m].nbytes for m in names), alignment),
            first=min(first[m] for m in names),
            last=max(last[m] for m in names),
            members=tuple(names),
        ))
    for index, step in enumerate(program.steps):
        size = step.workspace + extra_workspace[index]
        if size:
            buffers.append(Buffer(f"workspace:{step.name}", align(size, alignment), index, index, (), "workspace"))
    return buffers


def caller_aliases(program: Program) -> dict[str, str]:
    """Model outputs that may be written over a model input: {output: input}.

    Both live in the caller's buffers, so the arena does not see them; but a step that may run in
    place (``Step.inplace``) writing an output over an input that no later step reads lets the
    caller pass one buffer for both. That is a KV cache's ``cache.update``: ``present_key`` over
    ``past_key``, so a device keeps each cache once. Each input serves at most one output.
    """
    last_read: dict[str, int] = {}
    for index, step in enumerate(program.steps):
        for name in step.inputs:
            last_read[name] = index
    aliases: dict[str, str] = {}
    for index, step in enumerate(program.steps):
        for output, source in step.inplace:
            if (output in program.outputs and source in program.inputs and output not in aliases
                    and source not in aliases.values() and last_read.get(source) == index
                    and program.tensors[output].nbytes == program.tensors[source].nbytes):
                aliases[output] = source
    return aliases


# ---- placement ------------------------------------------------------------------------------------

Order = Callable[[Buffer], tuple]


def place(buffers: Sequence[Buffer], order: Sequence[Buffer], *, best_fit: bool = False,
          alignment: int = ALIGNMENT) -> dict[str, int]:
    """Place buffers in ``order``: each at the first (or best) gap among placed buffers it meets."""
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for buffer in order:
        conflicts = sorted(((offset, other) for offset, other in placed if other.meets(buffer)), key=lambda item: item[0])
        candidate, chosen, chosen_gap = 0, None, None
        for offset, other in conflicts:
            gap = offset - candidate
            if gap >= buffer.size:
                if not best_fit:
                    chosen = candidate
                    break
                if chosen_gap is None or gap < chosen_gap:
                    chosen, chosen_gap = candidate, gap
            candidate = max(candidate, align(offset + other.size, alignment))
        if chosen is None:
            chosen = candidate
        offsets[buffer.name] = chosen
        placed.append((chosen, buffer))
    return offsets


def _arena(buffers: Sequence[Buffer], offsets: dict[str, int]) -> int:
    return max((offsets[b.name] + b.size for b in buffers), default=0)


def greedy_by_size(buffers: Sequence[Buffer], alignment: int = ALIGNMENT) -> dict[str, int]:
    """TFLite Micro's GreedyMemoryPlanner: decreasing size (ties: earlier first use), first fit."""
    order = sorted(buffers, key=lambda b: (-b.size, b.first, b.name))
    return place(buffers, order, alignment=alignment)


def search(buffers: Sequence[Buffer], steps: int, *, tries: int = 64, seed: int = 0,
           alignment: int = ALIGNMENT) -> tuple[dict[str, int], str]:
    """The smallest arena over several placement orders, first and best fit; never worse than greedy."""
    bound = lower_bound(buffers, steps)
    weight = {b.name: sum(o.size for o in buffers if o.meets(b)) for b in buffers}
    orders: dict[str, Order] = {
        "size": lambda b: (-b.size, b.first, b.name),
        "area": lambda b: (-b.size * (b.last - b.first + 1), -b.size, b.name),
        "lifetime": lambda b: (-(b.last - b.first), -b.size, b.name),
        "first-use": lambda b: (b.first, -b.size, b.name),
        "conflicts": lambda b: (-weight[b.name], -b.size, b.name),
    }
    best = greedy_by_size(buffers, alignment)
    best_name, best_size = "greedy-by-size", _arena(buffers, best)
    candidates = [(name, sorted(buffers, key=key)) for name, key in orders.items()]
    rng = random.Random(seed)
    for attempt in range(tries):
        if best_size <= bound:
            break
        # shuffle by size with noise: keeps big-first while exploring near ties
        noisy = sorted(buffers, key=lambda b: -b.size * (1.0 + 0.25 * rng.random()))
        candidates.append((f"perturbed size order #{attempt}", noisy))
    for name, order in candidates:
        for best_fit in (False, True):
            offsets = place(buffers, order, best_fit=best_fit, alignment=alignment)
            size = _arena(buffers, offsets)
            if size < best_size:
                best, best_size = offsets, size
                best_name = f"{name}, {'best' if best_fit else 'first'} fit"
        if best_size <= bound:
            break
    return best, best_name


def plan_memory(program: Program, *, strategy: str = "search", inplace: bool = True,
                alignment: int = ALIGNMENT) -> Plan:
    """Plan the arena for ``program``: ``strategy`` is "greedy" (TFLM) or "search"."""
    buffers = buffers_for(program, inplace=inplace, alignment=alignment)
    steps = len(program.steps)
    if strategy == "greedy":
        offsets, algorithm = greedy_by_size(buffers, alignment), "greedy-by-size"
    elif strategy == "search":
        offsets, algorithm = search(buffers, steps, alignment=alignment)
    else:
        raise ValueError(f"unknown planning strategy '{strategy}'; use 'greedy' or 'search'")
    plan = Plan(tuple(buffers), offsets, algorithm, steps, lower_bound(buffers, steps))
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """Raise ValueError if two buffers live at the same step overlap in memory."""
    ordered = sorted(plan.buffers, key=lambda b: plan.offsets[b.name])
    for index, buffer in enumerate(ordered):
        start = plan.offsets[buffer.name]
        if start < 0:
            raise ValueError(f"buffer {buffer.name} has a negative offset")
        for other in ordered[index + 1:]:
            other_start = plan.offsets[other.name]
            if other_start >= start + buffer.size:
                break
            if buffer.meets(other):
                raise ValueError(
                    f"memory plan overlaps {buffer.name} [{start}, {start + buffer.size}) steps "
                    f"{buffer.first}-{buffer.last} with {other.name} [{other_start}, {other_start + other.size}) "
                    f"steps {other.first}-{other.last}"
                )
