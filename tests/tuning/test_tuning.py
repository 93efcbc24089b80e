"""``optc tune`` and ``optc compile --db``: a MetaSchedule database round trip on one small convolution.

One session-scoped tuning run (2 trials per kernel, ~25 s: MetaSchedule's first start imports
TVM's tensor intrinsics) feeds every test: the compiled output with the database matches the
reference interpreter, the tuned kernel is the one compiled, the artifact keeps the database
files with their hashes, and a second run with the same directory tunes nothing.

Two trials do not beat optc's default conv schedule, which tuning measures too (in isolation, and
inside the compiled model at the end of 'optc tune'); so the round trip uses a copy of the
database whose recorded default times are made slow, which is what a real tuning budget produces
on big kernels.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("xgboost")
pytest.importorskip("tornado")
pytest.importorskip("psutil")

from optc.tools import cli  # noqa: E402

TRIALS = 2
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
TUNED_CONV = "fused_conv2d_add_relu"


def tiny_conv_onnx(path: Path) -> Path:
    """Conv 4->8 channels, 3x3, pad 1, bias, ReLU on a 1x4x8x8 input (seeded weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
    bias = (rng.standard_normal(8) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(model, database directory, what 'optc tune' printed) after one tuning run."""
    root = tmp_path_factory.mktemp("tuning")
    model = tiny_conv_onnx(root / "conv.onnx")
    database = root / "db"
    output = _run_cli(["tune", str(model), "--trials", str(TRIALS), "--db", str(database), "-q"])
    return model, database, output


def _run_cli(argv: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    assert code == 0, buffer.getvalue()
    return buffer.getvalue()


def test_tune_writes_a_database_of_files(tuned: tuple[Path, Path, str]) -> None:
    _, database, output = tuned
    records = (database / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= TRIALS  # the conv's candidates (plus the bias reshape's)
    assert (database / "database_workload.json").stat().st_size > 0
    assert TUNED_CONV in output and f"{TRIALS} trials" in output


def _database_where_tuning_won(database: Path, destination: Path) -> Path:
    """A copy of ``database`` whose recorded default-schedule times are all slower than any candidate."""
    return _database_with_times(database, destination, default_ms=1e6, model_times=None)


def _database_with_times(database: Path, destination: Path, default_ms: float,
                         model_times: tuple[float, float] | None) -> Path:
    """A copy of ``database`` whose state gives every kernel the isolated ``default_ms`` and the in-model
    ``model_times`` (default, tuned; None: no in-model times)."""
    import json
    import shutil

    shutil.copytree(database, destination, ignore=shutil.ignore_patterns("logs"))
    state_path = destination / "optc_tuning_state.json"
    state = json.loads(state_path.read_text())
    for entry in state.values():
        entry["default_ms"] = default_ms
        entry.pop("model_default_ms", None)
        entry.pop("model_tuned_ms", None)
        if model_times is not None:
            entry["model_default_ms"], entry["model_tuned_ms"] = model_times
    state_path.write_text(json.dumps(state))
    return destination


def _fused_tiny_conv(model: Path):
    from optc import compiler
    from optc.backends import get_target
    from optc.backends.lower import lower_graph
    from optc.backends.tuning import fuse_for_tuning
    from optc.passes import PassManager

    graph = compiler.load(model)
    PassManager(compiler.DEFAULT_PIPELINE, verify=True, check_numerics=False).run(graph)
    target = get_target("cpu").tvm_target()
    return fuse_for_tuning(lower_graph(graph), target), target


def test_tune_times_the_tuned_kernels_inside_the_model(tuned: tuple[Path, Path, str]) -> None:
    """The end of 'optc tune' times each tuned kernel in the compiled model, default vs tuned, into the state."""
    import json

    _, database, output = tuned
    state = json.loads((database / "optc_tuning_state.json").read_text())
    conv = [entry for entry in state.values() if entry.get("task") == TUNED_CONV]
    assert len(conv) == 1
    assert conv[0]["model_default_ms"] > 0 and conv[0]["model_tuned_ms"] > 0
    assert f"{TUNED_CONV} " in output and "in model: default" in output
    summary = [line for line in output.splitlines() if line.startswith("in-model:")]
    assert summary and "default-only vs" in summary[0], output


@pytest.mark.parametrize(("default_ms", "model_times", "uses_tuned"), [
    (1e6, (1.0, 2.0), False),   # isolated: tuned faster; in the model the default is: default kept
    (0.0, (2.0, 1.0), True),    # isolated: default faster; in the model the tuned one is: tuned used
    (1e6, (1.0, 0.99), False),  # tuned 1% faster in the model: within the noise margin, default kept
])
def test_in_model_times_decide_which_schedule_is_compiled(tuned: tuple[Path, Path, str], tmp_path: Path,
                                                          default_ms: float, model_times: tuple[float, float],
                                                          uses_tuned: bool) -> None:
    from optc.backends.tuning import ApplyTuningDatabase

    model, measured_database, _ = tuned
    database = _database_with_times(measured_database, tmp_path / "db", default_ms, model_times)
    fused, target = _fused_tiny_conv(model)
    apply = ApplyTuningDatabase(database)
    with target:
        apply(fused)
    assert TUNED_CONV in apply.by_model_times
    assert (TUNED_CONV in apply.applied) == uses_tuned
    assert (TUNED_CONV in apply.kept_default) != uses_tuned


def test_compile_with_kernels_chosen_in_the_model_matches_the_reference(tuned: tuple[Path, Path, str],
                                                                        tmp_path: Path) -> None:
    from optc import compiler
    from optc.ir.interpret import interpret, sample_inputs

    model, measured_database, _ = tuned
    for name, model_times in (("tuned", (2.0, 1.0)), ("default", (1.0, 2.0))):
        database = _database_with_times(measured_database, tmp_path / name, 0.0, model_times)
        artifact = compiler.compile(str(model), db=str(database), check=False)
        feeds = sample_inputs(artifact.graph, seed=1)
        expected = interpret(artifact.graph, feeds)
        actual = artifact.run(feeds)
        for output, value in expected.items():
            np.testing.assert_allclose(actual[output], value, **TOLERANCE)


def test_compile_with_db_in_a_fresh_process_applies_the_tuned_kernel(tuned: tuple[Path, Path, str], tmp_path: Path) -> None:
    from optc.backends.artifact import load_artifact, sha256_of
    from optc.ir.interpret import interpret, sample_inputs

    model, measured_database, _ = tuned
    database = _database_where_tuning_won(measured_database, tmp_path / "db")
    artifact_dir = tmp_path / "artifact"
    result = subprocess.run(
        [sys.executable, "-m", "optc.tools.cli", "--debug", "compile", str(model), "--db", str(database),
         "-o", str(artifact_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TVM_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    applied = [line for line in result.stderr.splitlines() if "tuned kernel(s) applied" in line]
    assert applied and TUNED_CONV in applied[0], result.stderr[-2000:]

    artifact = load_artifact(artifact_dir)
    feeds = sample_inputs(artifact.graph, seed=0)
    expected = interpret(artifact.graph, feeds)
    actual = artifact.run(feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, **TOLERANCE)
    files = artifact.manifest["files"]
    for name in ("database_workload.json", "database_tuning_record.json"):
        assert files[f"tuning/{name}"]["sha256"] == sha256_of(database / name)
    assert artifact.manifest["target"]["tuning_db"] == str(database)


def test_tuned_kernels_replace_only_what_the_database_has(tuned: tuple[Path, Path, str], tmp_path: Path) -> None:
    """The conv gets MetaSchedule's schedule; a kernel the database lacks is left to optc's schedules."""
    from optc import compiler
    from optc.backends import get_target
    from optc.backends.lower import lower_graph
    from optc.backends.tuning import ApplyTuningDatabase, fuse_for_tuning
    from optc.passes import PassManager

    model, measured_database, _ = tuned
    graph = compiler.load(model)
    PassManager(compiler.DEFAULT_PIPELINE, verify=True, check_numerics=False).run(graph)
    target = get_target("cpu").tvm_target()
    fused = fuse_for_tuning(lower_graph(graph), target)
    apply = ApplyTuningDatabase(_database_where_tuning_won(measured_database, tmp_path / "db"))
    with target:
        apply(fused)
    assert TUNED_CONV in apply.applied

    empty = tmp_path / "empty-db"
    from optc.backends.tuning import open_database

    open_database(empty)
    nothing = ApplyTuningDatabase(empty)
    with target:
        nothing(fused)
    assert nothing.applied == []


def test_default_schedule_is_kept_where_it_measured_faster(tuned: tuple[Path, Path, str]) -> None:
    """Tuning measures optc's default schedule of every kernel; the database only wins where it is faster."""
    import json

    from optc import compiler
    from optc.backends import get_target
    from optc.backends.lower import lower_graph
    from optc.backends.tuning import ApplyTuningDatabase, fuse_for_tuning
    from optc.passes import PassManager

    model, database, _ = tuned
    state = json.loads((database / "optc_tuning_state.json").read_text())
    defaults = {entry["task"]: entry["default_ms"] for entry in state.values()}
    assert TUNED_CONV in defaults and defaults[TUNED_CONV] > 0
    graph = compiler.load(model)
    PassManager(compiler.DEFAULT_PIPELINE, verify=True, check_numerics=False).run(graph)
    target = get_target("cpu").tvm_target()
    apply = ApplyTuningDatabase(database)
    with target:
        apply(fuse_for_tuning(lower_graph(graph), target))
    assert sorted(apply.applied + apply.kept_default) == sorted(defaults)  # every kernel decided one way


def test_second_run_with_the_same_database_skips_finished_work(tuned: tuple[Path, Path, str]) -> None:
    model, database, _ = tuned
    records = database / "database_tuning_record.json"
    before = hashlib.sha256(records.read_bytes()).hexdigest()
    output = _run_cli(["tune", str(model), "--trials", str(TRIALS), "--db", str(database), "-q"])
    assert "0 trials run" in output and "skipped" in output
    assert hashlib.sha256(records.read_bytes()).hexdigest() == before
    assert "in-model:" in output  # an already tuned database is validated in the model again


def test_more_trials_drop_the_in_model_times_of_that_kernel(tmp_path: Path) -> None:
    """In-model times judged the old best candidate: a task that gets more trials must be validated again."""
    import json

    from optc.backends.tuning import STATE_FILE, _forget_model_times

    state = {"1": {"task": "a", "trials": 2, "default_ms": 0.5, "model_default_ms": 0.4, "model_tuned_ms": 0.3},
             "2": {"task": "b", "trials": 2, "model_default_ms": 0.4, "model_tuned_ms": 0.3}}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    _forget_model_times(tmp_path, {"1"})
    after = json.loads((tmp_path / STATE_FILE).read_text())
    assert after["1"] == {"task": "a", "trials": 2, "default_ms": 0.5}
    assert after["2"] == state["2"]


def test_compile_db_refuses_a_directory_without_a_database(tuned: tuple[Path, Path, str], tmp_path: Path) -> None:
    model, _, _ = tuned
    code = cli.main(["compile", str(model), "--db", str(tmp_path / "nowhere"), "-o", str(tmp_path / "a"), "-q"])
    assert code == cli.EXIT_ERROR


def test_rpc_address_must_name_host_and_port() -> None:
    from optc.backends.tuning import RpcSettings, TuningError

    assert RpcSettings.parse("127.0.0.1:9190", "cpu") == RpcSettings("127.0.0.1", 9190, "cpu")
    with pytest.raises(TuningError, match="HOST:PORT"):
        RpcSettings.parse("9190", "cpu")
    with pytest.raises(TuningError, match="--key"):
        RpcSettings.parse("127.0.0.1:9190", "")


@pytest.mark.slow
def test_rpc_tuning_through_a_loopback_tracker_and_server(tuned: tuple[Path, Path, str], tmp_path: Path) -> None:
    """--rpc/--key: candidates run on an RPC server the tracker lends (both on 127.0.0.1); ~40-70 s."""
    from tvm.rpc import server as rpc_server
    from tvm.rpc import tracker as rpc_tracker

    from optc.backends.tuning import open_database

    model, _, _ = tuned
    database = tmp_path / "rpc-db"
    tracker = rpc_tracker.Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc_server.Server("127.0.0.1", port=9300, port_end=9400, key="optc-loopback",
                               tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:  # its own process: MetaSchedule's logging setup trips over pytest's log capture on a second run
        result = subprocess.run(
            [sys.executable, "-m", "optc.tools.cli", "tune", str(model), "--trials", "1", "--db", str(database), "-q",
             "--rpc", f"127.0.0.1:{tracker.port}", "--key", "optc-loopback"],
            capture_output=True, text=True, timeout=400)
    finally:
        server.terminate()
        tracker.terminate()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in-model validation skipped: --rpc" in result.stdout  # the model runs here, the candidates ran there
    records = open_database(database, create=False).get_all_tuning_records()
    measured = [record for record in records if record.run_secs and all(float(t) < 1e9 for t in record.run_secs)]
    assert measured, "no candidate was measured through the RPC server"
