"""The arm target's TVM-runtime form (``arm/lib/model.so``) run under qemu-aarch64 with TVM's aarch64 runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.backends.aot import arm_so
from optc.backends.aot.build import ToolMissingError
from optc.ir.interpret import interpret
from optc.tools import fetch_arm_runtime, zoo
from optc.tools.cli import main
from optc.tools.mcu_report import small_cnn

TOLERANCE = 1e-4
TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64")


def skip_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user)"
    if arm_so.missing_libraries(arm_so.runtime_directory()):
        return f"TVM's aarch64 runtime is not fetched: run '{arm_so.FETCH_COMMAND}'"
    return None


needs_runtime = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def compile_or_skip(output: Path, model: object, **options: object) -> Path:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    optc.compile(model, output=output, target="arm", **options)
    return output


@pytest.fixture(scope="session")
def cnn_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_or_skip(tmp_path_factory.mktemp("arm_so") / "cnn", small_cnn(),
                           target_options={"mcpu": "cortex-a72"}, passes="")


@pytest.fixture(scope="session")
def vit_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module, example = zoo.build("vit", size="tiny")
    return compile_or_skip(tmp_path_factory.mktemp("arm_so") / "vit", module, example_inputs=example,
                           input_names=zoo.input_names("vit"), output_names=zoo.output_names("vit"),
                           target_options={"mcpu": "cortex-a76", "mattr": "+neon,+dotprod"})


def assert_library_matches_reference(artifact_path: Path, seed: int) -> None:
    artifact = optc.load_artifact(artifact_path)
    rng = np.random.default_rng(seed)
    feeds = {value.name: rng.standard_normal(value.shape).astype(value.dtype) for value in artifact.graph.inputs}
    outputs = artifact.compiled.run(feeds, form="so")
    reference = interpret(artifact.graph, feeds)
    assert outputs.keys() == reference.keys()
    for name, expected in reference.items():
        assert outputs[name].shape == expected.shape
        np.testing.assert_allclose(outputs[name], expected, atol=TOLERANCE, rtol=0)


@needs_runtime
@pytest.mark.cross
@pytest.mark.qemu
def test_cnn_library_runs_under_qemu_aarch64_like_the_reference(cnn_so: Path) -> None:
    assert (cnn_so / "arm" / "lib" / arm_so.LOADER_FILE).read_text() == arm_so.LOADER_SOURCE  # rebuildable on a board
    assert_library_matches_reference(cnn_so, seed=21)


@needs_runtime
@pytest.mark.cross
@pytest.mark.qemu
def test_small_transformer_library_runs_under_qemu_aarch64_like_the_reference(vit_so: Path) -> None:
    assert_library_matches_reference(vit_so, seed=22)


@needs_runtime
@pytest.mark.cross
@pytest.mark.qemu
def test_cli_run_form_so(cnn_so: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.random.default_rng(23).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image=image)
    assert main(["run", str(cnn_so), "--form", "so", "--inputs", str(tmp_path / "in.npz"),
                 "--save", str(tmp_path / "out.npz")]) == 0
    graph = optc.load_artifact(cnn_so).graph
    with np.load(tmp_path / "out.npz") as saved:
        expected = interpret(graph, {"image": image})["logits"]
        np.testing.assert_allclose(saved["logits"], expected, atol=TOLERANCE, rtol=0)
    capsys.readouterr()


@needs_runtime
@pytest.mark.cross
@pytest.mark.qemu
def test_a_library_given_wrong_arguments_fails_loudly(cnn_so: Path) -> None:
    from optc.errors import LoweringError

    model = optc.load_artifact(cnn_so).compiled
    image = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(LoweringError, match="model_so_loader failed"):
        arm_so.run_library(model.bundle / "lib" / "model.so", [image], model.signature(), model.target.core)


def test_missing_runtime_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match="python -m optc.tools.fetch_arm_runtime"):
        arm_so.require_runtime(tmp_path / "empty")


def test_runtime_directory_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(arm_so.RUNTIME_ENV, str(tmp_path / "rt"))
    assert arm_so.runtime_directory() == tmp_path / "rt"
    monkeypatch.delenv(arm_so.RUNTIME_ENV)
    assert arm_so.runtime_directory() == Path.home() / ".cache" / "optc" / "aarch64-runtime"


def test_fetch_is_idempotent_and_extracts_the_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # stand-in wheels instead of PyPI: fetch extracts exactly the two runtime libraries
    import zipfile

    def fake_download(pins: list[str], destination: Path) -> list[Path]:
        wheels = []
        for distribution, member in fetch_arm_runtime.MEMBERS.items():
            wheel = destination / f"{distribution.replace('-', '_')}-1.0-py3-none-manylinux_2_28_aarch64.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr(member, f"library of {distribution}")
                archive.writestr("other/file.py", "")
            wheels.append(wheel)
        return wheels

    monkeypatch.setattr(fetch_arm_runtime, "download", fake_download)
    directory = fetch_arm_runtime.fetch(tmp_path / "rt")
    assert sorted(path.name for path in directory.iterdir()) == ["VERSIONS", "libtvm_ffi.so", "libtvm_runtime.so"]
    assert (directory / "libtvm_runtime.so").read_text() == "library of apache-tvm"
    assert arm_so.require_runtime(directory) == directory

    def no_download(pins: list[str], destination: Path) -> list[Path]:
        raise AssertionError("the libraries are there: nothing should be downloaded")

    monkeypatch.setattr(fetch_arm_runtime, "download", no_download)
    assert fetch_arm_runtime.fetch(directory) == directory
