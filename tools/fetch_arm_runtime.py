"""Fetch TVM's aarch64 runtime for running the arm target's ``lib/model.so`` (setup step, idempotent).

Downloads the aarch64 wheels of the host's apache-tvm and apache-tvm-ffi versions from PyPI
(``pip download --platform manylinux_2_28_aarch64``) and extracts ``libtvm_runtime.so`` and
``libtvm_ffi.so`` into ``--dir``, ``$OPTC_ARM_RUNTIME`` or ``~/.cache/optc/aarch64-runtime``:

    python -m optc.tools.fetch_arm_runtime            # then: optc run ARTIFACT --form so
    python -m optc.tools.fetch_arm_runtime --dir /opt/tvm-aarch64 --force
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ..backends.aot.arm_so import RUNTIME_ENV, missing_libraries, runtime_directory
from ..errors import OptcError

log = logging.getLogger(__name__)

PLATFORM = "manylinux_2_28_aarch64"  # the wheels are manylinux_2_27/2_28; manylinux2014 finds none
PYTHON_VERSION = "3.11"  # apache-tvm-ffi's wheels are per CPython version; only the .so files are used
# wheel distribution -> the path of its library inside the wheel
MEMBERS = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}


class FetchError(OptcError):
    """The aarch64 runtime wheels could not be downloaded or did not hold the libraries."""


def requirements() -> list[str]:
    """``apache-tvm==X`` and ``apache-tvm-ffi==Y`` pinned to the versions installed here."""
    pins = []
    for distribution in MEMBERS:
        try:
            pins.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError as error:
            raise FetchError(f"{distribution} is not installed here; install optc's dependencies first") from error
    return pins


def download(pins: Sequence[str], destination: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", PLATFORM, "--python-version", PYTHON_VERSION, "-d", str(destination), *pins]
    log.info("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise FetchError(f"pip could not download the aarch64 wheels ({' '.join(pins)}); PyPI must be reachable:\n"
                         f"{(result.stderr or result.stdout)[-1500:]}")
    return sorted(destination.glob("*.whl"))


def extract(wheels: Sequence[Path], directory: Path) -> list[Path]:
    """Copy each wheel's runtime library into ``directory`` (written under a temporary name first)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for distribution, member in MEMBERS.items():
        prefix = distribution.replace("-", "_") + "-"
        wheel = next((path for path in wheels if path.name.startswith(prefix) and "aarch64" in path.name), None)
        if wheel is None:
            names = [path.name for path in wheels]
            raise FetchError(f"no aarch64 wheel of {distribution} was downloaded (got {names})")
        target = directory / Path(member).name
        partial = target.with_name(target.name + ".part")
        with zipfile.ZipFile(wheel) as archive:
            try:
                with archive.open(member) as source, partial.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            except KeyError as error:
                raise FetchError(f"{wheel.name} has no {member}") from error
        partial.replace(target)
        written.append(target)
    return written


def fetch(directory: Path | None = None, *, force: bool = False) -> Path:
    """Make sure ``directory`` holds the aarch64 runtime libraries; returns the directory."""
    directory = Path(directory) if directory is not None else runtime_directory()
    if not force and not missing_libraries(directory):
        log.info("the aarch64 runtime is already in %s", directory)
        return directory
    pins = requirements()
    with tempfile.TemporaryDirectory(prefix="optc-wheels-") as scratch:
        extract(download(pins, Path(scratch)), directory)
    (directory / "VERSIONS").write_text("\n".join(pins) + "\n")
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.fetch_arm_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"where to put the libraries (default: ${RUNTIME_ENV} or ~/.cache/optc/aarch64-runtime)")
    parser.add_argument("--force", action="store_true", help="download again even if the libraries are there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        directory = fetch(args.dir, force=args.force)
    except OptcError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"aarch64 TVM runtime in {directory}: {', '.join(sorted(path.name for path in directory.glob('lib*.so')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
