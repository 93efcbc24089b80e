"""Token schedules: how many tokens leave each block.

- constant ``r``: every block from ``start`` on removes ``r`` tokens (ToMe);
- pyramid: at each of ``stages - 1`` stage boundaries keep ``ratio`` of the unprotected tokens
  (PyramidDrop);
- FLOP target: the smallest ``r`` (or, with ``pyramid``, the largest ratio) whose graph has at least
  that fraction fewer FLOPs, solved by bisection on FLOPs counted from the rewritten graph.

A merge can remove at most half of the unprotected tokens in one block (each source token needs
a destination in the other half); pruning keeps at least one unprotected token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ...errors import PipelineError

Counts = list[int | None]


def _limit(tokens: int, protect: int, method: str) -> int:
    """The most tokens one block can remove."""
    free = tokens - protect
    return max(free // 2, 0) if method == "merge" else max(free - 1, 0)


def constant(blocks: int, tokens: int, protect: int, remove: int, start: int, method: str) -> Counts:
    counts: Counts = []
    for index in range(blocks):
        step = min(remove, _limit(tokens, protect, method)) if index >= start else 0
        tokens -= step
        counts.append(tokens if step else None)
    return counts


def boundaries(blocks: int, stages: int) -> list[int]:
    """The blocks that end each stage but the last."""
    if stages < 2:
        raise PipelineError(f"a pyramid needs at least 2 stages, got {stages}")
    return sorted({max(round(blocks * stage / stages) - 1, 0) for stage in range(1, stages)})


def pyramid(blocks: int, tokens: int, protect: int, ratio: float, stages: int, start: int, method: str) -> Counts:
    if not 0.0 < ratio <= 1.0:
        raise PipelineError(f"pyramid ratio must be in (0, 1], got {ratio}")
    counts: Counts = [None] * blocks
    for index in boundaries(blocks, stages):
        if index < start:
            continue
        keep = protect + max(1, math.ceil((tokens - protect) * ratio))
        step = min(tokens - keep, _limit(tokens, protect, method))
        if step > 0:
            tokens -= step
            counts[index] = tokens
    return counts


def explicit(blocks: int, tokens: int, protect: int, kept: Sequence[int], method: str) -> Counts:
    if len(kept) != blocks:
        raise PipelineError(f"counts= gives {len(kept)} numbers for {blocks} blocks")
    counts: Counts = []
    for index, target in enumerate(kept):
        target = int(target)
        if target > tokens:
            raise PipelineError(f"counts= asks block {index} to keep {target} tokens, but only {tokens} reach it")
        if tokens - target > _limit(tokens, protect, method):
            raise PipelineError(f"counts= asks block {index} to go from {tokens} to {target} tokens; one {method} "
                            f"removes at most {_limit(tokens, protect, method)}")
        counts.append(target if target < tokens else None)
        tokens = target
    return counts


def solve_flops(target: float, reduction: Callable[[Counts], float], candidates: Callable[[float], Counts],
                low: float, high: float, integer: bool, describe: str) -> tuple[Counts, float]:
    """Bisection over a monotone knob (higher removes more) for the least that removes ``target``."""
    best = candidates(high)
    reached = reduction(best)
    if reached < target:
        raise PipelineError(f"token reduction cannot remove {target:.0%} of the FLOPs with {describe}: the most it "
                        f"removes is {reached:.1%}; reduce earlier (start=) or set a smaller flops=")
    for _ in range(40 if not integer else 64):
        if (high - low <= 1) if integer else (high - low < 1e-3):
            break
        middle = (low + high) // 2 if integer else (low + high) / 2
        counts = candidates(middle)
        achieved = reduction(counts)
        if achieved >= target:
            high, best, reached = middle, counts, achieved
        else:
            low = middle
    return best, reached
