"""The bench harness: interleaved worker processes, failures reported, ONNX Runtime int8 peers, --calib."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optc.ir import Graph, TensorType, sample_inputs
from optc.tools.bench import SystemSpec, format_table, measure

pytestmark = pytest.mark.slow


def test_measure_reports_a_broken_peer_and_still_times_optc(tmp_path):
    import optc

    graph = Graph()
    x = graph.add_input("x", TensorType((4, 8), "float32"))
    w = graph.add_param("w", np.ones((8, 2), "float32"))
    graph.outputs = [graph.op("linalg.matmul", x, w)]
    artifact = optc.compile(graph, output=tmp_path / "art", check=False)
    specs = [
        SystemSpec("optc", artifact=str(artifact.path), threads=1),
        SystemSpec("ort", onnx=str(tmp_path / "missing.onnx"), threads=1),
    ]
    results = measure(specs, sample_inputs(graph), repeat=3, warmup=1)
    by_name = {result.name: result for result in results}
    assert by_name["optc"].runs == 3 and by_name["optc"].median_ms > 0
    assert by_name["ort"].runs == 0 and by_name["ort"].note.startswith("failed:")
    table = format_table(results)
    assert "1.00x" in table and "failed" in table and "ratio" in table
    with_rate = format_table(results, flops=2_000_000)
    optc_row = next(line for line in with_rate.splitlines() if line.startswith("optc"))
    assert f"{2e6 / by_name['optc'].median_ms / 1e6:.1f}" in optc_row and "GFLOP/s" in with_rate


# ---- ONNX Runtime int8 peers and --calib ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_resnet_onnx(tmp_path_factory):
    from optc.tools import zoo

    path = tmp_path_factory.mktemp("bench") / "resnet18-tiny.onnx"
    zoo.export_onnx("resnet18", path, size="tiny")
    return path


def _bench(*argv: str) -> int:
    from optc.tools.cli import main

    return main(["bench", *argv, "--repeat", "2", "--warmup", "1", "--threads", "1"])


def test_bench_times_ort_int8_peers_with_the_calibration_given(tiny_resnet_onnx, tmp_path, monkeypatch, capsys):
    import optc.passes.quant as quant_package
    import optc.passes.quant.quantize as quantize_module

    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=rng.standard_normal((4, 1, 3, 32, 32)).astype("float32"))
    calls = {"quant pass": [], "ort-int8": []}

    def spy(who, real):
        def load(path, graph, *args, **kwargs):
            calls[who].append(str(path))
            return real(path, graph, *args, **kwargs)
        return load

    monkeypatch.setattr(quantize_module, "load_calibration", spy("quant pass", quantize_module.load_calibration))
    monkeypatch.setattr(quant_package, "load_calibration", spy("ort-int8", quant_package.load_calibration))
    report = tmp_path / "bench.json"
    code = _bench(str(tiny_resnet_onnx), "--passes", "cleanup,fuse,quant(int8)", "--vs", "ort,ort-int8,ort-int8-dynamic",
                  "--calib", str(calib), "--json", str(report))
    table = capsys.readouterr().out
    assert code == 0
    assert calls == {"quant pass": [str(calib)], "ort-int8": [str(calib)]}  # --calib reached both quantizers
    data = json.loads(report.read_text())
    results = {result["name"]: result for result in data["results"]}
    assert list(results) == ["optc", "ort", "ort-int8", "ort-int8-dynamic"]
    for result in results.values():
        assert result["runs"] == 2 and np.isfinite(result["median_ms"]) and result["median_ms"] > 0, result
    assert "int8 QDQ static per-channel, calibrated on calib.npz" in results["ort-int8"]["note"]
    assert "int8 dynamic" in results["ort-int8-dynamic"]["note"]
    assert data["calibration"] == str(calib)
    assert "onnxruntime" in table and "int8 QDQ static" in table and "calibration: " in table


def test_bench_without_calib_warns_and_calibrates_ort_on_random_feeds(tiny_resnet_onnx, capsys):
    code = _bench(str(tiny_resnet_onnx), "--passes", "cleanup", "--vs", "ort-int8")
    captured = capsys.readouterr()
    assert code == 0
    assert "warning: no --calib" in captured.err
    assert "ort-int8" in captured.out and "calibrated on 8 random feeds" in captured.out


def test_unknown_peer_is_a_clear_error(capsys):
    from optc.errors import InputError
    from optc.tools.bench import parse_peers

    assert parse_peers(" ort-int8 ,ort,ort-int8") == ["ort-int8", "ort"]
    with pytest.raises(InputError, match="ort-int4.*ort, ort-int8, ort-int8-dynamic, torch"):
        parse_peers("ort,ort-int4")
    assert _bench("--example", "resnet18", "--vs", "tvm") != 0
    assert "unknown peer(s) tvm" in capsys.readouterr().err


def test_calib_that_nothing_uses_is_an_error(tiny_resnet_onnx, tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.zeros((1, 1, 3, 32, 32), "float32"))
    assert _bench(str(tiny_resnet_onnx), "--passes", "cleanup", "--vs", "ort", "--calib", str(calib)) != 0
    assert "nothing uses it" in capsys.readouterr().err


def test_ort_quantization_failure_says_which_model():
    from optc.tools.ort_quant import OrtQuantizationError, quantize_with_ort

    with pytest.raises(OrtQuantizationError, match="dynamic quantization of .*missing.onnx failed"):
        quantize_with_ort("missing.onnx", "out.onnx", "dynamic")
