"""``optc bench``: median latency of an optc artifact against ONNX Runtime and torch, interleaved.

Peers (``--vs``): ``ort`` (ONNX Runtime on the same ONNX model), ``ort-int8`` and
``ort-int8-dynamic`` (that model quantized by ``onnxruntime.quantization``, static QDQ per-channel
on the same calibration feeds as optc's ``quant(...)`` passes, or dynamic; see ``tools/ort_quant.py``)
and ``torch`` / ``torch-compile`` (eager and ``torch.compile``, ``--example`` only; on the GPU with
``--target cuda``, where every timed run waits for the GPU to finish).

Each system runs in its own worker process (spawned, so thread pools never share a process), and
the parent asks the workers for one timed run at a time in rotating order. Only one system runs at
any moment, so one runtime's spinning threads cannot steal cores from another's measurement, and
slow drifts of the machine (heat, other load) hit every system alike.
"""

from __future__ import annotations

import argparse
import functools
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
    name: str  # what the table shows: "optc", "optc[cleanup]", "ort", "ort-int8", "torch"
    kind: str = ""  # "optc", "ort" or "torch"; defaults to the name
    artifact: str | None = None
    onnx: str | None = None
    example: str | None = None
    threads: int | None = None
    spin: bool = False  # let thread pools spin-wait between runs (each runtime's default)
    note: str = ""  # what else the table notes about the system, e.g. "int8 dynamic"
    device: str = "cpu"  # torch peers: "cuda" when optc runs on the GPU (--target cuda)
    compiled: bool = False  # torch peer: torch.compile the module

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
        return (lambda: session.run(None, ort_feeds)), " ".join(filter(None, [f"onnxruntime {ort.__version__}", spec.note]))
    if spec.kind == "torch":
        import torch

        from . import zoo

        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise InputError(f"torch {torch.__version__} sees no CUDA GPU (a CPU-only torch, or no GPU here)")
        module, _ = zoo.build(spec.example)
        module = module.to(spec.device).eval()
        if spec.compiled:
            from torch._inductor import config as inductor_config

            # freezing folds the weights into the graph as constants (what optc does too); the
            # issue's reference numbers for torch.compile are with freezing
            inductor_config.freezing = True
            module = torch.compile(module)
        tensors = tuple(torch.from_numpy(feeds[name]).to(spec.device) for name in zoo.input_names(spec.example))
        synchronize = torch.cuda.synchronize if spec.device == "cuda" else (lambda: None)

        def run_torch() -> Any:
            with torch.inference_mode():
                result = module(*tensors)
            synchronize()
            return result

        where = f" on {torch.cuda.get_device_name()}" if spec.device == "cuda" else ""
        return run_torch, f"torch {torch.__version__} {'torch.compile (inductor, freezing)' if spec.compiled else 'eager'}{where}"
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


def format_table(results: list[SystemResult], flops: int | None = None) -> str:
    """Medians, spread and ratios; the ratio is to ONNX Runtime ("ort") when it was measured,
    else to the first optc system. With ``flops`` (the model's FLOPs before any pass), each
    system's effective GFLOP/s = those FLOPs / its median, so systems that skip work (pruned or
    quantized builds) show as faster, not as doing more arithmetic."""
    measured = [r for r in results if r.runs]
    reference = next((r for r in measured if r.name == "ort"), None) or next(
        (r for r in measured if r.name.startswith("optc")), None)
    width = max([8] + [len(r.name) for r in results])
    rate = f" {'GFLOP/s':>8}" if flops else ""
    lines = [f"{'system':<{width}} {'median ms':>10} {'p10':>9} {'p90':>9} {'runs':>5}{rate}  {'ratio':>8}  note"]
    for result in results:
        if not result.runs:
            dash = f" {'-':>8}" if flops else ""
            lines.append(f"{result.name:<{width}} {'-':>10} {'-':>9} {'-':>9} {0:>5}{dash}  {'-':>8}  {result.note}")
            continue
        ratio = f"{result.median_ms / reference.median_ms:.2f}x" if reference else "-"
        gflops = f" {flops / result.median_ms / 1e6:>8.1f}" if flops else ""
        lines.append(f"{result.name:<{width}} {result.median_ms:>10.3f} {result.p10_ms:>9.3f} {result.p90_ms:>9.3f} "
                     f"{result.runs:>5}{gflops}  {ratio:>8}  {result.note}")
    name = reference.name if reference else "optc"
    lines.append(f"ratio = that system's median / {name}'s median (below 1: faster than {name})")
    if flops:
        lines.append(f"GFLOP/s = the model's {flops / 1e9:.3f} GFLOP (before any pass) / median")
    return "\n".join(lines)


# peer name -> ONNX Runtime quantization method (None: the model as it is)
PEERS: dict[str, str | None] = {"ort": None, "ort-int8": "static", "ort-int8-dynamic": "dynamic", "torch": None,
                                "torch-compile": None}
RANDOM_CALIBRATION_SAMPLES = 8  # Quantize's default, so optc and ort-int8 calibrate on the same random feeds


def parse_peers(text: str | None) -> list[str]:
    """``--vs ort,ort-int8`` -> ["ort", "ort-int8"] (duplicates dropped); unknown names are an error."""
    peers = list(dict.fromkeys(peer.strip() for peer in (text or "").split(",") if peer.strip()))
    unknown = [peer for peer in peers if peer not in PEERS]
    if unknown:
        raise InputError(f"unknown peer(s) {', '.join(unknown)}; --vs takes a comma-separated list of "
                         f"{', '.join(PEERS)} ('' for none)")
    return peers


def _needs_calibration(pipeline: str) -> bool:
    """Whether a ``quant(...)`` pass of the pipeline calibrates (static int8, GPTQ)."""
    from ..passes import parse_pipeline
    from ..passes.quant import Quantize

    return any(isinstance(pass_, Quantize) and pass_.method not in ("dynamic", "rtn") for pass_ in parse_pipeline(pipeline))


def _calibrated(pipeline: str, calib: str | None) -> str | list[Any]:
    """``pipeline`` with ``--calib`` set on its quant passes (as ``optc compile --calib``); unchanged without one."""
    from ..passes import parse_pipeline
    from ..passes.quant import Quantize
    from .cli_quant import with_calibration

    has_quant = any(isinstance(pass_, Quantize) for pass_ in parse_pipeline(pipeline))
    return with_calibration(pipeline, calib if has_quant else None)


def _ort_peer(peer: str, onnx_path: str, scratch: Path, calibration: Callable[[], list[dict[str, np.ndarray]]],
              calibration_label: str, threads: int, spin: bool) -> SystemSpec:
    """The spec of an ONNX Runtime peer; the int8 ones are quantized here, once, before measuring."""
    from .ort_quant import describe, quantize_with_ort

    method = PEERS[peer]
    if method is None:
        return SystemSpec(peer, kind="ort", onnx=onnx_path, threads=threads, spin=spin, note="float")
    feeds = calibration() if method == "static" else None
    path = quantize_with_ort(onnx_path, scratch / f"{peer}.onnx", method, feeds)
    return SystemSpec(peer, kind="ort", onnx=path, threads=threads, spin=spin, note=describe(method, calibration_label))


def _calibration_feeds(graph: Any, calib: str | None) -> list[dict[str, np.ndarray]]:
    """``--calib`` as feeds, or the seeded random feeds ``quant(...)`` falls back to without it."""
    from ..passes.quant import load_calibration
    from ..passes.quant.calibrate import random_feeds

    return load_calibration(calib, graph) if calib else random_feeds(graph, RANDOM_CALIBRATION_SAMPLES)


def _peer_specs(peers: list[str], onnx_path: str | None, example: str | None, scratch: Path,
                calibration: Callable[[], list[dict[str, np.ndarray]]], calib: str | None, threads: int, spin: bool,
                say: Callable[[str], None], device: str = "cpu") -> tuple[list[SystemSpec], list[SystemResult], list[str]]:
    """Specs of the peers that can run, failed results of those that could not be built, and skip notes."""
    calibration_label = Path(calib).name if calib else f"{RANDOM_CALIBRATION_SAMPLES} random feeds"
    specs, broken, skipped = [], [], []
    for peer in peers:
        if peer in ("torch", "torch-compile"):
            if example:
                specs.append(SystemSpec(peer, kind="torch", example=example, threads=threads, spin=spin, device=device,
                                        compiled=peer == "torch-compile"))
            else:
                skipped.append(f"{peer} (needs --example: an ONNX file has no torch model)")
        elif not onnx_path:
            skipped.append(f"{peer} (no ONNX file for this model)")
        else:
            if PEERS[peer]:
                say(f"quantizing the ONNX model with onnxruntime for {peer}")
            try:
                specs.append(_ort_peer(peer, onnx_path, scratch, calibration, calibration_label, threads, spin))
            except OptcError as error:  # reported in the table; the others are still measured
                say(f"{peer}: failed: {error}")
                broken.append(SystemResult(peer, float("nan"), float("nan"), float("nan"), 0, f"failed: {error}"))
    return specs, broken, skipped


def _model_flops(artifact: Any) -> int | None:
    """The FLOPs of the model before optc's passes, from the artifact's pass report."""
    report = artifact.manifest.get("report") or {}
    flops = (report.get("before") or {}).get("flops")
    return int(flops) if flops else None


def main_from_cli(args: argparse.Namespace) -> int:
    from .. import compiler
    from ..ir.interpret import sample_inputs
    from .cli import _progress, parse_shapes

    say = _progress(False)
    peers = parse_peers(args.vs)
    calib = getattr(args, "calib", None)
    if bool(args.model) == bool(args.example):
        raise InputError("give either a MODEL (.onnx file or artifact directory) or --example NAME")
    if calib and not Path(calib).is_file():
        raise InputError(f"--calib {calib}: no such file (an .npz keyed by input name, first axis = samples)")
    threads = args.threads or os.cpu_count()
    pipelines = args.passes or [compiler.DEFAULT_PIPELINE]
    wants_onnx = any(peer.startswith("ort") for peer in peers)
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as scratch:
        onnx_path = None
        example = args.example
        artifacts = []
        compiling = not (args.model and Path(args.model).is_dir())
        calibrates = "ort-int8" in peers or (compiling and any(_needs_calibration(pipeline) for pipeline in pipelines))
        if calib and "ort-int8" not in peers and not (compiling and any("quant(" in pipeline for pipeline in pipelines)):
            raise InputError(f"--calib {calib} is given but nothing uses it: add a quant(...) pipeline with --passes "
                             "or the ort-int8 peer to --vs")
        if not calib and calibrates:
            say(f"warning: no --calib: quant passes and the ort-int8 peer calibrate on {RANDOM_CALIBRATION_SAMPLES} "
                "seeded random N(0,1) feeds; give --calib data.npz for ranges (and int8 kernels) that match real data")
        if compiling:
            builds = [_calibrated(pipeline, calib) for pipeline in pipelines]
            # --db: every pipeline also compiled with the tuning database ("optc tuned")
            variants = [(p, b, None) for p, b in zip(pipelines, builds)]
            variants += [(p, b, args.db) for p, b in zip(pipelines, builds)] if getattr(args, "db", None) else []
            labels = [p + (" tuned" if db else "") for p, _, db in variants]
        if example:
            from . import zoo
            from .cli import example_name

            example_name(example)
            module, example_inputs = zoo.build(example)
            for index, (pipeline, build, db) in enumerate(variants):
                say(f"compiling example {example} with optc ({labels[index]})")
                artifacts.append(compiler.compile(
                    module, target=args.target, passes=build, output=Path(scratch) / f"artifact{index}", db=db,
                    example_inputs=example_inputs, input_names=zoo.input_names(example),
                    output_names=zoo.output_names(example), check=False, progress=say))
            if wants_onnx:
                onnx_path = str(Path(scratch) / f"{example}.onnx")
                say("exporting the same model to ONNX for onnxruntime")
                zoo.export_onnx(example, onnx_path)
        else:
            model = Path(args.model)
            if model.is_dir():
                from ..backends.artifact import load_artifact

                artifacts.append(load_artifact(model))
                pipelines = labels = [str(artifacts[0].manifest.get("pipeline"))]
                source = Path(str(artifacts[0].manifest.get("source", "")))
                onnx_path = str(source) if source.suffix == ".onnx" and source.is_file() else None
            else:
                for index, (pipeline, build, db) in enumerate(variants):
                    say(f"compiling {model} with optc ({labels[index]})")
                    artifacts.append(compiler.compile(
                        model, target=args.target, passes=build, output=Path(scratch) / f"artifact{index}", db=db,
                        input_shapes=parse_shapes(args.shape), check=False, progress=say))
                onnx_path = str(model)
        feeds = sample_inputs(artifacts[0].graph, seed=0)
        specs = [
            SystemSpec("optc" if len(artifacts) == 1 else f"optc[{pipeline}]", kind="optc", artifact=str(artifact.path),
                       threads=threads, spin=args.spin)
            for pipeline, artifact in zip(labels, artifacts)
        ]
        calibration = functools.cache(lambda: _calibration_feeds(artifacts[0].graph, calib))
        peer_specs, broken, skipped = _peer_specs(peers, onnx_path, example, Path(scratch), calibration, calib,
                                                  threads, args.spin, say, "cuda" if args.target == "cuda" else "cpu")
        specs += peer_specs
        for note in skipped:
            say(f"skipping {note}")
        say(f"measuring {', '.join(s.name for s in specs)}: {args.warmup} warmup + {args.repeat} interleaved runs each, {threads} threads")
        results = measure(specs, feeds, args.repeat, args.warmup, progress=say)
    order = [spec.name for spec in specs if spec.kind == "optc"] + peers
    results = sorted(results + broken, key=lambda result: order.index(result.name) if result.name in order else len(order))
    calibration_text = (calib or f"random ({RANDOM_CALIBRATION_SAMPLES} seeded N(0,1) feeds)") if calibrates else None
    print(f"model: {example or args.model}  target: {args.target}  passes: {' | '.join(pipelines)}  threads: {threads}  "
          f"load avg: {os.getloadavg()[0]:.2f}  {'spin-waits: runtime defaults' if args.spin else SPIN_NOTE}")
    if calibration_text:
        print(f"calibration: {calibration_text}")
    flops = _model_flops(artifacts[0])
    print(format_table(results, flops))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": example or str(args.model), "target": args.target, "passes": pipelines, "threads": threads,
            "peers": peers, "calibration": calibration_text, "flops": flops,
            "date": time.strftime("%Y-%m-%d"), "spin": args.spin, "load_average": os.getloadavg()[0],
            "results": [asdict(r) for r in results],
        }, indent=1))
    if not any(r.name.startswith("optc") and r.runs for r in results):
        raise OptcError("optc itself could not be measured (see the message above)")
    return 0


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
