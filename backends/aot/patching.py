"""MCUNetV2-style patch-based inference of the first stage: where to split, how many patches.

The memory peak of a CNN sits in its first, high-resolution layers. Patch-based inference runs
those layers (the *stage*, up to a split tensor) one spatial patch at a time: each patch of the
split tensor is computed from the part of the input its receptive field covers, written into
the full split tensor, and the rest of the network then runs layer by layer. The stage's
intermediates are only patch-sized, at the price of recomputing the overlapping halos (the
extra MACs reported here).

``search_patches(program, budget)`` tries every split tensor that alone crosses the boundary
between stage and rest (and whose stage is all convs, pools and pointwise ops on NCHW tensors)
with n x n grids, plans both parts with the ordinary planner, and returns the plan with the
fewest extra MACs that fits the budget (or the smallest peak when none fits).
"""

from __future__ import annotations

from dataclasses import dataclass

from .planner import Plan, plan_memory
from .program import Program, Step, Tensor, align

Region = tuple[int, int, int, int]  # rows [r0, r1), cols [c0, c1)


@dataclass(frozen=True)
class PatchPlan:
    """One candidate: split after ``split_step`` at ``split_tensor`` with a grid x grid patches."""

    split_step: int
    split_tensor: str
    grid: int
    stage_peak: int  # split tensor (whole) + the largest per-patch arena
    rest_peak: int  # the layer-by-layer arena of the remaining steps
    macs: int  # of the whole model with the stage run in patches
    base_macs: int  # of the whole model run layer by layer
    patch_plan: Plan | None = None
    rest_plan: Plan | None = None

    @property
    def peak(self) -> int:
        return max(self.stage_peak, self.rest_peak)

    @property
    def extra_macs(self) -> int:
        return self.macs - self.base_macs

    def describe(self) -> str:
        return (f"split after step {self.split_step} ({self.split_tensor}), {self.grid}x{self.grid} patches: "
                f"peak {self.peak / 1024:.1f} KB (stage {self.stage_peak / 1024:.1f} KB, rest "
                f"{self.rest_peak / 1024:.1f} KB), +{100 * self.extra_macs / max(self.base_macs, 1):.1f}% MACs")


def split_points(program: Program) -> list[int]:
    """Steps after which exactly one arena tensor is live and every earlier step can run on a patch."""
    last_use: dict[str, int] = {}
    for index, step in enumerate(program.steps):
        for name in step.inputs:
            last_use[name] = index
    points = []
    produced: list[str] = []
    for index, step in enumerate(program.steps):
        if step.window is None or any(program.tensors[n].spatial is None for n in step.inputs + step.outputs):
            break
        produced += [name for name in step.outputs if name not in program.external]
        crossing = [name for name in produced if last_use.get(name, -1) > index]
        if len(crossing) == 1 and crossing[0] in step.outputs:
            points.append(index)
    return points


def search_patches(program: Program, budget: int | None = None, *, grids: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
                   strategy: str = "search", inplace: bool = True) -> list[PatchPlan]:
    """Every candidate (split point x grid), best first (see the module docstring for 'best')."""
    base_macs = program.macs()
    candidates = []
    for split in split_points(program):
        split_tensor = program.steps[split].outputs[0]
        height, width = program.tensors[split_tensor].spatial
        rest = _rest_program(program, split)
        rest_plan = plan_memory(rest, strategy=strategy, inplace=inplace)
        rest_macs = rest.macs()
        for grid in grids:
            if grid > min(height, width):
                continue
            stage_arena, stage_macs, worst = 0, 0, None
            for region in _grid(height, width, grid):
                patch = _patch_program(program, split, region)
                patch_plan = plan_memory(patch, strategy=strategy, inplace=inplace)
                stage_macs += patch.macs()
                if patch_plan.arena_size >= stage_arena:
                    stage_arena, worst = patch_plan.arena_size, patch_plan
            candidates.append(PatchPlan(
                split_step=split, split_tensor=split_tensor, grid=grid,
                stage_peak=align(program.tensors[split_tensor].nbytes) + stage_arena,
                rest_peak=rest_plan.arena_size, macs=stage_macs + rest_macs, base_macs=base_macs,
                patch_plan=worst, rest_plan=rest_plan,
            ))

    def rank(candidate: PatchPlan) -> tuple:
        fits = budget is not None and candidate.peak <= budget
        return (not fits, candidate.extra_macs if fits else candidate.peak, candidate.peak)

    return sorted(candidates, key=rank)


def _grid(height: int, width: int, grid: int) -> list[Region]:
    rows = [round(i * height / grid) for i in range(grid + 1)]
    cols = [round(i * width / grid) for i in range(grid + 1)]
    return [(rows[i], rows[i + 1], cols[j], cols[j + 1]) for i in range(grid) for j in range(grid)]


def _patch_program(program: Program, split: int, region: Region) -> Program:
    """Steps 0..split on the receptive field of ``region`` of the split tensor (which is external)."""
    steps = program.steps[: split + 1]
    needed: dict[str, Region] = {steps[-1].outputs[0]: region}
    for step in reversed(steps):
        out = needed.get(step.outputs[0])
        if out is None:
            continue
        for name in step.inputs:
            height, width = program.tensors[name].spatial
            rows = step.window.input_range(0, out[0], out[1], height)
            cols = step.window.input_range(1, out[2], out[3], width)
            box = (rows[0], rows[1], cols[0], cols[1])
            needed[name] = _union(needed[name], box) if name in needed else box
    tensors = {}
    for name, (r0, r1, c0, c1) in needed.items():
        full = program.tensors[name]
        tensors[name] = Tensor(name, (full.shape[0], full.shape[1], r1 - r0, c1 - c0), full.dtype)
    patch_steps = []
    for step in steps:
        if step.outputs[0] not in needed:
            continue
        full, part = program.tensors[step.outputs[0]], tensors[step.outputs[0]]
        scale = part.nbytes / max(full.nbytes, 1)
        patch_steps.append(Step(
            step.name, step.kernel, step.inputs, step.outputs, step.workspace, step.inplace,
            int(step.inplace_workspace * part.shape[2] * part.shape[3] / max(full.shape[2] * full.shape[3], 1)),
            step.window, round(step.macs * scale),
        ))
    outputs = (steps[-1].outputs[0],)
    return Program(tensors, tuple(patch_steps), program.inputs, outputs, f"{program.name}:patch")


def _rest_program(program: Program, split: int) -> Program:
    split_tensor = program.steps[split].outputs[0]
    steps = program.steps[split + 1:]
    # the split tensor is an arena tensor of the rest: written before its first step
    head = Step("patch-stage", "patches", (), (split_tensor,))
    return Program(dict(program.tensors), (head,) + steps, program.inputs, program.outputs, f"{program.name}:rest")


def _union(a: Region, b: Region) -> Region:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
