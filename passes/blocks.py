"""Whole-block removal: drop the residual blocks whose output is most like their input.

A residual block is a ``math.add(x, f(x))`` whose branch ``f`` starts at ``x``, reads nothing else
that depends on ``x``, holds weights, and feeds only the add. Residual CNN blocks are such blocks;
so are a transformer layer's attention and MLP sub-blocks (``unit="layer"`` pairs two chained
sub-blocks into one unit). Each block is scored on calibration data by the angular distance
between its input and output, ``arccos(cos(x, x + f(x))) / pi`` per sample, averaged (as in
Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"): near 0, the block barely
changes its input. ``drop_blocks`` removes the lowest-scoring blocks by replacing the sum with
``x``; the branch becomes dead code and goes. Before, with ``drop_blocks(count=1)``::

    graph g(%x: float32[2,4]) {
      param %w: float32[4,4]
      %h: float32[2,4] = nn.linear(%x, %w) {activation='relu'} @h
      %y: float32[2,4] = math.add(%x, %h) @y
      %out: float32[2,4] = nn.softmax(%y) @out
      return %out
    }

after::

    graph g(%x: float32[2,4]) {
      %out: float32[2,4] = nn.softmax(%x) @out
      return %out
    }

Dropping changes the model's function: fine-tune afterwards (``frontends.torch.export.to_torch``)
or check the error the pass manager reports.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptcError, PipelineError
from ..ir.graph import Graph, Node, Value
from ..ir.interpret import interpret, sample_inputs
from .cleanup import eliminate_dead_code
from .pipeline import register_pass

logger = logging.getLogger(__name__)

Feeds = Mapping[str, np.ndarray]


@dataclass
class ResidualBlock:
    """One removable unit: ``output = skip + branch(skip)``, or two chained ones (a layer)."""

    skip: Value
    output: Value
    adds: list[Node]  # the sums, in graph order; the last one produces ``output``
    nodes: list[Node]  # every node removing the unit removes: the branches and the adds
    scope: str  # the dotted prefix the branch's weights share ("blocks.3.attn"), or ""
    flops: int

    @property
    def name(self) -> str:
        return "+".join(add.name for add in self.adds)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.scope})" if self.scope else self.name


@dataclass(frozen=True)
class BlockScore:
    """What ``drop_blocks`` measured and decided for one unit."""

    name: str
    scope: str
    angular_distance: float  # mean arccos(cos(input, output)) / pi: 0 means the block changes nothing
    cosine: float  # mean cosine similarity of input and output
    flops: int
    dropped: bool


# ---- finding blocks ---------------------------------------------------------------------------------------

def _downstream(graph: Graph, start: Value, limit: int, order: dict[int, int]) -> set[int]:
    """Ids of the values computed from ``start`` by nodes before position ``limit``."""
    reached = {id(start)}
    frontier = [start]
    while frontier:
        value = frontier.pop()
        for user, _ in value.uses:
            if order.get(id(user), limit) >= limit:
                continue
            for out in user.outputs:
                if id(out) not in reached:
                    reached.add(id(out))
                    frontier.append(out)
    return reached


def _as_block(graph: Graph, add: Node, order: dict[int, int]) -> ResidualBlock | str:
    """The residual block ending at ``add``, or the reason it is not one."""
    reasons = []
    outputs = {id(value) for value in graph.outputs}
    for skip_position in (0, 1):
        skip, branch_output = add.inputs[skip_position], add.inputs[1 - skip_position]
        if skip is branch_output:
            return "both inputs are the same value"
        if skip.type != add.output.type:
            reasons.append("the sum broadcasts")
            continue
        downstream = _downstream(graph, skip, order[id(add)], order)
        if id(branch_output) not in downstream:
            reasons.append("neither input is computed from the other")
            continue
        branch: dict[int, Node] = {}
        pending = [branch_output.producer]
        while pending:
            node = pending.pop()
            if node is None or id(node) in branch:
                continue
            branch[id(node)] = node
            pending += [value.producer for value in node.inputs if value is not skip and id(value) in downstream]
        nodes = sorted(branch.values(), key=lambda node: order[id(node)])
        leak = _leak(nodes, branch, add, outputs)
        if leak:
            return leak
        weights = [value for node in nodes for value in node.inputs if value in graph.params and value.type.rank >= 2]
        if not weights:
            return "the branch has no weights"
        flops = sum(n.opdef.count_flops([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs) for n in nodes + [add])
        return ResidualBlock(skip, add.output, [add], nodes + [add], _scope([value.name for value in weights]), int(flops))
    return reasons[0] if len(set(reasons)) == 1 else " and ".join(sorted(set(reasons)))


def _leak(nodes: list[Node], branch: dict[int, Node], add: Node, outputs: set[int]) -> str | None:
    """Why the branch is not private to the block (a value read outside it), or None."""
    for node in nodes:
        for value in node.outputs:
            if id(value) in outputs:
                return f"the branch value %{value.name} is a graph output"
            for user, _ in value.uses:
                if user is not add and id(user) not in branch:
                    return f"the branch value %{value.name} is also read by {user.name}"
    return None


def _scope(names: list[str]) -> str:
    """The longest dotted prefix every weight name shares, without the parameter's own name."""
    parts = [name.split(".")[:-1] for name in names]
    common: list[str] = []
    for segments in zip(*parts):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    prefix = ".".join(common)
    for suffix in (".weight", ".bias"):
        prefix = prefix.removesuffix(suffix)
    return prefix


def find_residual_blocks(graph: Graph, refused: Counter[str] | None = None) -> list[ResidualBlock]:
    """Every residual block of ``graph`` in graph order; why other sums are not, into ``refused``."""
    order = {id(node): index for index, node in enumerate(graph.nodes)}
    blocks = []
    for node in graph.nodes:
        if node.op != "math.add":
            continue
        found = _as_block(graph, node, order)
        if isinstance(found, ResidualBlock):
            blocks.append(found)
        elif refused is not None:
            refused[found] += 1
    return blocks


def pair_into_layers(blocks: list[ResidualBlock]) -> list[ResidualBlock]:
    """Chained blocks (the second's input is the first's output, read by nothing else) two by two: a
    pre-norm transformer layer's attention and MLP sub-blocks. A block with no partner stays a unit
    of its own (post-norm layers, as BERT's, put a layer norm between the two)."""
    units: list[ResidualBlock] = []
    index = 0
    while index < len(blocks):
        first = blocks[index]
        second = blocks[index + 1] if index + 1 < len(blocks) else None
        members = {id(node) for node in second.nodes} if second is not None else set()
        if second is not None and second.skip is first.output and all(id(user) in members for user, _ in first.output.uses):
            scope = _scope([first.scope + ".x", second.scope + ".x"]) if first.scope and second.scope else ""
            units.append(ResidualBlock(first.skip, second.output, first.adds + second.adds, first.nodes + second.nodes,
                                       scope, first.flops + second.flops))
            index += 2
        else:
            units.append(first)
            index += 1
    return units


# ---- scoring ---------------------------------------------------------------------------------------------

def _per_sample(array: np.ndarray) -> np.ndarray:
    wide = np.asarray(array, dtype=np.float64)
    return wide.reshape(wide.shape[0], -1) if wide.ndim >= 2 else wide.reshape(1, -1)


def score_blocks(graph: Graph, blocks: Sequence[ResidualBlock], feeds: Sequence[Feeds]) -> list[tuple[float, float]]:
    """Per block, (mean angular distance, mean cosine) of its input and output over ``feeds``.

    Runs the reference interpreter once per feed on a copy of the graph whose outputs are the
    blocks' inputs and outputs, so nothing else is kept alive.
    """
    probe = graph.clone()
    by_name = {value.name: value for value in probe.values()}
    wanted = list(dict.fromkeys(name for block in blocks for name in (block.skip.name, block.output.name)))
    probe.outputs = [by_name[name] for name in wanted]
    distances: list[list[float]] = [[] for _ in blocks]
    cosines: list[list[float]] = [[] for _ in blocks]
    for feed in feeds:
        results = interpret(probe, feed)
        for index, block in enumerate(blocks):
            before, after = _per_sample(results[block.skip.name]), _per_sample(results[block.output.name])
            norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
            dots = np.sum(before * after, axis=1)
            # two zero vectors are the same (cosine 1); a zero and a non-zero one are not (0)
            same = np.where(np.all(before == after, axis=1), 1.0, 0.0)
            cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), same)
            cosine = np.clip(cosine, -1.0, 1.0)
            cosines[index] += cosine.tolist()
            distances[index] += (np.arccos(cosine) / np.pi).tolist()
    return [(float(np.mean(d)), float(np.mean(c))) for d, c in zip(distances, cosines)]


def calibration_feeds(graph: Graph, calib: Any, samples: int, seed: int) -> list[Feeds]:
    """Feeds from ``calib``: a path to an .npz of input arrays, one mapping, or a list of them;
    ``samples`` seeded random feeds (``sample_inputs``) when it is None."""
    if calib is None:
        return [sample_inputs(graph, seed + index) for index in range(samples)]
    if isinstance(calib, (str, os.PathLike)):
        try:
            with np.load(calib) as archive:
                return [{name: archive[name] for name in archive.files}]
        except (OSError, ValueError) as error:
            raise OptcError(f"cannot read calibration inputs from {calib}: {error} "
                            "(expected an .npz keyed by input name)") from error
    if isinstance(calib, Mapping):
        return [calib]
    return list(calib)


# ---- the pass ----------------------------------------------------------------------------------------------

def drop_block(graph: Graph, block: ResidualBlock) -> None:
    """Make the block's readers read its input; the branch is left for dead-code elimination."""
    last = block.adds[-1]
    if any(block.output is out for out in graph.outputs):
        # keep the output's name: an identity copy takes it once the sum is gone
        copy = graph.add_node("tensor.reshape", [block.skip], {"shape": tuple(block.skip.shape)}, before=last).output
        graph.replace_all_uses(block.output, copy)
        name = block.output.name
        eliminate_dead_code(graph)
        graph.rename_value(copy, name)
        return
    graph.replace_all_uses(block.output, block.skip)


@register_pass("drop_blocks")
@dataclass
class DropBlocks:
    """Drop the residual blocks (or layers) whose output is most similar to their input."""

    count: int | None = None  # how many units to drop
    ratio: float | None = None  # or this fraction of the units (rounded)
    flops: float | None = None  # or the fewest units that remove this fraction of the graph's FLOPs
    unit: str = "block"  # "block": every residual sum; "layer": chained pairs (attention + MLP)
    calib: Any = None  # an .npz path, a feeds mapping or a list of them; default: seeded random inputs
    samples: int = 4  # random feeds when calib is None
    seed: int = 0
    scores: list[BlockScore] = field(default_factory=list, init=False, repr=False)
    refused: Counter = field(default_factory=Counter, init=False, repr=False)

    def __post_init__(self) -> None:
        chosen = [name for name in ("count", "ratio", "flops") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise PipelineError(f"drop_blocks takes exactly one of count, ratio or flops (got {chosen or 'none'})")
        if self.unit not in ("block", "layer"):
            raise PipelineError(f"drop_blocks unit must be 'block' or 'layer', not '{self.unit}'")
        for name in ("ratio", "flops"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise PipelineError(f"drop_blocks {name}={value} must be a fraction in [0, 1]")

    def __call__(self, graph: Graph) -> bool:
        self.refused = Counter()
        blocks = find_residual_blocks(graph, self.refused)
        units = pair_into_layers(blocks) if self.unit == "layer" else blocks
        self.scores = []
        if not units:
            return False
        measured = score_blocks(graph, units, calibration_feeds(graph, self.calib, self.samples, self.seed))
        ranking = sorted(range(len(units)), key=lambda index: measured[index][0])
        dropped: set[int] = set()
        removed_nodes: set[int] = set()
        removed_flops, total_flops = 0, graph.flops()
        for index in ranking:
            if not self._wants_more(len(dropped), len(units), removed_flops, total_flops):
                break
            unit = units[index]
            if any(id(add) in removed_nodes for add in unit.adds):
                continue  # inside a unit already dropped
            drop_block(graph, unit)
            dropped.add(index)
            removed_nodes.update(id(node) for node in unit.nodes)
            removed_flops += unit.flops
        eliminate_dead_code(graph)
        self.scores = [
            BlockScore(unit.name, unit.scope, measured[index][0], measured[index][1], unit.flops, index in dropped)
            for index, unit in enumerate(units)
        ]
        logger.info("drop_blocks: dropped %d of %d %ss", len(dropped), len(units), self.unit)
        return bool(dropped)

    def _wants_more(self, dropped: int, available: int, removed_flops: int, total_flops: int) -> bool:
        if self.count is not None:
            return dropped < self.count
        if self.ratio is not None:
            return dropped < round(self.ratio * available)
        return removed_flops < (self.flops or 0.0) * total_flops

    def table(self) -> str:
        """The scores of the last run, most redundant first, one unit per line."""
        header = f"{'unit':<48} {'angular':>8} {'cosine':>8} {'MFLOPs':>8}  dropped"
        lines = [header, "-" * len(header)]
        for score in sorted(self.scores, key=lambda item: item.angular_distance):
            label = f"{score.name} ({score.scope})" if score.scope else score.name
            lines.append(f"{label[:48]:<48} {score.angular_distance:>8.4f} {score.cosine:>8.4f} "
                         f"{score.flops / 1e6:>8.3f}  {'yes' if score.dropped else 'no'}")
        return "\n".join(lines)

    def explain(self) -> dict[str, dict[str, Any]]:
        """Per unit: dropped (fired 1) or kept, its angular distance, cosine and FLOPs; then the
        sums that are not residual blocks, by reason."""
        report: dict[str, dict[str, Any]] = {}
        for score in self.scores:
            label = f"{score.name} ({score.scope})" if score.scope else score.name
            kept = {} if score.dropped else {f"kept: angular distance {score.angular_distance:.4f}": 1}
            report[label] = {"fired": int(score.dropped), "refused": kept, "angular_distance": score.angular_distance,
                             "cosine": score.cosine, "flops": score.flops}
        if self.refused:
            report["(sums that are not residual blocks)"] = {"fired": 0, "refused": dict(self.refused)}
        return report


__all__ = ["BlockScore", "DropBlocks", "ResidualBlock", "calibration_feeds", "drop_block", "find_residual_blocks",
           "pair_into_layers", "score_blocks"]
