"""The call sequence an AOT driver runs, as the memory planner sees it: tensors and steps.

A ``Program`` is target-neutral: it is built from a compiled Relax module (``kernels.py``: one
step per ``call_tir``) or straight from an optc graph (``from_graph.py``: one step per node, for
planning without compiling). Only shapes, dtypes and the order of steps matter here.

Model inputs and outputs are *external*: they live in the caller's buffers (``model_run(in,
out)``), so the arena holds only the intermediate tensors and the kernels' workspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALIGNMENT = 16  # bytes; every arena offset is a multiple of this (SIMD loads, float and int32 access)


def align(size: int, alignment: int = ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


@dataclass(frozen=True)
class Tensor:
    """An activation: its shape and dtype decide its size in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def spatial(self) -> tuple[int, int] | None:
        """(height, width) of an NCHW tensor, else None."""
        return (int(self.shape[2]), int(self.shape[3])) if len(self.shape) == 4 else None


@dataclass(frozen=True)
class Window:
    """How a spatial step reads its input: output rows/cols map to input rows/cols through this."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # top, left
    dilation: tuple[int, int] = (1, 1)

    def input_range(self, axis: int, start: int, stop: int, size: int) -> tuple[int, int]:
        """The input rows (axis 0) or columns (axis 1) that output [start, stop) reads, clipped."""
        first = start * self.stride[axis] - self.padding[axis]
        last = (stop - 1) * self.stride[axis] - self.padding[axis] + (self.kernel[axis] - 1) * self.dilation[axis]
        return max(first, 0), min(last + 1, size)


POINTWISE = Window()


@dataclass(frozen=True)
class Step:
    """One kernel call: the activations it reads and writes, its scratch, what may share memory.

    ``inplace`` lists (output, input) pairs the kernel computes correctly when both use the same
    memory; the planner uses a pair only when the input is not read after this step.
    ``inplace_workspace`` is extra scratch needed when running in place (MCUNet's in-place
    depthwise keeps one output channel aside). ``window`` (for patch-based planning) maps an
    output region of ``outputs[0]`` to the region of every spatial input; None means the step
    cannot run on a patch. ``macs`` counts multiply-accumulates of the whole step.
    """

    name: str
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    workspace: int = 0
    inplace: tuple[tuple[str, str], ...] = ()
    inplace_workspace: int = 0
    window: Window | None = None
    macs: int = 0


@dataclass(frozen=True)
class Program:
    """Tensors by name, the steps in execution order, and which tensors are external."""

    tensors: dict[str, Tensor]
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = "model"
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def external(self) -> frozenset[str]:
        return frozenset(self.inputs) | frozenset(self.outputs)

    def macs(self) -> int:
        return sum(step.macs for step in self.steps)

    def with_dtype(self, dtype: str) -> Program:
        """The same program with every tensor stored as ``dtype`` (e.g. int8 activations)."""
        tensors = {name: Tensor(t.name, t.shape, dtype) for name, t in self.tensors.items()}
        itemsize_ratio = np.dtype(dtype).itemsize
        steps = tuple(
            Step(s.name, s.kernel, s.inputs, s.outputs, s.workspace, s.inplace,
                 _rescale(s.inplace_workspace, self, s, itemsize_ratio), s.window, s.macs)
            for s in self.steps
        )
        return Program(tensors, steps, self.inputs, self.outputs, self.name, dict(self.notes))


def _rescale(inplace_workspace: int, program: Program, step: Step, itemsize: int) -> int:
    """In-place scratch is one output channel; keep it one channel at the new item size."""
    if not inplace_workspace or not step.outputs:
        return inplace_workspace
    old_itemsize = np.dtype(program.tensors[step.outputs[0]].dtype).itemsize
    return inplace_workspace // old_itemsize * itemsize
