#!/usr/bin/env bash
# The README's slicing table: each zoo model unsliced and sliced at 30% and 50% of FLOPs (kept
# channels rounded to multiples of 16 so the vectorized schedules apply),
# optc on the CPU backend, interleaved in one run per model. Writes bench/slice-<model>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench
for model in ${MODELS:-resnet18 mobilenetv2 vit bert}; do
    .venv/bin/optc bench --example "$model" --target cpu --vs "" \
        --passes "cleanup,fuse" --passes "cleanup,fuse,slice(flops=0.3,multiple=16)" --passes "cleanup,fuse,slice(flops=0.5,multiple=16)" \
        --repeat "${REPEAT:-10}" --warmup 2 --json "bench/slice-$model.json"
done
