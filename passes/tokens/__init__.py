"""Token pruning and merging for transformer encoders, as a rewrite of the captured graph.

``tokens(merge, r=8)`` merges 8 tokens per block ToMe-style (bipartite soft matching on the
keys, size-weighted means, proportional attention); ``tokens(prune, r=8)`` keeps the tokens the
class token attends to most (EViT), ``score=norm`` or ``score=mean`` rank them otherwise, and
``fuse=True`` folds the pruned ones into one extra token. ``pyramid=0.5`` keeps half the tokens at
each stage boundary instead (PyramidDrop), and ``flops=0.25`` solves the schedule for a FLOP
target. Counts are static: every shape in the result is fixed, so every backend runs it.

Before (one pre-norm block)::

    %add_1: float32[1,65,32] = math.add(%add, %proj)          # stream after attention
    %ln_2: float32[1,65,32] = nn.layer_norm(%add_1, ...)
    %view_13: float32[65,32] = tensor.reshape(%ln_2) {shape=(65, 32)}

After ``tokens(merge, r=8)``::

    %add_1: float32[1,65,32] = math.add(%add, %proj)
    ...                                                       # similarity, rank, assignment
    %tokens0.merged_tokens: float32[1,57,32] = tensor.concat(%tokens0.protected, %tokens0.a.kept, %tokens0.b.mean) {axis=1}
    %ln_2: float32[1,57,32] = nn.layer_norm(%tokens0.merged_tokens, ...)
    %view_13: float32[57,32] = tensor.reshape(%ln_2) {shape=(57, 32)}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ...errors import PipelineError
from ...ir.graph import Graph
from ..pipeline import register_pass
from . import schedule
from .apply import METHODS, SCORES, LayerTokens, Settings, apply_tokens, stage_flops
from .find import TokenBlock, find_blocks, protected_prefix
from .flow import TokenFlowError

__all__ = ["ReduceTokens", "TokenFlowError", "TokenReport", "find_blocks", "reduce_tokens"]

logger = logging.getLogger(__name__)


@dataclass
class TokenReport:
    method: str
    schedule: str
    protect: int
    layers: list[LayerTokens]
    flops_before: int
    flops_after: int
    reshaped_outputs: list[str] = field(default_factory=list)  # outputs that now carry fewer tokens

    @property
    def reduction(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    def table(self) -> str:
        lines = [f"tokens: {self.method}, {self.schedule}, protect={self.protect}: FLOPs {self.flops_before:,} -> "
                 f"{self.flops_after:,} ({self.reduction:.1%} fewer)",
                 f"{'block':>5} {'attention':<24} {'tokens in':>9} {'tokens out':>10} {'stage MFLOPs':>18}"]
        for row in self.layers:
            lines.append(f"{row.block:>5} {row.attention:<24} {row.tokens_in:>9} {row.tokens_out:>10} "
                         f"{row.flops_before / 1e6:>8.2f} -> {row.flops_after / 1e6:>6.2f}")
        lines += [f"note: output {text} (it carries the reduced tokens)" for text in self.reshaped_outputs]
        return "\n".join(lines)


def _plan(blocks: list[TokenBlock], protect: int, pass_: "ReduceTokens", measure) -> tuple[list[int | None], str]:
    count, tokens, method = len(blocks), blocks[0].tokens, pass_.method
    if pass_.counts is not None:
        return schedule.explicit(count, tokens, protect, pass_.counts, method), f"counts={list(pass_.counts)}"
    if pass_.pyramid is not None and pass_.flops is None:
        return (schedule.pyramid(count, tokens, protect, pass_.pyramid, pass_.stages, pass_.start, method),
                f"pyramid={pass_.pyramid} over {pass_.stages} stages")
    if pass_.r is not None and pass_.flops is None:
        return schedule.constant(count, tokens, protect, pass_.r, pass_.start, method), f"r={pass_.r}"
    if pass_.pyramid is not None or pass_.stages_given:
        def candidates(knob: float) -> list[int | None]:
            return schedule.pyramid(count, tokens, protect, max(1.0 - knob, 1e-6), pass_.stages, pass_.start, method)
        counts, reached = schedule.solve_flops(pass_.flops, measure, candidates, 0.0, 1.0, False,
                                               f"a {pass_.stages}-stage pyramid")
        return counts, f"flops={pass_.flops} (pyramid over {pass_.stages} stages, reached {reached:.1%})"

    def by_r(knob: float) -> list[int | None]:
        return schedule.constant(count, tokens, protect, int(knob), pass_.start, method)
    counts, reached = schedule.solve_flops(pass_.flops, measure, by_r, 0, tokens, True, "a constant r")
    removed = [before - after for before, after in zip([tokens] + [c for c in counts if c], [c for c in counts if c])]
    return counts, f"flops={pass_.flops} (r={max(removed) if removed else 0} per block, reached {reached:.1%})"


def reduce_tokens(graph: Graph, pass_: "ReduceTokens") -> TokenReport:
    """Rewrite ``graph`` in place by ``pass_``'s settings; returns what it did."""
    symbolic = [value.name for value in graph.inputs if not value.type.is_static]
    if symbolic:
        raise PipelineError(f"tokens: inputs {', '.join(symbolic)} of graph {graph.name} have symbolic dims; token "
                            f"passes keep every shape static, so give static shapes (--shape image=1x3x224x224, or "
                            f"capture with a fixed batch)")
    blocks = find_blocks(graph)
    if not blocks:
        raise PipelineError(f"tokens: graph {graph.name} has no transformer encoder block (non-causal nn.attention "
                            f"added back to a (batch, tokens, channels) stream); run fuse first")
    found = protected_prefix(graph, blocks)
    protect = found if pass_.protect is None else max(pass_.protect, found)
    score = pass_.score if pass_.score != "auto" else ("cls" if protect else "mean")
    if score == "cls" and protect == 0:
        raise PipelineError("tokens: score=cls needs a class token (protect=1 or a model that reads token 0)")
    settings = Settings(pass_.method, protect, score, pass_.fuse, pass_.proportional)
    flops_before = graph.flops()

    def measure(counts: list[int | None]) -> float:
        trial = graph.clone()
        apply_tokens(trial, find_blocks(trial), counts, settings)
        return 1.0 - trial.flops() / flops_before

    counts, described = _plan(blocks, protect, pass_, measure)
    before = stage_flops(graph, blocks)
    output_shapes = [tuple(value.shape) for value in graph.outputs]
    layers = apply_tokens(graph, blocks, counts, settings)
    reshaped = [f"{value.name} {before} -> {tuple(value.shape)}"
                for value, before in zip(graph.outputs, output_shapes) if tuple(value.shape) != before]
    if reshaped:
        logger.warning("tokens: outputs now carry the reduced tokens: %s", "; ".join(reshaped))
    after = stage_flops(graph, blocks)
    for row in layers:
        row.flops_before, row.flops_after = before[row.block], after[row.block]
    tail = LayerTokens(len(blocks), "(after the last block)", layers[-1].tokens_out if layers else 0,
                       layers[-1].tokens_out if layers else 0, before[-1], after[-1])
    return TokenReport(pass_.method, described, protect, layers + [tail], flops_before, graph.flops(), reshaped)


@register_pass("tokens")
@dataclass
class ReduceTokens:
    """Prune or merge transformer tokens to static per-block counts (ToMe, EViT, PyramidDrop)."""

    method: str = "merge"             # merge | prune
    r: int | None = None              # tokens removed per block
    flops: float | None = None        # fraction of the FLOPs to remove, solved into per-block counts
    pyramid: float | None = None      # keep this fraction of tokens at each stage boundary
    stages: int | None = None         # pyramid stages (default 3)
    start: int = 0                    # first block that reduces
    score: str = "auto"               # prune: cls | mean | norm (auto: cls with a class token, else mean)
    fuse: bool = False                # prune: fold the pruned tokens into one extra token
    protect: int | None = None        # leading tokens never removed (auto: the ones later nodes read)
    proportional: bool = True         # merge: add log(token size) to attention scores
    counts: tuple | None = None       # tokens leaving each block, explicitly
    last_report: TokenReport | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PipelineError(f"tokens method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.score not in SCORES + ("auto",):
            raise PipelineError(f"tokens score {self.score!r}; use one of {', '.join(SCORES)}")
        if sum(option is not None for option in (self.r, self.pyramid, self.counts)) > 1:
            raise PipelineError("tokens takes one schedule: r=, pyramid= or counts= (flops= may go with pyramid=)")
        if self.r is None and self.flops is None and self.pyramid is None and self.counts is None:
            raise PipelineError("tokens needs a schedule: r=8, flops=0.25, pyramid=0.5 or counts=(...)")
        if self.flops is not None and not 0.0 < self.flops < 1.0:
            raise PipelineError(f"tokens flops={self.flops} must be a fraction in (0, 1)")
        if self.fuse and self.method != "prune":
            raise PipelineError("tokens fuse=True applies to prune")
        self.stages_given = self.stages is not None
        if self.stages is None:
            self.stages = 3

    def __call__(self, graph: Graph) -> bool:
        self.last_report = reduce_tokens(graph, self)
        logger.info("%s", self.last_report.table())
        return any(row.tokens_out != row.tokens_in for row in self.last_report.layers)

    def explain(self) -> dict[str, dict[str, Any]]:
        """Per block: tokens in -> out, as report rows."""
        report = self.last_report
        if report is None:
            return {}
        return {f"block {row.block} ({row.attention}) {row.tokens_in}->{row.tokens_out} tokens": {
                    "fired": row.tokens_in - row.tokens_out, "refused": {}}
                for row in report.layers if row.block < len(report.layers) - 1}
