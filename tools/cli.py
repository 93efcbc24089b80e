"""The ``optc`` command: compile, run, inspect and bench models.

Every expected failure (bad file, hostile model, unsupported op, wrong inputs) ends with one line
on stderr, ``optc: error: ...``, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OptcError

EXIT_ERROR = 2
EXIT_INTERNAL = 3


def _progress(quiet: bool):
    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    """``--shape input=1x3x224x224`` (repeatable) -> {"input": (1, 3, 224, 224)}."""
    if not items:
        return None
    shapes = {}
    for item in items:
        name, equals, dims = item.partition("=")
        try:
            if not equals:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.replace(",", "x").split("x") if d)
        except ValueError:
            raise InputError(f"--shape '{item}' must look like NAME=1x3x224x224") from None
    return shapes


# ---- compile ------------------------------------------------------------------------------------------

def model_source(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The model of a MODEL file or --example NAME, and the keyword options compiler.load and
    compiler.compile take for it (example inputs, names, shapes, source)."""
    if bool(args.model) == bool(args.example):
        raise InputError("give either a MODEL file or --example NAME (see 'optc examples')")
    if not args.example:
        return args.model, dict(input_shapes=parse_shapes(args.shape))
    from . import zoo

    name, size = example_name(args.example)
    say(f"building example model '{name}' ({size})")
    module, example_inputs = zoo.build(args.example)
    return module, dict(example_inputs=example_inputs, input_names=zoo.input_names(args.example),
                        output_names=zoo.output_names(args.example), source=f"example:{args.example}")


def cmd_compile(args: argparse.Namespace) -> int:
    from .. import compiler

    say = _progress(args.quiet)
    model, options = model_source(args, say)
    from .cli_deploy import target_options
    from .cli_quant import with_calibration

    passes = with_calibration(args.passes or compiler.DEFAULT_PIPELINE, args.calib, args.quiet)
    cuda_options = cuda_target_options(args)
    artifact = compiler.compile(
        model, target=args.target, passes=passes, output=args.output, check=not args.no_check, progress=say,
        target_options={**target_options(args), **cuda_options}, db=args.db, **options
    )
    report = artifact.extras["report"]
    if not args.quiet:
        print(report.table())
    if args.explain:
        print("rewrite rules (fired, and why candidates were refused):")
        print(report.explain())
    check = artifact.manifest.get("check")
    if check:
        print(f"compiled vs reference: max|err| {check['max_abs_error']:.3g}, cosine {check['cosine']:.6f}")
    print(f"wrote {artifact.path} (target {args.target}, {len(artifact.graph.nodes)} nodes)")
    return 0


CUDA_ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90")  # backends.targets.cuda.ARCHES, without importing TVM


def cuda_target_options(args: argparse.Namespace) -> dict[str, Any]:
    arch = getattr(args, "arch", None)
    if arch is not None and args.target != "cuda":
        raise InputError(f"--arch is an option of --target cuda, not of --target {args.target}")
    return {} if arch is None else {"arch": arch}


# ---- run ------------------------------------------------------------------------------------------------

def load_feeds(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read inputs from {path}: {error} (expected an .npz keyed by input name)") from error


def summarize(name: str, array: np.ndarray) -> str:
    head = np.asarray(array).ravel()[:5]
    shown = ", ".join(f"{v:.5g}" if np.issubdtype(array.dtype, np.floating) else str(v) for v in head)
    if np.issubdtype(array.dtype, np.number) and array.size:
        stats = f" min {array.min():.5g} max {array.max():.5g} mean {array.astype(np.float64).mean():.5g}"
    else:
        stats = ""
    return f"  {name}: {array.dtype}{list(array.shape)}{stats} [{shown}{', ...' if array.size > 5 else ''}]"


def cmd_run(args: argparse.Namespace) -> int:
    from ..backends.artifact import load_artifact
    from ..ir.interpret import sample_inputs

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        # read when the runtime's thread pool starts, i.e. at the first run below
        for variable in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    artifact = load_artifact(args.artifact)
    model = artifact.entry(args.entry)  # --entry NAME: one entry point of a multi-entry artifact
    if args.inputs:
        feeds = load_feeds(args.inputs)
    else:
        feeds = sample_inputs(model.graph, seed=args.seed)
        print(f"no --inputs given: using seeded random inputs (seed {args.seed})")
    if args.form and artifact.target != "arm":
        raise InputError(f"--form is an option of --target arm artifacts, not of --target {artifact.target}")
    start = time.perf_counter()
    outputs = model.run(feeds, form=args.form) if args.form else model.run(feeds)
    seconds = time.perf_counter() - start
    entry = f" entry '{args.entry}'" if args.entry else ""
    print(f"ran {args.artifact}{entry} on {artifact.target} in {seconds * 1e3:.1f} ms")
    for name, array in outputs.items():
        print(summarize(name, array))
    if args.save:
        np.savez(args.save, **outputs)
        print(f"saved outputs to {args.save}")
    if args.profile:
        from ..backends.profile import format_profile, profile_kernels
        from ..backends.runtime import CompiledModel

        if not isinstance(model, CompiledModel):
            raise InputError(f"--profile times the kernels of CPU/CUDA libraries, not of --target {artifact.target}")
        print(f"time per kernel, median of {args.profile} runs:")
        print(format_profile(profile_kernels(model, feeds, runs=args.profile)))
    return 0


# ---- inspect ---------------------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    from .. import compiler
    from ..passes.report import Report

    path = Path(args.model)
    is_artifact = path.is_dir() and (path / "manifest.json").exists()
    graph = compiler.load(path, input_shapes=parse_shapes(args.shape))
    print(f"{'artifact' if is_artifact else 'model'}: {path}")
    print("inputs:")
    for item in graph.input_signature():
        print(f"  {item['name']}: {item['dtype']}{item['shape']}")
    print("outputs:")
    for item in graph.output_signature():
        print(f"  {item['name']}: {item['dtype']}{item['shape']}")
    print(f"nodes: {len(graph.nodes)}  params: {graph.param_count():,} ({graph.param_bytes() / 1e6:.2f} MB)  "
          f"FLOPs: {graph.flops() / 1e6:.2f} M")
    print("ops:")
    for op, count in graph.op_counts().items():
        print(f"  {op:<24} {count}")
    if is_artifact:
        from ..backends.artifact import read_manifest

        manifest = read_manifest(path)
        print(f"target: {json.dumps(manifest['target'])}")
        print(f"pipeline: {manifest.get('pipeline')}")
        for name, entry in manifest.get("entries", {}).items():
            signature = ", ".join(f"{item['name']}: {item['dtype']}{item['shape']}" for item in entry["inputs"])
            print(f"entry point {name}{' (default)' if name == manifest.get('default_entry') else ''}: ({signature})")
        for name, state in manifest.get("state", {}).items():
            print(f"state {name}: {state['dtype']}{state['shape']} init {state['init']}, read by {state['inputs']}, "
                  f"written by {state['outputs']}")
        print(f"created: {manifest.get('created')}  tools: {json.dumps(manifest.get('tools'))}")
        if manifest.get("check"):
            print(f"check: {json.dumps(manifest['check'])}")
        print("files:")
        for name, entry in manifest["files"].items():
            print(f"  {name:<20} {entry['size']:>12,} bytes  sha256 {entry['sha256'][:16]}...")
        report = manifest.get("report")
        if report:
            restored = Report.from_json(report)
            print("report:")
            print(restored.table())
    return 0


# ---- bench, passes, examples ----------------------------------------------------------------------------

def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main_from_cli(args)


def cmd_passes(args: argparse.Namespace) -> int:
    from ..passes import available_passes

    for name, doc in available_passes().items():
        print(f"  {name:<16} {doc}")
    return 0


def example_name(text: str) -> tuple[str, str]:
    """``--example NAME[:SIZE]`` as (model, size); InputError listing the examples when unknown."""
    from . import zoo

    try:
        return zoo.check_example(text)
    except ValueError as error:
        raise InputError(f"{error} (see 'optc examples')") from None


def cmd_examples(args: argparse.Namespace) -> int:
    from . import zoo

    for name in zoo.names():
        sizes = zoo.sizes(name)
        print(f"  {name:<12} sizes: {sizes[0]} (default), {', '.join(sizes[1:])}   e.g. --example {name}:{sizes[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optc", description="Compile and compress deep learning models with TVM backends.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    compile_parser = sub.add_parser("compile", help="compile a model into an artifact directory")
    compile_parser.add_argument("model", nargs="?", help="an .onnx file")
    compile_parser.add_argument("--example", metavar="NAME[:SIZE]", help="an embedded example model instead of a file (see 'optc examples')")
    compile_parser.add_argument("--target", default="cpu", help="target name (default: cpu)")
    compile_parser.add_argument("-o", "--output", required=True, help="artifact directory to write")
    compile_parser.add_argument("--passes", default=None,
                                help="pipeline, e.g. 'cleanup,fuse' (the default; see 'optc passes')")
    compile_parser.add_argument("--shape", action="append", help="bind an input shape: NAME=1x3x224x224 (repeatable)")
    compile_parser.add_argument("--calib", help="calibration data for quant(...) passes: .npz keyed by input name, first axis = samples")
    compile_parser.add_argument("--no-check", action="store_true", help="skip the numerical checks against the reference")
    compile_parser.add_argument("--explain", action="store_true",
                                help="per rewrite rule: how often it fired and why it refused candidates")
    compile_parser.add_argument("-q", "--quiet", action="store_true", help="no progress or report")
    from .cli_deploy import add_mcu_options, register_deploy

    add_mcu_options(compile_parser)
    compile_parser.add_argument("--arch", choices=CUDA_ARCHES, help="--target cuda: GPU compute capability (default sm_90)")
    compile_parser.add_argument("--db", help="--target cpu: a tuning database from 'optc tune' (tuned kernels win)")
    compile_parser.set_defaults(func=cmd_compile)

    run_parser = sub.add_parser("run", help="run a compiled artifact")
    run_parser.add_argument("artifact")
    run_parser.add_argument("--inputs", help=".npz keyed by input name (default: seeded random inputs)")
    run_parser.add_argument("--save", help="write outputs to this .npz")
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--threads", type=int, help="threads for the CPU runtime (default: all cores)")
    run_parser.add_argument("--profile", type=int, nargs="?", const=5, metavar="RUNS",
                            help="also print the time of each kernel (median of RUNS runs, default 5)")
    run_parser.add_argument("--entry", help="entry point of a multi-entry artifact (default: its first; "
                                            "'optc inspect' lists them)")
    run_parser.add_argument("--form", choices=("bundle", "so"), help="--target arm artifacts: the standalone "
                            "bundle (default) or lib/model.so with TVM's aarch64 runtime")
    run_parser.set_defaults(func=cmd_run)

    inspect_parser = sub.add_parser("inspect", help="describe a model or an artifact")
    inspect_parser.add_argument("model")
    inspect_parser.add_argument("--shape", action="append", help="bind an input shape: NAME=1x3x224x224")
    inspect_parser.set_defaults(func=cmd_inspect)

    bench_parser = sub.add_parser("bench", help="median latency of optc against its peers, interleaved")
    bench_parser.add_argument("model", nargs="?", help="an .onnx file or an artifact directory")
    bench_parser.add_argument("--example", metavar="NAME[:SIZE]", help="an embedded example model, e.g. gpt2:full (enables the torch peers)")
    bench_parser.add_argument("--target", default="cpu")
    bench_parser.add_argument("--passes", action="append",
                              help="optc pipeline (repeat it to time several pipelines in the same run; default: cleanup,fuse)")
    bench_parser.add_argument("--vs", default="ort,torch",
                              help="peers: ort, ort-int8, ort-int8-dynamic, torch (comma separated; '' for none)")
    bench_parser.add_argument("--calib", help="calibration data for quant(...) pipelines and the ort-int8 peer: "
                              ".npz keyed by input name, first axis = samples (default: seeded random feeds)")
    bench_parser.add_argument("--repeat", type=int, default=20, help="timed runs per system (default 20)")
    bench_parser.add_argument("--warmup", type=int, default=3)
    bench_parser.add_argument("--threads", type=int, default=None, help="threads per system (default: all cores)")
    bench_parser.add_argument("--shape", action="append", help="bind an input shape: NAME=1x3x224x224")
    bench_parser.add_argument("--json", help="also write the results to this JSON file")
    bench_parser.add_argument("--spin", action="store_true",
                              help="leave thread pools spin-waiting between runs (default: off for every system)")
    bench_parser.add_argument("--db", help="also time optc tuned with this database from 'optc tune'")
    bench_parser.set_defaults(func=cmd_bench)

    sub.add_parser("passes", help="list the available passes").set_defaults(func=cmd_passes)
    sub.add_parser("examples", help="list the embedded example models").set_defaults(func=cmd_examples)
    register_deploy(sub)
    from .cli_tune import register_tune

    register_tune(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return f"optc {__version__}"


def main(argv: list[str] | None = None) -> int:
    # torch.export's own pytree deprecation notice: nothing a user of optc can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="optc: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except OptcError as error:
        if args.debug:
            raise
        print(f"optc: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("optc: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug in optc or a library: say so, keep it to one line
        if args.debug:
            raise
        print(f"optc: internal error: {type(error).__name__}: {_one_line(str(error))} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
