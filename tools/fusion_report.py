"""Node counts before and after ``cleanup,fuse`` on the zoo, from torch capture and ONNX export.

    python -m optc.tools.fusion_report [--size tiny|default] [--models resnet18,vit]

For each model and source it prints the node count before and after, the fused ops that appear
(layer norms, GELUs, attention blocks, linears), and the largest output difference from the
unfused graph on seeded inputs, relative to the output's magnitude.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir.graph import Graph
from ..ir.interpret import interpret, sample_inputs
from ..passes import PassManager

FUSED_OPS = ("nn.layer_norm", "math.gelu", "nn.attention", "nn.linear", "nn.conv", "nn.batch_norm", "nn.softmax")


@dataclass
class FusionRow:
    model: str
    source: str
    before: int
    after: int
    ops_after: dict[str, int]
    relative_error: float


def load_zoo_graph(name: str, source: str, size: str | None, scratch: Path) -> Graph:
    from . import zoo

    if source == "torch":
        from ..frontends.torch import capture

        module, inputs = zoo.build(name, size=size)
        return capture(module, inputs, input_names=zoo.input_names(name), output_names=zoo.output_names(name))
    from ..frontends.onnx import load_onnx

    path = scratch / f"{name}-{size or 'default'}.onnx"
    zoo.export_onnx(name, str(path), size=size)
    return load_onnx(path)


def fuse_and_measure(graph: Graph, model: str, source: str, pipeline: str = "cleanup,fuse") -> FusionRow:
    feeds = sample_inputs(graph, seed=0)
    reference = interpret(graph, feeds)
    before = len(graph.nodes)
    PassManager(pipeline, check_numerics=False).run(graph)
    fused = interpret(graph, feeds)
    error = max(
        float(np.max(np.abs(fused[name].astype(np.float64) - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        for name, ref in reference.items()
    )
    counts = graph.op_counts()
    return FusionRow(model, source, before, len(graph.nodes), {op: counts.get(op, 0) for op in FUSED_OPS}, error)


def main(argv: list[str] | None = None) -> int:
    from . import zoo

    parser = argparse.ArgumentParser(prog="python -m optc.tools.fusion_report", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="zoo size (tiny, small, full; default: each model's default)")
    parser.add_argument("--models", default=",".join(zoo.names()))
    parser.add_argument("--sources", default="torch,onnx")
    args = parser.parse_args(argv)
    print(f"| model | source | nodes before | after | {' | '.join(FUSED_OPS)} | max rel. diff |")
    print("| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in FUSED_OPS) + " | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models.split(","):
            for source in args.sources.split(","):
                row = fuse_and_measure(load_zoo_graph(model, source, args.size, Path(scratch)), model, source)
                counts = " | ".join(str(row.ops_after[op]) for op in FUSED_OPS)
                print(f"| {model} | {source} | {row.before} | {row.after} | {counts} | {row.relative_error:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
