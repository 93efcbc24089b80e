"""--target cuda: artifacts of a small CNN and a small transformer build with nvcc on any machine.

Building needs nvcc (and gcc for the stand-in driver where there is none); it does not need a GPU.
Without a GPU, running says so clearly; the numerical checks on a GPU are marked ``gpu``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from optc import compiler
from optc.backends.artifact import load_artifact
from optc.backends.targets import get_target
from optc.backends.targets.cuda import NoCudaDeviceError, fatbin_arches, gpu_present
from optc.errors import ArtifactError, LoweringError
from optc.ir.interpret import interpret, sample_inputs
from optc.tools import cli, zoo

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")

needs_gpu = pytest.mark.skipif(not gpu_present(), reason="needs a CUDA GPU")
needs_no_gpu = pytest.mark.skipif(gpu_present(), reason="checks the message on a machine without a GPU")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet18 (tiny) through the Python API for sm_90, gpt2 (tiny, from ONNX) through the CLI for sm_80."""
    root = tmp_path_factory.mktemp("cuda")
    model, inputs = zoo.build("resnet18", size="tiny")
    compiler.compile(
        model, target="cuda", target_options={"arch": "sm_90"}, example_inputs=inputs, check=False,
        input_names=zoo.input_names("resnet18"), output_names=zoo.output_names("resnet18"), output=root / "resnet18",
    )
    onnx_path = root / "gpt2.onnx"
    zoo.export_onnx("gpt2", onnx_path, size="tiny")
    command = ["compile", str(onnx_path), "--target", "cuda", "--arch", "sm_80", "-o", str(root / "gpt2"), "-q"]
    assert cli.main(command) == 0
    return {"resnet18": root / "resnet18", "gpt2": root / "gpt2"}


@pytest.mark.parametrize(("name", "arch"), [("resnet18", "sm_90"), ("gpt2", "sm_80")])
def test_artifact_holds_a_fatbin_for_the_arch(artifacts: dict[str, Path], name: str, arch: str) -> None:
    manifest = json.loads((artifacts[name] / "manifest.json").read_text())
    assert manifest["target"]["name"] == "cuda"
    assert manifest["target"]["arch"] == arch
    assert "model.so" in manifest["files"]  # hashed, so a changed library is refused at load
    # nvcc's fatbin is embedded, with machine code (cubin) for exactly the arch asked for
    assert fatbin_arches(artifacts[name] / "model.so") == [("cubin", int(arch[3:]))]

    artifact = load_artifact(artifacts[name])  # verifies hashes, loads the library with its device module
    assert artifact.compiled.target.arch == arch
    assert artifact.compiled.device_modules(), "the library has no CUDA device module"


def test_weights_stay_out_of_the_library(artifacts: dict[str, Path]) -> None:
    artifact = load_artifact(artifacts["gpt2"])
    param_bytes = sum(array.nbytes for array in artifact.graph.params.values())
    assert param_bytes > 100_000  # gpt2 tiny: the embedding table alone is 1000 x 64 floats
    # the library does not grow with the weights: main takes them as parameters
    assert (artifacts["gpt2"] / "model.so").stat().st_size < 4 * param_bytes


@needs_no_gpu
def test_run_without_gpu_says_so(artifacts: dict[str, Path]) -> None:
    artifact = load_artifact(artifacts["resnet18"])
    with pytest.raises(NoCudaDeviceError, match=r"no CUDA GPU here; the artifact was built for sm_90"):
        artifact.run(sample_inputs(artifact.graph, seed=0))


@needs_no_gpu
def test_cli_run_without_gpu_is_one_clear_line(artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(artifacts["gpt2"])]) == cli.EXIT_ERROR
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines == [
        "optc: error: no CUDA GPU here; the artifact was built for sm_80, run it on a machine with one"
    ]


def test_tampered_library_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "resnet18"
    shutil.copytree(artifacts["resnet18"], copy)
    library = bytearray((copy / "model.so").read_bytes())
    start = library.find((0xBA55ED50).to_bytes(4, "little"))
    library[start + 200] ^= 0xFF  # one byte of the device code
    (copy / "model.so").write_bytes(bytes(library))
    with pytest.raises(ArtifactError, match="model.so"):
        load_artifact(copy)


def test_arch_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LoweringError, match="unknown CUDA arch 'sm_75'; use one of sm_80, sm_86, sm_89, sm_90"):
        get_target("cuda", arch="sm_75")
    assert cli.main(["compile", "missing.onnx", "--arch", "sm_90", "-o", "/nonexistent/x", "-q"]) == cli.EXIT_ERROR
    assert "--arch is an option of --target cuda, not of --target cpu" in capsys.readouterr().err


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_gpu_run_matches_reference(artifacts: dict[str, Path], name: str) -> None:
    artifact = load_artifact(artifacts[name])
    feeds = sample_inputs(artifact.graph, seed=0)
    expected = interpret(artifact.graph, feeds)
    actual = artifact.run(feeds)
    for output, reference in expected.items():
        np.testing.assert_allclose(actual[output], reference, rtol=0, atol=1e-4, err_msg=f"{name}: {output}")
