"""Per-kernel time of a compiled model: which fused kernels the latency goes to.

    table = profile_kernels(artifact.compiled, feeds, runs=5)
    print(format_profile(table))

The Relax VM calls every kernel (a fused PrimFunc, or a packed function such as an allocation)
through one instruction; ``set_instrument`` hands each call to a Python callback before and after
it runs. The callback reads the clock, so each call costs a few microseconds of overhead: sums
over a run are a little above the plain latency, and very short kernels are over-stated.
CPU kernels run synchronously, so the time between the two callbacks is the kernel's time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

if TYPE_CHECKING:
    from .runtime import CompiledModel


@dataclass
class KernelTime:
    name: str
    calls: int  # per run
    ms: float  # per run, summed over its calls (median over runs)


def profile_kernels(compiled: CompiledModel, feeds: Mapping[str, np.ndarray], runs: int = 5,
                    warmup: int = 2) -> list[KernelTime]:
    """Per-kernel time of one run of ``compiled`` on ``feeds``, longest first (median over ``runs``)."""
    vm = relax.VirtualMachine(compiled._library, compiled._device)  # pylint: disable=protected-access
    arguments = compiled._arguments(feeds) + compiled._params  # pylint: disable=protected-access
    main = vm["main"]
    for _ in range(warmup):
        main(*arguments)
    per_run: list[dict[str, list[float]]] = []
    started: list[float] = []

    def instrument(_func, symbol, before_run, _ret, *_args):  # noqa: ANN001
        if before_run:
            started.append(time.perf_counter())
        else:
            elapsed = (time.perf_counter() - started.pop()) * 1e3
            per_run[-1].setdefault(str(symbol), []).append(elapsed)
        return 0  # VMInstrumentReturnKind.NO_OP: go on

    vm.set_instrument(instrument)
    for _ in range(runs):
        per_run.append({})
        main(*arguments)
    names = {name for run in per_run for name in run}
    table = [KernelTime(name, len(per_run[0].get(name, [])),
                        float(np.median([sum(run.get(name, [0.0])) for run in per_run]))) for name in names]
    return sorted(table, key=lambda row: -row.ms)


def format_profile(table: list[KernelTime], limit: int = 25) -> str:
    total = sum(row.ms for row in table) or 1.0
    lines = [f"{'ms/run':>9} {'share':>6} {'calls':>5}  kernel"]
    for row in table[:limit]:
        lines.append(f"{row.ms:>9.3f} {100 * row.ms / total:>5.1f}% {row.calls:>5}  {row.name}")
    if len(table) > limit:
        rest = sum(row.ms for row in table[limit:])
        lines.append(f"{rest:>9.3f} {100 * rest / total:>5.1f}%        ({len(table) - limit} more kernels)")
    lines.append(f"{total:>9.3f} 100.0%        total (with the profiler's per-call overhead)")
    return "\n".join(lines)
