"""The pass manager: runs passes, verifies after each, measures each, names the one that fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..errors import OptcError, PassError
from ..ir.graph import Graph
from ..ir.interpret import interpret, sample_inputs
from ..ir.verify import verify as verify_graph
from .pipeline import Pass, parse_pipeline, pass_name
from .report import GraphStats, PassRow, Report, compare_outputs

logger = logging.getLogger(__name__)


class PassManager:
    """Run passes in order on a graph, in place.

    ``verify`` checks IR invariants after every pass (keep it on in tests). ``check_numerics``
    runs the reference interpreter on ``sample_feeds`` (seeded random inputs when none are given)
    before the first pass and after each one, and records the max abs error and cosine of the
    outputs in the report. It costs one interpreter run per pass: turn it off for big models.
    """

    def __init__(
        self,
        passes: Sequence[Pass] | str,
        verify: bool = True,
        check_numerics: bool = True,
        sample_feeds: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.verify = verify
        self.check_numerics = check_numerics
        self.sample_feeds = dict(sample_feeds) if sample_feeds is not None else None
        self.seed = seed
        self.progress = progress
        # with check_numerics: the interpreter's outputs of the graph as the last pass left it
        self.outputs: dict[str, np.ndarray] | None = None

    def run(self, graph: Graph) -> Report:
        report = Report(before=GraphStats.of(graph))
        reference = None
        feeds = None
        if self.check_numerics:
            feeds = self.sample_feeds if self.sample_feeds is not None else sample_inputs(graph, self.seed)
            reference = interpret(graph, feeds)
        self.outputs = reference
        history: list[str] = []
        for pass_ in self.passes:
            name = pass_name(pass_)
            if self.progress:
                self.progress(f"running pass {name}")
            start = time.perf_counter()
            try:
                changed = bool(pass_(graph))
                if self.verify:
                    verify_graph(graph)
            except PassError:
                raise
            except (OptcError, ValueError, KeyError, IndexError, TypeError, AssertionError) as error:
                raise PassError(name, history, error) from error
            seconds = time.perf_counter() - start
            row = PassRow(name, changed, seconds, GraphStats.of(graph))
            explain = getattr(pass_, "explain", None)
            if callable(explain):
                row.rules = explain()
            if reference is not None and feeds is not None:
                self.outputs = interpret(graph, feeds)
                row.max_abs_error, row.cosine = compare_outputs(reference, self.outputs)
            logger.info("pass %s: changed=%s nodes=%d (%.2fs)", name, changed, row.stats.nodes, seconds)
            report.rows.append(row)
            history.append(name)
        return report


def run_pipeline(graph: Graph, pipeline: str | Sequence[Pass], **options: object) -> Report:
    """Convenience: ``PassManager(pipeline, **options).run(graph)``."""
    return PassManager(pipeline, **options).run(graph)  # type: ignore[arg-type]
