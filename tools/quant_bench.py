"""Latency of optc's quantized builds against optc float and ONNX Runtime's own int8, same run.

    python -m optc.tools.quant_bench --example resnet18 --size tiny
    python -m optc.tools.quant_bench model.onnx --calib data.npz --repeat 30

One ONNX model (a zoo example is exported first) is built six ways and timed interleaved by
``tools/bench.measure`` (one worker process per system, spin-waits off):

* optc ``cleanup,fuse`` (float), ``+quant(int8)`` (static, calibrated), ``+quant(int8,dynamic)``,
  ``+quant(w4,group=128)``;
* ONNX Runtime on the float model, and on the model quantized by ``onnxruntime.quantization``
  (``quantize_static``, QDQ, per-channel, the same calibration feeds) and ``quantize_dynamic``.

Weight bytes per build are printed too. Calibration: ``--calib`` (an .npz keyed by input name,
first axis = samples) or seeded N(0, 1) feeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import OptcError
from .bench import SystemSpec, format_table, measure

OPTC_BUILDS = {
    "optc float": None,
    "optc int8": {"mode": "int8"},
    "optc int8-dyn": {"mode": "int8", "method": "dynamic"},
    "optc w4": {"mode": "w4", "group": 128},
}


def _calibration(graph, path: str | None, samples: int) -> list[dict[str, np.ndarray]]:
    from ..ir.interpret import sample_inputs
    from ..passes.quant import load_calibration

    if path:
        return load_calibration(path, graph)
    return [sample_inputs(graph, seed=index + 1) for index in range(samples)]


def _ort_quantized(onnx_path: str, feeds: list[dict[str, np.ndarray]], scratch: Path) -> dict[str, tuple[str, str]]:
    """ONNX Runtime's static QDQ and dynamic int8 models: name -> (path, table note)."""
    from .ort_quant import describe, quantize_with_ort

    return {
        "ort int8": (quantize_with_ort(onnx_path, scratch / "ort_int8_static.onnx", "static", feeds), describe("static")),
        "ort int8-dyn": (quantize_with_ort(onnx_path, scratch / "ort_int8_dynamic.onnx", "dynamic"), describe("dynamic")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.quant_bench", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an .onnx file")
    parser.add_argument("--example", help="a zoo example instead (exported to ONNX)")
    parser.add_argument("--size", default=None, help="the example's size (see tools/zoo.py)")
    parser.add_argument("--calib", help=".npz keyed by input name, first axis = samples")
    parser.add_argument("--samples", type=int, default=8, help="random calibration feeds without --calib")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from .. import compiler
    from ..ir.interpret import sample_inputs
    from ..passes import parse_pipeline
    from ..passes.quant import Quantize

    threads = args.threads or os.cpu_count()
    try:
        if bool(args.model) == bool(args.example):
            raise OptcError("give an .onnx MODEL or --example NAME")
        with tempfile.TemporaryDirectory(prefix="optc-quant-bench-") as scratch_name:
            scratch = Path(scratch_name)
            onnx_path = args.model
            if args.example:
                from . import zoo

                onnx_path = str(scratch / f"{args.example}.onnx")
                zoo.export_onnx(args.example, onnx_path, size=args.size)
            graph = compiler.load(onnx_path)
            feeds = _calibration(graph, args.calib, args.samples)
            specs, sizes = [], {}
            for name, options in OPTC_BUILDS.items():
                passes = parse_pipeline("cleanup,fuse") + ([Quantize(**options, feeds=feeds)] if options else [])
                print(f"compiling {name}", file=sys.stderr, flush=True)
                artifact = compiler.compile(onnx_path, passes=passes, output=scratch / name.replace(" ", "_"), check=False)
                sizes[name] = artifact.graph.param_bytes()
                specs.append(SystemSpec(name, kind="optc", artifact=str(artifact.path), threads=threads))
            specs.append(SystemSpec("ort float", kind="ort", onnx=onnx_path, threads=threads, note="float"))
            for name, (path, note) in _ort_quantized(onnx_path, feeds, scratch).items():
                specs.append(SystemSpec(name, kind="ort", onnx=path, threads=threads, note=note))
                sizes[name] = Path(path).stat().st_size
            sizes["ort float"] = Path(onnx_path).stat().st_size
            results = measure(specs, sample_inputs(graph, seed=0), args.repeat, args.warmup,
                              progress=lambda message: print(message, file=sys.stderr, flush=True))
    except OptcError as error:
        print(f"quant_bench: error: {error}", file=sys.stderr)
        return 2
    print(f"model: {args.example or args.model}  threads: {threads}  load avg: {os.getloadavg()[0]:.2f}")
    print(format_table(results))
    print("weight bytes (optc: artifact params; ort: .onnx file):")
    for name, size in sizes.items():
        print(f"  {name:<14} {size:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
