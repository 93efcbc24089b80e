"""Deploying an artifact's bundle: copy it with its manifest, verify the hashes there, self-test.

    copied = copy_artifact(Path("out/a"), Path("/mnt/board/model"))    # refuses a modified source
    result = run_selftest(copied / "arm", ArmCore("cortex-a72"), signature, qemu=True)
    result.max_abs_error                                                 # vs the reference outputs

A remote destination ``user@host:DIR`` goes over ``scp``/``ssh`` (``deploy_remote``): the files
are copied with a ``SHA256SUMS`` file that ``sha256sum -c`` checks on the board before the
runner starts; the runner's outputs are fetched back and compared here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, OptcError
from ..artifact import MANIFEST, read_manifest
from . import aarch64
from .build import _read_outputs, require

REMOTE = re.compile(r"^(?P<host>[^/:\s]+@[^/:\s]+|[^/:\s]+):(?P<path>.+)$")
SUMS = "SHA256SUMS"


class DeployError(OptcError):
    """Copying a bundle to its destination or its self-test there failed."""


@dataclass(frozen=True)
class SelftestResult:
    outputs: list[np.ndarray]
    max_abs_error: float
    command: list[str]
    log: str


def is_remote(destination: str) -> bool:
    """``user@host:DIR`` or ``host:DIR`` (a local path with a colon needs ``./`` in front)."""
    return REMOTE.match(destination) is not None and not Path(destination).exists()


def copy_artifact(source: Path, destination: Path) -> Path:
    """Copy the manifest and every file it lists into ``destination`` (new or empty), then verify
    the copies' sha256 against the manifest. The source is verified first: a modified artifact is
    refused before anything is copied."""
    manifest = read_manifest(source)
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise DeployError(f"{destination} exists and is not an empty directory; choose a new or empty one")
    destination.mkdir(parents=True, exist_ok=True)
    for name in [*manifest["files"], MANIFEST]:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(source) / name, target)  # keeps the runner's executable bit
    try:
        read_manifest(destination)
    except ArtifactError as error:
        raise DeployError(f"the copy in {destination} does not match the manifest: {error}") from error
    return destination


def run_selftest(bundle: Path, core: aarch64.ArmCore, signature: Sequence[tuple[tuple[int, ...], str]], *,
                 qemu: bool, in_place: bool = True) -> SelftestResult:
    """Run ``model_arm`` on ``bundle/selftest``'s stored inputs and compare with ``expected<i>.bin``.

    ``in_place`` runs it in ``selftest/`` (a deployed copy); otherwise in a scratch copy of it, so
    that an artifact's own directory gets no output files."""
    selftest = Path(bundle) / aarch64.SELFTEST
    command = aarch64.runner_command(Path(bundle) / aarch64.RUNNER, core, qemu=qemu)
    expected = aarch64.read_expected(selftest, signature)
    if in_place:
        result = aarch64.run_in(command, selftest, signature)
    else:
        with tempfile.TemporaryDirectory(prefix="optc-selftest-") as scratch:
            for path in selftest.glob("input*.bin"):
                shutil.copy(path, scratch)
            result = aarch64.run_in(command, Path(scratch), signature)
    return SelftestResult(result.outputs, aarch64.selftest_error(result.outputs, expected), command, result.log)


def _ssh(host: str, command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require("ssh"), host, command], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise DeployError(f"ssh {host} '{command}' failed ({result.returncode}): {(result.stderr or result.stdout)[-800:]}")
    return result


def deploy_remote(source: Path, destination: str, bundle_name: str,
                  signature: Sequence[tuple[tuple[int, ...], str]]) -> SelftestResult:
    """Copy to ``user@host:DIR`` with scp, check the hashes there (``sha256sum -c``), run the
    self-test over ssh and compare its outputs here. Not exercised by the tests (no board)."""
    match = REMOTE.match(destination)
    if match is None:
        raise DeployError(f"{destination} is not user@host:DIR")
    host, path = match.group("host"), match.group("path")
    scp = require("scp")
    with tempfile.TemporaryDirectory(prefix="optc-deploy-") as scratch:
        staged = copy_artifact(source, Path(scratch) / "bundle")
        manifest = read_manifest(staged)
        (staged / SUMS).write_text("".join(f"{entry['sha256']}  {name}\n" for name, entry in manifest["files"].items()))
        quoted = shlex.quote(path)
        _ssh(host, f"mkdir -p {quoted} && test -z \"$(ls -A {quoted})\"")
        entries = [str(entry) for entry in sorted(staged.iterdir())]
        copied = subprocess.run([scp, "-rpq", *entries, f"{host}:{path}/"], capture_output=True, text=True, timeout=600)
        if copied.returncode != 0:
            raise DeployError(f"scp to {destination} failed: {copied.stderr[-800:]}")
        try:
            _ssh(host, f"cd {quoted} && sha256sum -c --quiet {SUMS}")
        except DeployError as error:
            raise DeployError(f"the copy on {host} does not match the manifest (sha256sum -c): {error}") from error
        selftest = f"{path}/{bundle_name}/{aarch64.SELFTEST}"
        log = _ssh(host, f"cd {shlex.quote(selftest)} && ../{aarch64.RUNNER}").stdout
        fetched = Path(scratch) / "outputs"
        fetched.mkdir()
        for index in range(len(signature)):
            got = subprocess.run([scp, "-q", f"{host}:{selftest}/output{index}.bin", str(fetched)],
                                 capture_output=True, text=True, timeout=600)
            if got.returncode != 0:
                raise DeployError(f"cannot fetch output{index}.bin from {host}: {got.stderr[-400:]}")
        outputs = _read_outputs(fetched, signature)
        expected = aarch64.read_expected(staged / bundle_name / aarch64.SELFTEST, signature)
        return SelftestResult(outputs, aarch64.selftest_error(outputs, expected), ["ssh", host, selftest], log)
