"""The arm target's standalone bundle (static aarch64 runner) under qemu-aarch64, and ``optc deploy``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.backends.aot import aarch64
from optc.backends.targets import get_target
from optc.errors import LoweringError
from optc.ir.interpret import interpret
from optc.tools import zoo
from optc.tools.cli import main
from optc.tools.mcu_report import small_cnn

TOLERANCE = 1e-4
needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                 reason="needs gcc-aarch64-linux-gnu")
needs_qemu = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                                reason="needs gcc-aarch64-linux-gnu and qemu-user")


@pytest.fixture(scope="session")
def cnn_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    output = tmp_path_factory.mktemp("arm") / "cnn"
    optc.compile(small_cnn(), target="arm", target_options={"mcpu": "cortex-a72"}, passes="", output=output)
    return output


@pytest.fixture(scope="session")
def vit_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    module, example = zoo.build("vit", size="tiny")
    output = tmp_path_factory.mktemp("arm") / "vit"
    optc.compile(module, example_inputs=example, input_names=zoo.input_names("vit"),
                 output_names=zoo.output_names("vit"), target="arm",
                 target_options={"mcpu": "cortex-a76", "mattr": "+neon,+dotprod"}, output=output)
    return output


def assert_matches_reference(artifact_path: Path, seed: int) -> None:
    artifact = optc.load_artifact(artifact_path)
    rng = np.random.default_rng(seed)
    feeds = {value.name: rng.standard_normal(value.shape).astype(value.dtype) for value in artifact.graph.inputs}
    outputs = artifact.run(feeds)
    reference = interpret(artifact.graph, feeds)
    assert outputs.keys() == reference.keys()
    for name, expected in reference.items():
        np.testing.assert_allclose(outputs[name], expected, atol=TOLERANCE, rtol=0)


def test_target_options_are_checked() -> None:
    target = get_target("arm", mcpu="cortex-a76", mattr="+neon,+dotprod")
    assert target.describe()["cflags"] == "-mcpu=cortex-a76+simd+dotprod"
    assert dict(target.tvm_target().export())["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(LoweringError, match="known: cortex-a53"):
        get_target("arm", mcpu="cortex-a99")
    with pytest.raises(LoweringError, match="unknown aarch64 features"):
        get_target("arm", mattr="+avx2")


@needs_qemu
@pytest.mark.cross
@pytest.mark.qemu
def test_cnn_runs_under_qemu_aarch64_like_the_reference(cnn_artifact: Path) -> None:
    manifest = json.loads((cnn_artifact / "manifest.json").read_text())
    assert manifest["target"]["name"] == "arm" and manifest["check"]["max_abs_error"] < TOLERANCE
    assert manifest["target"]["kernels_from"] == "llvm" and "arm/kernels_aarch64.o" in manifest["files"]
    runner = cnn_artifact / "arm" / aarch64.RUNNER
    assert runner.read_bytes()[:4] == b"\x7fELF" and runner.read_bytes()[18] == 183  # e_machine EM_AARCH64
    assert_matches_reference(cnn_artifact, seed=11)


@needs_qemu
@pytest.mark.cross
@pytest.mark.qemu
def test_c_kernels_compiled_by_gcc_match_too() -> None:
    graph = small_cnn()
    model = get_target("arm", mcpu="cortex-a53", kernels="c", library=False).compile_graph(graph)
    assert not (model.bundle / "kernels_aarch64.o").exists()
    feeds = {"image": np.random.default_rng(14).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(model.run(feeds)["logits"], interpret(graph, feeds)["logits"], atol=TOLERANCE, rtol=0)


@needs_cross
@pytest.mark.cross
def test_artifact_holds_the_tvm_runtime_library_for_aarch64(cnn_artifact: Path, vit_artifact: Path) -> None:
    # the file itself; tests/arm/test_arm_so.py runs it under qemu-aarch64
    for artifact in (cnn_artifact, vit_artifact):
        manifest = json.loads((artifact / "manifest.json").read_text())
        assert manifest["target"]["library"] == "arm/lib/model.so" and "arm/lib/model.so" in manifest["files"]
        header = (artifact / "arm" / "lib" / "model.so").read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and header[16] == 3 and header[18] == 183  # ET_DYN, EM_AARCH64


@needs_qemu
@pytest.mark.cross
@pytest.mark.qemu
def test_small_transformer_runs_under_qemu_aarch64_like_the_reference(vit_artifact: Path) -> None:
    assert_matches_reference(vit_artifact, seed=12)


@needs_qemu
@pytest.mark.cross
@pytest.mark.qemu
def test_cli_run_executes_the_bundle(cnn_artifact: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(15).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", image=image)
    assert main(["run", str(cnn_artifact), "--inputs", str(tmp_path / "in.npz"), "--save", str(tmp_path / "out.npz")]) == 0
    graph = optc.load_artifact(cnn_artifact).graph
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["logits"], interpret(graph, {"image": image})["logits"], atol=TOLERANCE, rtol=0)


@needs_qemu
@pytest.mark.qemu
def test_deploy_to_a_directory_verifies_and_self_tests(cnn_artifact: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    destination = tmp_path / "board"
    report = tmp_path / "deploy.json"
    assert main(["deploy", str(cnn_artifact), "--to", str(destination), "--qemu", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "sha256 of every file verified" in out and "qemu-aarch64 -cpu cortex-a72" in out
    assert json.loads(report.read_text())["max_abs_error"] < TOLERANCE
    # the copy is a complete artifact: it loads and runs from its new place
    assert (destination / "manifest.json").is_file() and (destination / "arm" / aarch64.RUNNER).stat().st_mode & 0o111
    assert_matches_reference(destination, seed=13)
    # deploying over a non-empty directory is refused
    assert main(["deploy", str(cnn_artifact), "--to", str(destination), "--qemu"]) != 0
    assert "not an empty directory" in capsys.readouterr().err


@needs_qemu
@pytest.mark.qemu
def test_deploy_refuses_a_tampered_bundle(cnn_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(cnn_artifact, tampered)
    weights = tampered / "arm" / "weights.c"
    weights.write_text(weights.read_text().replace("0", "1", 1))
    destination = tmp_path / "board"
    assert main(["deploy", str(tampered), "--to", str(destination), "--qemu"]) != 0
    assert "does not match its sha256" in capsys.readouterr().err
    assert not destination.exists()  # refused before anything was copied


@needs_qemu
@pytest.mark.qemu
def test_selftest_catches_a_wrong_runner(cnn_artifact: Path, tmp_path: Path) -> None:
    from optc.backends.aot.deploy import copy_artifact, run_selftest

    copied = copy_artifact(cnn_artifact, tmp_path / "board")
    expected = copied / "arm" / aarch64.SELFTEST / "expected0.bin"
    values = np.frombuffer(expected.read_bytes(), dtype=np.float32).copy()
    values[0] += 1.0
    expected.write_bytes(values.tobytes())
    model = optc.load_artifact(cnn_artifact).compiled
    result = run_selftest(copied / "arm", model.target.core, model.signature(), qemu=True)
    assert result.max_abs_error == pytest.approx(1.0, abs=1e-3)


def test_remote_destinations_are_recognised() -> None:
    from optc.backends.aot.deploy import is_remote

    assert is_remote("pi@raspberrypi:/home/pi/model") and is_remote("board:models/a")
    assert not is_remote("/tmp/board") and not is_remote("out/board")


def test_options_of_other_targets_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # checked before the model is read: the model file need not exist
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "arm", "--sram", "64", "-o", str(tmp_path / "x")]) != 0
    assert "--sram not an option of --target arm" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "cpu", "--flash", "64", "-o", str(tmp_path / "x")]) != 0
    assert "--flash not an option of --target cpu" in capsys.readouterr().err


@needs_qemu
def test_run_without_qemu_says_how_to_run_it(cnn_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optc.backends.aot.build import ToolMissingError

    model = optc.load_artifact(cnn_artifact)
    which = shutil.which
    monkeypatch.setattr(aarch64, "is_aarch64_host", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "qemu-aarch64" else which(tool))
    with pytest.raises(ToolMissingError, match="apt-get install qemu-user.*optc deploy"):
        model.run({"image": np.zeros((1, 1, 8, 8), np.float32)})


FAKE_SSH = """#!/bin/sh
# fake ssh: runs the command in $FAKE_REMOTE (the board's home), aarch64 code under qemu-aarch64
shift
cd "$FAKE_REMOTE" && exec sh -c "$(echo "$*" | sed 's#[.][.]/model_arm#qemu-aarch64 ../model_arm#')"
"""
FAKE_SCP = """#!/bin/sh
# fake scp: host:path means $FAKE_REMOTE/path
set --  $(for arg in "$@"; do case "$arg" in -*) ;; *:*) echo "$FAKE_REMOTE/${arg#*:}" ;; *) echo "$arg" ;; esac; done)
cp -rp "$@" || exit 1
if [ -n "$FAKE_CORRUPT" ]; then for dir in "$FAKE_REMOTE"/models/*/arm; do echo >> "$dir/weights.c"; done; fi
"""


@needs_qemu
@pytest.mark.qemu
def test_deploy_to_a_host_over_scp_and_ssh(cnn_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # ssh and scp replaced by local stand-ins: the scp/ssh command sequence runs, the network does not
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, script in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        (tools / name).write_text(script)
        (tools / name).chmod(0o755)
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setenv("FAKE_REMOTE", str(remote))
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    assert main(["deploy", str(cnn_artifact), "--to", "pi@board:models/cnn"]) == 0
    out = capsys.readouterr().out
    assert "sha256sum -c passed there" in out and "over ssh on pi@board" in out
    assert (remote / "models" / "cnn" / "arm" / aarch64.RUNNER).is_file()
    assert (remote / "models" / "cnn" / "SHA256SUMS").is_file()
    # a file damaged in transit is caught by sha256sum -c on the board, before the runner starts
    monkeypatch.setenv("FAKE_CORRUPT", "1")
    assert main(["deploy", str(cnn_artifact), "--to", "pi@board:models/damaged"]) != 0
    assert "sha256sum -c" in capsys.readouterr().err
    assert not (remote / "models" / "damaged" / "arm" / "selftest" / "output0.bin").exists()


@needs_qemu
@pytest.mark.qemu
def test_selftest_of_the_artifact_itself_leaves_it_unchanged(cnn_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(path.name for path in (cnn_artifact / "arm" / aarch64.SELFTEST).iterdir())
    assert main(["deploy", str(cnn_artifact), "--qemu"]) == 0
    assert "self-test of" in capsys.readouterr().out
    assert sorted(path.name for path in (cnn_artifact / "arm" / aarch64.SELFTEST).iterdir()) == before
