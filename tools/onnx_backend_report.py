"""Pass rate of optc's ONNX importer on the ONNX wheel's backend test models.

    python -m optc.tools.onnx_backend_report [--compile] [--filter SUBSTR] [--json out.json]

For each of the 149 models under ``onnx/backend/test/data/{light,pytorch-converted,
pytorch-operator,simple}``: load it through the safe loader, import, verify, run the reference
interpreter and compare with the shipped expected outputs (rtol 1e-3, atol 1e-4). With
``--compile`` the graph is also compiled for the CPU target and the compiled outputs are
compared the same way. Prints one line per model and ``N passed, M failed`` with the pass rate.

``iter_backend_models`` and ``compare_outputs`` are reused by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the IR loads lazily so --help stays fast
    from ..ir.graph import Graph

RTOL = 1e-3
ATOL = 1e-4
SUITES = ("light", "pytorch-converted", "pytorch-operator", "simple")


@dataclass(frozen=True)
class BackendCase:
    """One backend test model: where it is, the feeds to give it and the outputs to expect."""

    name: str
    suite: str
    path: Path
    feeds: dict[str, np.ndarray]
    expected: list[np.ndarray]


@dataclass(frozen=True)
class CaseResult:
    name: str
    suite: str
    passed: bool
    reason: str
    seconds: float


def backend_data_dir() -> Path:
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"


def _read_proto_array(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _read_named_tensor(path: Path) -> tuple[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return tensor.name, numpy_helper.to_array(tensor)


def _runtime_inputs(model_path: Path) -> list[tuple[str, list[int], int]]:
    """(name, declared dims, element type) of every graph input that is not an initializer."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [dim.dim_value for dim in tensor_type.shape.dim]
        inputs.append((value.name, dims, tensor_type.elem_type))
    return inputs


def _light_case(model_path: Path) -> BackendCase:
    """light_X.onnx: the input is arange(n)/n over the declared shape; light_X_output_0.pb is expected."""
    name = model_path.stem
    feeds = {}
    for input_name, dims, _ in _runtime_inputs(model_path):
        count = int(np.prod(dims))
        feeds[input_name] = (np.arange(count).reshape(dims) / count).astype(np.float32)
    expected = [_read_proto_array(model_path.with_name(f"{name}_output_0.pb"))]
    return BackendCase(name, "light", model_path, feeds, expected)


def _data_set_case(directory: Path, suite: str) -> BackendCase:
    model_path = directory / "model.onnx"
    data = directory / "test_data_set_0"
    input_names = [name for name, _, _ in _runtime_inputs(model_path)]
    feeds = {}
    for index in range(len(list(data.glob("input_*.pb")))):
        tensor_name, array = _read_named_tensor(data / f"input_{index}.pb")
        feeds[tensor_name or input_names[index]] = array
    expected = [_read_proto_array(data / f"output_{index}.pb") for index in range(len(list(data.glob("output_*.pb"))))]
    return BackendCase(directory.name, suite, model_path, feeds, expected)


def iter_backend_models(name_filter: str | None = None, suites: Sequence[str] = SUITES) -> Iterator[BackendCase]:
    """Every backend test model, in a stable order, with its feeds and expected outputs."""
    root = backend_data_dir()
    for suite in suites:
        folder = root / suite
        if suite == "light":
            paths = sorted(folder.glob("*.onnx"))
            names = [path.stem for path in paths]
        else:
            paths = sorted(path for path in folder.iterdir() if (path / "model.onnx").is_file())
            names = [path.name for path in paths]
        for path, name in zip(paths, names):
            if name_filter and name_filter not in name:
                continue
            yield _light_case(path) if suite == "light" else _data_set_case(path, suite)


def compare_outputs(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float = RTOL, atol: float = ATOL
) -> str | None:
    """None when every output matches; otherwise why the first mismatch fails."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for index, (got, want) in enumerate(zip(actual, expected)):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            return f"output {index}: shape {got.shape}, expected {want.shape}"
        if want.dtype.kind in "fc":
            if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
                error = np.abs(got.astype(np.float64) - want.astype(np.float64))
                return f"output {index}: max abs error {np.nanmax(error):.3g} (rtol {rtol}, atol {atol})"
        elif not np.array_equal(got, want):
            return f"output {index}: {int(np.sum(got != want))} of {want.size} elements differ"
    return None


def _compile_and_run(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Compile ``graph`` for the CPU target and run it; the one place that touches the backend."""
    from ..backends import compile_graph

    return compile_graph(graph, target="cpu").run(dict(feeds))


def backend_available() -> str | None:
    """None when ``--compile`` can work, else why not."""
    try:
        from ..backends import compile_graph  # noqa: F401
    except Exception as error:  # ImportError, or TVM failing to load
        return f"{type(error).__name__}: {error}"
    return None


def import_case(case: BackendCase) -> tuple[Graph, dict[str, np.ndarray], list[str]]:
    """Import a case with its input shapes bound to the feeds: (graph, feeds left, frozen inputs).

    Some models take a shape or split sizes as an input; optc's graphs have static shapes, so when
    the plain import fails these integer inputs are given to the importer as constants and leave
    the feeds (the way TVM's importer freezes params).
    """
    from ..errors import UnsupportedOpError
    from ..frontends.onnx import load_onnx

    shapes = {name: tuple(array.shape) for name, array in case.feeds.items() if array.dtype.kind != "O"}
    try:
        return load_onnx(case.path, input_shapes=shapes), dict(case.feeds), []
    except UnsupportedOpError as error:
        integers = {name: array for name, array in case.feeds.items() if array.dtype.kind in "iu"}
        if "constant_inputs" not in str(error) or not integers:
            raise
    rest = {name: array for name, array in case.feeds.items() if name not in integers}
    graph = load_onnx(case.path, input_shapes={name: shapes[name] for name in rest}, constant_inputs=integers)
    return graph, rest, sorted(integers)


def run_case(case: BackendCase, compile: bool = False) -> CaseResult:  # noqa: A002 - mirrors the CLI flag
    """Import, verify, interpret (and optionally compile) one model; never raises."""
    from ..errors import OptcError
    from ..ir.interpret import interpret
    from ..ir.verify import verify

    start = time.perf_counter()

    def result(passed: bool, reason: str) -> CaseResult:
        return CaseResult(case.name, case.suite, passed, reason, time.perf_counter() - start)

    stage = "import"
    try:
        graph, feeds, frozen = import_case(case)
        note = f" (inputs given as constants: {', '.join(frozen)})" if frozen else ""
        stage = "verify"
        verify(graph)
        stage = "interpret"
        with np.errstate(all="ignore"):  # the models feed sqrt/pow values outside their domain on purpose
            outputs = interpret(graph, feeds)
        mismatch = compare_outputs([outputs[value.name] for value in graph.outputs], case.expected)
        if mismatch:
            return result(False, f"reference: {mismatch}")
        if compile:
            stage = "compile"
            compiled = _compile_and_run(graph, feeds)
            mismatch = compare_outputs([compiled[value.name] for value in graph.outputs], case.expected)
            if mismatch:
                return result(False, f"compiled: {mismatch}")
    except OptcError as error:
        return result(False, f"{stage}: {type(error).__name__}: {error}")
    except Exception as error:  # a bug in optc: report it and go on with the next model
        return result(False, f"{stage}: BUG {type(error).__name__}: {error}")
    return result(True, ("compiled and reference match" if compile else "reference matches") + note)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.onnx_backend_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile", action="store_true", help="also compile for the CPU target and compare")
    parser.add_argument("--filter", default=None, metavar="SUBSTR", help="only models whose name contains SUBSTR")
    parser.add_argument("--json", default=None, metavar="OUT", help="write per-model results to this JSON file")
    args = parser.parse_args(argv)

    if args.compile:
        problem = backend_available()
        if problem:
            print(
                "--compile needs the CPU backend (optc.backends.compile_graph), which cannot be imported: "
                f"{problem}. Run without --compile to check the importer alone.",
                file=sys.stderr,
            )
            return 2

    results: list[CaseResult] = []
    for case in iter_backend_models(args.filter):
        outcome = run_case(case, compile=args.compile)
        results.append(outcome)
        status = "PASS" if outcome.passed else "FAIL"
        reason = " ".join(outcome.reason.split())
        print(f"{status} {outcome.suite}/{outcome.name} ({outcome.seconds:.2f}s): {reason[:300]}", flush=True)

    passed = sum(outcome.passed for outcome in results)
    failed = len(results) - passed
    rate = 100.0 * passed / len(results) if results else 0.0
    print(f"{passed} passed, {failed} failed ({rate:.1f}% of {len(results)})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"passed": passed, "failed": failed, "results": [asdict(outcome) for outcome in results]}, indent=2
        ))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
