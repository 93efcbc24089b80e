#!/usr/bin/env bash
# The README's benchmark table: every zoo model, optc (untuned TVM CPU) vs ONNX Runtime and
# torch eager, interleaved in one run per model. Writes bench/<model>.json and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench
for model in ${MODELS:-resnet18 mobilenetv2 vit gpt2 bert}; do
    .venv/bin/optc bench --example "$model" --target cpu --vs ort,torch \
        --repeat "${REPEAT:-10}" --warmup 2 --json "bench/$model.json"
done
