"""What a pipeline did, one row per pass: size, cost and error against the reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..ir.graph import Graph


@dataclass
class GraphStats:
    nodes: int
    params: int
    param_bytes: int
    flops: int
    activation_bytes: int

    @staticmethod
    def of(graph: Graph) -> "GraphStats":
        return GraphStats(
            nodes=len(graph.nodes),
            params=graph.param_count(),
            param_bytes=graph.param_bytes(),
            flops=graph.flops(),
            activation_bytes=sum(v.type.nbytes for node in graph.nodes for v in node.outputs),
        )


@dataclass
class PassRow:
    name: str
    changed: bool
    seconds: float
    stats: GraphStats
    max_abs_error: float | None = None
    cosine: float | None = None
    rules: dict[str, dict[str, Any]] | None = None  # per rewrite rule: fired, refused reasons


@dataclass
class Report:
    before: GraphStats
    rows: list[PassRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"before": asdict(self.before), "passes": [asdict(row) for row in self.rows]}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Report":
        """The inverse of ``to_json`` (what an artifact's manifest stores)."""
        rows = [PassRow(**{**row, "stats": GraphStats(**row["stats"])}) for row in data["passes"]]
        return Report(before=GraphStats(**data["before"]), rows=rows)

    def explain(self) -> str:
        """Per pass and rule: how often it fired and why it refused candidates."""
        lines = []
        for row in self.rows:
            if not row.rules:
                continue
            lines.append(f"{row.name}:")
            for rule, stat in row.rules.items():
                lines.append(f"  {rule:<32} fired {stat['fired']}")
                for reason, count in list(stat["refused"].items())[:6]:
                    lines.append(f"      refused {count:>4}x  {reason}")
        return "\n".join(lines) if lines else "(no rewrite rules ran)"

    def table(self) -> str:
        header = f"{'pass':<28} {'changed':>7} {'nodes':>6} {'params':>11} {'MFLOPs':>10} {'max|err|':>9} {'cosine':>9} {'sec':>6}"
        lines = [header, "-" * len(header)]
        lines.append(_line("(input)", None, self.before, None, None, None))
        for row in self.rows:
            lines.append(_line(row.name, row.changed, row.stats, row.max_abs_error, row.cosine, row.seconds))
        return "\n".join(lines)


def _line(name: str, changed: bool | None, stats: GraphStats, error: float | None, cosine: float | None, seconds: float | None) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return (
        f"{name[:28]:<28} {('-' if changed is None else ('yes' if changed else 'no')):>7} {stats.nodes:>6} "
        f"{stats.params:>11,} {stats.flops / 1e6:>10.2f} {fmt(error, '.2e'):>9} {fmt(cosine, '.6f'):>9} {fmt(seconds, '.2f'):>6}"
    )


def compare_outputs(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> tuple[float, float]:
    """Max absolute error and the worst cosine similarity over float outputs (exact match for others)."""
    max_error, worst_cosine = 0.0, 1.0
    for (name, expected), got in zip(reference.items(), actual.values()):
        expected64 = np.asarray(expected, dtype=np.float64).ravel()
        got64 = np.asarray(got, dtype=np.float64).ravel()
        if expected64.shape != got64.shape:
            return float("inf"), 0.0
        if expected64.size == 0:
            continue
        max_error = max(max_error, float(np.max(np.abs(expected64 - got64))))
        norms = np.linalg.norm(expected64) * np.linalg.norm(got64)
        cosine = 1.0 if norms == 0 and np.array_equal(expected64, got64) else float(expected64 @ got64 / norms) if norms else 0.0
        worst_cosine = min(worst_cosine, cosine)
    return max_error, worst_cosine
