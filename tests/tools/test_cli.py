"""The `optc` command as a user meets it: compile, run, inspect, and every way input can be bad."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.tools.cli import main

pytestmark = pytest.mark.slow  # compiles with TVM


def small_onnx_model(path: Path, op_type: str = "Relu", domain: str = "") -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, 64)).astype("float32"), "fc")
    fcb = numpy_helper.from_array(rng.standard_normal(10).astype("float32"), "fcb")
    shape = numpy_helper.from_array(np.array([1, -1], "int64"), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(op_type, ["c"], ["r"], name="act", domain=domain),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc, fcb, shape],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return small_onnx_model(tmp_path_factory.mktemp("model") / "small.onnx")


@pytest.fixture(scope="module")
def artifact(model_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "small"
    assert main(["compile", str(model_file), "--target", "cpu", "-o", str(out), "-q"]) == 0
    return out


def ort_reference(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_compile_writes_a_complete_artifact(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format"] == "optc-artifact" and manifest["target"]["name"] == "cpu"
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert manifest["outputs"][0]["name"] == "y"
    assert set(manifest["files"]) >= {"graph.json", "graph.safetensors"}
    assert any(name.endswith(".so") for name in manifest["files"])
    assert manifest["check"]["max_abs_error"] < 1e-4
    assert manifest["pipeline"] == "cleanup,fuse"
    assert [row["name"] for row in manifest["report"]["passes"]] == ["cleanup", "fuse"]
    assert manifest["report"]["passes"][1]["rules"]  # the explain stats travel with the artifact
    assert "apache-tvm" in manifest["tools"]
    assert not list(artifact.parent.glob(".*staging*"))


def test_run_matches_onnxruntime(artifact, model_file, tmp_path, capsys):
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(artifact), "--inputs", str(tmp_path / "in.npz"), "--save", str(tmp_path / "out.npz")]) == 0
    assert "y: float32[1, 10]" in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["y"], ort_reference(model_file, x), rtol=1e-3, atol=1e-4)


def test_run_without_inputs_uses_seeded_random(artifact, capsys):
    assert main(["run", str(artifact)]) == 0
    first = capsys.readouterr().out
    assert "seeded random inputs" in first
    assert main(["run", str(artifact)]) == 0
    assert first.splitlines()[-1] == capsys.readouterr().out.splitlines()[-1]


def test_run_with_threads_sets_the_runtime_threads_and_gives_the_same_output(artifact, capsys, monkeypatch):
    for variable in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.setenv(variable, "2")  # restored after the test; main overwrites it
    assert main(["run", str(artifact)]) == 0
    default = capsys.readouterr().out.splitlines()[-1]
    assert main(["run", str(artifact), "--threads", "1"]) == 0
    assert os.environ["TVM_NUM_THREADS"] == "1"
    assert capsys.readouterr().out.splitlines()[-1] == default
    assert main(["run", str(artifact), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_inspect_model_and_artifact(model_file, artifact, capsys):
    assert main(["inspect", str(model_file)]) == 0
    text = capsys.readouterr().out
    assert "nn.conv" in text and "x: float32[1, 3, 8, 8]" in text and "FLOPs" in text
    assert main(["inspect", str(artifact)]) == 0
    text = capsys.readouterr().out
    assert "sha256" in text and "report:" in text and "cleanup" in text


def error_of(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("optc: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.err  # progress lines may come before
    assert "Traceback" not in captured.err
    return errors[0].lower()


def test_missing_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert "no such file" in error_of(["compile", str(tmp_path / "nope.onnx"), "-o", str(out)], capsys)
    assert not out.exists()


def test_garbage_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx model at all" * 10)
    out = tmp_path / "out"
    message = error_of(["compile", str(bad), "-o", str(out)], capsys)
    assert "bad.onnx" in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_unsupported_op_lists_every_type(tmp_path, capsys):
    model = small_onnx_model(tmp_path / "custom.onnx", op_type="MysteryOp", domain="com.example")
    out = tmp_path / "out"
    message = error_of(["compile", str(model), "-o", str(out)], capsys)
    assert "mysteryop" in message
    assert not out.exists()


def test_wrong_input_shape_in_run(artifact, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 4, 4), "float32"))
    message = error_of(["run", str(artifact), "--inputs", str(tmp_path / "in.npz")], capsys)
    assert "x" in message and "[1, 3, 8, 8]" in message


def test_wrong_input_name_in_run(artifact, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 3, 8, 8), "float32"))
    assert "missing ['x']" in error_of(["run", str(artifact), "--inputs", str(tmp_path / "in.npz")], capsys)


def test_tampered_artifact_is_refused(artifact, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    library = next(p for p in copy.iterdir() if p.suffix == ".so")
    library.write_bytes(library.read_bytes() + b"\x00")
    assert "sha256" in error_of(["run", str(copy)], capsys)
    shutil.rmtree(copy)
    shutil.copytree(artifact, copy)
    weights = copy / "graph.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "graph.safetensors" in error_of(["run", str(copy)], capsys)


def test_other_format_version_is_refused(artifact, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "format 99" in error_of(["run", str(copy)], capsys)


def test_output_over_a_user_file_is_refused(model_file, tmp_path, capsys):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert "not an optc artifact" in error_of(["compile", str(model_file), "-o", str(target)], capsys)
    assert (target / "notes.txt").read_text() == "keep me"


def test_recompiling_replaces_an_artifact(model_file, tmp_path):
    out = tmp_path / "art"
    assert main(["compile", str(model_file), "-o", str(out), "-q", "--no-check"]) == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    assert main(["compile", str(model_file), "-o", str(out), "-q", "--no-check"]) == 0
    assert (out / "manifest.json").exists() and first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_console_script_reports_errors_in_one_line(tmp_path):
    optc = Path(sys.executable).with_name("optc")
    command = [str(optc)] if optc.exists() else [sys.executable, "-m", "optc.tools.cli"]
    result = subprocess.run(command + ["run", str(tmp_path)], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("optc: error:") and "not an optc artifact" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_explain_says_what_fused_and_why_not(model_file, tmp_path, capsys):
    assert main(["compile", str(model_file), "-o", str(tmp_path / "art"), "--explain", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "rewrite rules" in out
    assert "fuse_epilogues.conv_relu_to_conv" in out and "fired 1" in out  # conv -> relu fused
    assert "fuse_epilogues.matmul_to_linear" in out


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86-64 levels")
def test_cpu_builds_for_the_level_and_features_given(model_file, tmp_path, capsys):
    """--mcpu/--mattr pick the CPU a cpu artifact is built for ('' = no features beyond the level);
    an unknown CPU is refused with a name that works."""
    out = tmp_path / "portable"
    assert main(["compile", str(model_file), "--target", "cpu", "--mcpu", "x86-64-v3", "--mattr", "", "-o", str(out),
                 "-q"]) == 0
    target = json.loads((out / "manifest.json").read_text())["target"]
    assert target["mcpu"] == "x86-64-v3" and target["mattr"] == []
    assert main(["compile", str(model_file), "--target", "cpu", "--mcpu", "cortex-a72", "-o", str(tmp_path / "bad"),
                 "-q"]) != 0
    assert "LLVM does not know the CPU 'cortex-a72'" in capsys.readouterr().err
