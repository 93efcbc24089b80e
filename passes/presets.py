"""Named pipelines built from other passes.

``fuse`` is what a user wants before compiling for speed: recognize the decomposed forms that
exporters produce (layer norm, GELU, attention, ...), fold pads, batch norm and scale/bias chains
into convolutions and matmuls, fuse bias and activation epilogues, then clean up. Each step is
also a pass of its own for users who want only part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.graph import Graph
from .pipeline import parse_pipeline, register_pass

FUSE_STEPS = ("recognize", "fold_pads", "fold_batch_norm", "fold_scale_bias", "fuse_epilogues", "cleanup")


@register_pass("fuse")
@dataclass
class Fuse:
    """Recognize decomposed ops, fold pads/batch norm/scale-bias into weights, fuse epilogues, clean up."""

    max_rounds: int = 3
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, graph: Graph) -> bool:
        self.stats = {}
        changed = False
        for _ in range(self.max_rounds):
            round_changed = False
            for step in parse_pipeline(",".join(FUSE_STEPS)):
                step_changed = bool(step(graph))
                round_changed = round_changed or step_changed
                explain = getattr(step, "explain", None)
                if callable(explain):
                    for rule, stat in explain().items():
                        merged = self.stats.setdefault(f"{step.pass_name}.{rule}", {"fired": 0, "refused": {}})
                        merged["fired"] += stat["fired"]
                        merged["refused"] = stat["refused"]  # the last round's: what still stands
            changed = changed or round_changed
            if not round_changed:
                break
        return changed

    def explain(self) -> dict[str, dict[str, Any]]:
        return self.stats
