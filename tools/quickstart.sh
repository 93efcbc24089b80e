#!/usr/bin/env bash
# Set up optc in ./.venv and run its main job on an embedded example:
# compile ResNet-18 for the host CPU, run the artifact, and print what it holds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "== installing optc and its dependencies (torch pinned to the CPU build)"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch first, pinned: an unpinned torch (or one pulled in by another package) downloads the CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

echo "== optc compile --example resnet18 --target cpu -o out/resnet18"
.venv/bin/optc compile --example resnet18 --target cpu -o out/resnet18
echo "== optc run out/resnet18"
.venv/bin/optc run out/resnet18
echo "== optc inspect out/resnet18"
.venv/bin/optc inspect out/resnet18 | head -40
