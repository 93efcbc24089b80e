"""The memory report of an AOT build: peak SRAM, flash, the planner's table and a PNG plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .planner import Plan
from .program import Program

logger = logging.getLogger(__name__)

KB = 1024


def step_table(program: Program, plan: Plan) -> list[dict[str, Any]]:
    """Per step: kernel, output, live bytes (any plan's floor) and the arena's high-water mark.

    A kernel with several outputs (a q/k/v split) shows its first one and how many there are.
    """
    live, high = plan.live_bytes(), plan.high_water()
    rows = []
    for index, step in enumerate(program.steps):
        output = program.tensors[step.outputs[0]] if step.outputs else None
        described = f"{output.dtype}{list(output.shape)}" if output else ""
        if len(step.outputs) > 1:
            described += f" x{len(step.outputs)}"
        rows.append({
            "step": index, "kernel": step.kernel, "output": described,
            "live_bytes": live[index], "arena_high_water": high[index], "workspace": step.workspace,
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'step':>4}  {'kernel':<34} {'output':<26} {'live KB':>9} {'arena KB':>9} {'workspace KB':>12}"]
    for row in rows:
        lines.append(f"{row['step']:>4}  {row['kernel'][:34]:<34} {row['output'][:26]:<26} {row['live_bytes'] / KB:>9.1f} "
                     f"{row['arena_high_water'] / KB:>9.1f} {row['workspace'] / KB:>12.1f}")
    return "\n".join(lines)


def plot_memory(program: Program, plans: dict[str, Plan], path: Path, *, budget: int | None = None) -> Path | None:
    """Memory over the call sequence as a PNG; None (with a log line) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: PLC0415
    except ImportError:
        logger.warning("matplotlib is not installed: no memory plot written (pip install matplotlib)")
        return None
    figure, axes = pyplot.subplots(figsize=(10, 4.5), dpi=110)
    steps = list(range(len(program.steps)))
    for label, plan in plans.items():
        axes.step(steps, [value / KB for value in plan.high_water()], where="mid", label=f"{label}: arena high water")
        axes.step(steps, [value / KB for value in plan.live_bytes()], where="mid", linestyle=":",
                  label=f"{label}: live tensors")
    if budget:
        axes.axhline(budget / KB, color="red", linestyle="--", label=f"SRAM budget {budget / KB:.0f} KB")
    axes.set_xlabel("step (kernel call)")
    axes.set_ylabel("KB")
    axes.set_title(f"{program.name}: memory over time")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return Path(path)
