"""Cleanup passes: constant folding and dead-code elimination.

``fold_constants`` before::

    param %a: float32[2] = [1.0, 2.0]
    %s: float32[2] = math.exp(%a) @exp
    %y: float32[2] = math.add(%x, %s) @add

after (``exp`` ran at compile time)::

    param %exp: float32[2] = [2.718..., 7.389...]
    %y: float32[2] = math.add(%x, %exp) @add
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph
from .pipeline import register_pass

DEFAULT_FOLD_LIMIT = 1 << 22  # elements a folded result may have


@register_pass("fold_constants")
@dataclass(frozen=True)
class FoldConstants:
    """Evaluate nodes whose inputs are all constants, up to `limit` output elements."""

    limit: int = DEFAULT_FOLD_LIMIT

    def __call__(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if not node.inputs or not all(value in graph.params for value in node.inputs):
                continue
            if not all(v.type.is_static for v in node.outputs) or sum(v.type.numel for v in node.outputs) > self.limit:
                continue
            results = node.opdef.run([graph.params[v] for v in node.inputs], node.attrs)
            for value, result in zip(node.outputs, results):
                constant = graph.add_param(value.name + "_folded", result.astype(value.dtype).reshape(value.type.static_shape()))
                graph.replace_all_uses(value, constant)
            graph.remove_node(node)
            changed = True
        if changed:
            graph.remove_unused_params()
        return changed


@register_pass("dce")
@dataclass(frozen=True)
class EliminateDeadCode:
    """Remove nodes and params whose results nothing reads."""

    def __call__(self, graph: Graph) -> bool:
        changed = False
        outputs = {id(value) for value in graph.outputs}
        for node in reversed(list(graph.nodes)):
            if all(not value.uses and id(value) not in outputs for value in node.outputs):
                graph.remove_node(node)
                changed = True
        return bool(graph.remove_unused_params()) or changed


@register_pass("cleanup")
@dataclass(frozen=True)
class Cleanup:
    """Constant folding then dead-code elimination, repeated until nothing changes."""

    fold_limit: int = DEFAULT_FOLD_LIMIT
    max_rounds: int = 8

    def __call__(self, graph: Graph) -> bool:
        changed = False
        for _ in range(self.max_rounds):
            round_changed = FoldConstants(self.fold_limit)(graph)
            round_changed = EliminateDeadCode()(graph) or round_changed
            if not round_changed:
                break
            changed = True
        return changed
