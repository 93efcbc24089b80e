#!/usr/bin/env bash
# The README's benchmark table: every zoo model, optc (untuned TVM CPU) without and with fusion,
# ONNX Runtime and torch eager, interleaved in one run per model. Writes bench/<model>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench
for model in ${MODELS:-resnet18 mobilenetv2 vit gpt2 bert}; do
    .venv/bin/optc bench --example "$model" --target cpu --vs ort,torch \
        --passes cleanup --passes cleanup,fuse \
        --repeat "${REPEAT:-10}" --warmup 2 --json "bench/$model.json"
done
