"""``optc bench``: median latency of an optc artifact against ONNX Runtime and torch, interleaved.

Each system runs in its own worker process (spawned, so thread pools never share a process), and
the parent asks the workers for one timed run at a time in rotating order. Only one system runs at
any moment, so one runtime's spinning threads cannot steal cores from another's measurement, and
slow drifts of the machine (heat, other load) hit every system alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, OptcError


@dataclass
class SystemSpec:
    name: str  # what the table shows: "optc", "optc[cleanup]", "ort", "torch"
    kind: str = ""  # "optc", "ort" or "torch"; defaults to the name
    artifact: str | None = None
    onnx: str | None = None
    example: str | None = None
    threads: int | None = None
    spin: bool = False  # let thread pools spin-wait between runs (each runtime's default)

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name


@dataclass
class SystemResult:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    note: str = ""
    times_ms: list[float] = field(default_factory=list)


# Spin-waiting thread pools keep a core busy after a run; with one system measured at a time,
# the idle ones would steal cores from it (TVM_NOTES). Off unless --spin.
NO_SPIN_ENVIRONMENT = {"TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"}
SPIN_NOTE = "spin-waits off (TVM_THREAD_POOL_SPIN_COUNT=0, OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0)"


def _set_threads(threads: int | None, spin: bool = False) -> None:
    if threads:
        for variable in ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
    if not spin:
        os.environ.update(NO_SPIN_ENVIRONMENT)


def _build_runner(spec: SystemSpec, feeds: dict[str, np.ndarray]) -> tuple[Callable[[], Any], str]:
    """A zero-argument callable that runs the model once, and a note describing the system."""
    if spec.kind == "optc":
        from ..backends.artifact import load_artifact

        artifact = load_artifact(spec.artifact)
        runner = artifact.compiled.runner(feeds)
        return runner, f"target {artifact.target}"
    if spec.kind == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if spec.threads:
            options.intra_op_num_threads = spec.threads
            options.inter_op_num_threads = 1
        if not spec.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(spec.onnx, options, providers=["CPUExecutionProvider"])
        names = {item.name for item in session.get_inputs()}
        ort_feeds = {name: array for name, array in feeds.items() if name in names}
        return (lambda: session.run(None, ort_feeds)), f"onnxruntime {ort.__version__}"
    if spec.kind == "torch":
        import torch

        from . import zoo

        if spec.threads:
            torch.set_num_threads(spec.threads)
        module, _ = zoo.build(spec.example)
        tensors = tuple(torch.from_numpy(feeds[name]) for name in zoo.input_names(spec.example))

        def run_torch() -> Any:
            with torch.inference_mode():
                return module(*tensors)

        return run_torch, f"torch {torch.__version__} eager"
    raise InputError(f"unknown system {spec.kind}")


def _worker(connection: Any, spec: SystemSpec, feeds_path: str) -> None:
    _set_threads(spec.threads, spec.spin)
    try:
        with np.load(feeds_path, allow_pickle=False) as data:
            feeds = {name: data[name] for name in data.files}
        runner, note = _build_runner(spec, feeds)
        connection.send(("ready", note))
    except Exception as error:  # reported to the parent, which prints it and goes on without us
        connection.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        message = connection.recv()
        if message[0] == "stop":
            return
        times = []
        try:
            for _ in range(message[1]):
                start = time.perf_counter()
                runner()
                times.append((time.perf_counter() - start) * 1e3)
        except Exception as error:  # the parent reports it and measures the others
            connection.send(("error", f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"))
            return
        connection.send(("times", times))


def _receive(connection: Any) -> tuple[str, Any]:
    try:
        return connection.recv()
    except EOFError:
        return "error", "the worker process died (see its output above)"


def measure(specs: list[SystemSpec], feeds: dict[str, np.ndarray], repeat: int, warmup: int,
            progress: Callable[[str], None] = lambda message: None) -> list[SystemResult]:
    """Interleaved medians; a system that fails to start is reported with its error, not fatal."""
    context = multiprocessing.get_context("spawn")
    results: list[SystemResult] = []
    with tempfile.TemporaryDirectory() as scratch:
        feeds_path = os.path.join(scratch, "feeds.npz")
        np.savez(feeds_path, **feeds)
        workers = []

        def failed(spec: SystemSpec, process: Any, note: str) -> None:
            progress(f"{spec.name}: failed: {note}")
            results.append(SystemResult(spec.name, float("nan"), float("nan"), float("nan"), 0, f"failed: {note}"))
            process.join(timeout=10)

        for spec in specs:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker, args=(child_end, spec, feeds_path), daemon=True)
            process.start()
            child_end.close()  # so a worker that dies shows up as EOFError instead of a hang
            status, note = _receive(parent_end)
            if status == "error":
                failed(spec, process, note)
                continue
            progress(f"{spec.name}: ready ({note}); warming up")
            parent_end.send(("run", warmup))
            status, payload = _receive(parent_end)
            if status == "error":
                failed(spec, process, payload)
                continue
            workers.append((spec, parent_end, process, note, []))
        for round_index in range(repeat):
            shift = round_index % max(len(workers), 1)
            for worker in workers[shift:] + workers[:shift]:
                spec, connection, process, _, times = worker
                connection.send(("run", 1))
                status, payload = _receive(connection)
                if status == "error":
                    failed(spec, process, payload)
                    workers.remove(worker)
                else:
                    times.extend(payload)
        for spec, connection, process, note, times in workers:
            connection.send(("stop",))
            process.join()
            ordered = sorted(times)
            results.append(SystemResult(
                spec.name,
                statistics.median(ordered),
                ordered[int(0.1 * (len(ordered) - 1))],
                ordered[int(0.9 * (len(ordered) - 1))],
                len(ordered),
                note,
                [round(t, 4) for t in times],
            ))
    order = {spec.name: index for index, spec in enumerate(specs)}
    return sorted(results, key=lambda result: order[result.name])


def format_table(results: list[SystemResult]) -> str:
    optc = next((r for r in results if r.name.startswith("optc") and r.runs), None)
    width = max([8] + [len(r.name) for r in results])
    lines = [f"{'system':<{width}} {'median ms':>10} {'p10':>9} {'p90':>9} {'runs':>5}  {'ratio':>8}  note"]
    for result in results:
        if not result.runs:
            lines.append(f"{result.name:<{width}} {'-':>10} {'-':>9} {'-':>9} {0:>5}  {'-':>8}  {result.note}")
            continue
        ratio = f"{result.median_ms / optc.median_ms:.2f}x" if optc else "-"
        lines.append(
            f"{result.name:<{width}} {result.median_ms:>10.3f} {result.p10_ms:>9.3f} {result.p90_ms:>9.3f} {result.runs:>5}  {ratio:>8}  {result.note}"
        )
    reference = optc.name if optc else "optc"
    lines.append(f"ratio = that system's median / {reference}'s median (above 1: {reference} is faster)")
    return "\n".join(lines)


def main_from_cli(args: argparse.Namespace) -> int:
    from .. import compiler
    from ..ir.interpret import sample_inputs
    from .cli import _progress, parse_shapes

    say = _progress(False)
    peers = [peer.strip() for peer in (args.vs or "").split(",") if peer.strip()]
    unknown = sorted(set(peers) - {"ort", "torch"})
    if unknown:
        raise InputError(f"unknown peer(s) {unknown}; use ort and/or torch")
    if bool(args.model) == bool(args.example):
        raise InputError("give either a MODEL (.onnx file or artifact directory) or --example NAME")
    threads = args.threads or os.cpu_count()
    pipelines = args.passes or [compiler.DEFAULT_PIPELINE]
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as scratch:
        onnx_path = None
        example = args.example
        artifacts = []
        if example:
            from . import zoo

            if example not in zoo.names():
                raise InputError(f"unknown example '{example}'; examples: {', '.join(zoo.names())}")
            module, example_inputs = zoo.build(example)
            for index, pipeline in enumerate(pipelines):
                say(f"compiling example {example} with optc ({pipeline})")
                artifacts.append(compiler.compile(
                    module, target=args.target, passes=pipeline, output=Path(scratch) / f"artifact{index}",
                    example_inputs=example_inputs, input_names=zoo.input_names(example),
                    output_names=zoo.output_names(example), check=False, progress=say))
            if "ort" in peers:
                onnx_path = str(Path(scratch) / f"{example}.onnx")
                say("exporting the same model to ONNX for onnxruntime")
                zoo.export_onnx(example, onnx_path)
        else:
            model = Path(args.model)
            if model.is_dir():
                from ..backends.artifact import load_artifact

                artifacts.append(load_artifact(model))
                pipelines = [str(artifacts[0].manifest.get("pipeline"))]
                source = Path(str(artifacts[0].manifest.get("source", "")))
                onnx_path = str(source) if source.suffix == ".onnx" and source.is_file() else None
            else:
                for index, pipeline in enumerate(pipelines):
                    say(f"compiling {model} with optc ({pipeline})")
                    artifacts.append(compiler.compile(
                        model, target=args.target, passes=pipeline, output=Path(scratch) / f"artifact{index}",
                        input_shapes=parse_shapes(args.shape), check=False, progress=say))
                onnx_path = str(model)
        feeds = sample_inputs(artifacts[0].graph, seed=0)
        specs = [
            SystemSpec("optc" if len(artifacts) == 1 else f"optc[{pipeline}]", kind="optc", artifact=str(artifact.path),
                       threads=threads, spin=args.spin)
            for pipeline, artifact in zip(pipelines, artifacts)
        ]
        skipped = []
        for peer in peers:
            if peer == "ort":
                if onnx_path:
                    specs.append(SystemSpec("ort", onnx=onnx_path, threads=threads, spin=args.spin))
                else:
                    skipped.append("ort (no ONNX file for this model)")
            elif peer == "torch":
                if example:
                    specs.append(SystemSpec("torch", example=example, threads=threads, spin=args.spin))
                else:
                    skipped.append("torch (needs --example: an ONNX file has no torch model)")
        for note in skipped:
            say(f"skipping {note}")
        say(f"measuring {', '.join(s.name for s in specs)}: {args.warmup} warmup + {args.repeat} interleaved runs each, {threads} threads")
        results = measure(specs, feeds, args.repeat, args.warmup, progress=say)
    print(f"model: {example or args.model}  target: {args.target}  passes: {' | '.join(pipelines)}  threads: {threads}  "
          f"load avg: {os.getloadavg()[0]:.2f}  {'spin-waits: runtime defaults' if args.spin else SPIN_NOTE}")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": example or str(args.model), "target": args.target, "passes": pipelines, "threads": threads,
            "date": time.strftime("%Y-%m-%d"), "spin": args.spin, "load_average": os.getloadavg()[0],
            "results": [asdict(r) for r in results],
        }, indent=1))
    if not any(r.name.startswith("optc") and r.runs for r in results):
        raise OptcError("optc itself could not be measured (see the message above)")
    return 0


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
