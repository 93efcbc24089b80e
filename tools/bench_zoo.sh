#!/usr/bin/env bash
# The README's speed table: every zoo model at its real size, optc (default schedules; and tuned
# when a database exists) against ONNX Runtime, torch eager and torch.compile (inductor, freezing),
# interleaved in one run per model. Writes bench/zoo-<model>.json; then
#   python -m optc.tools.zoo_table bench/zoo-*.json        prints the markdown table.
# Environment: MODELS (default: all five), REPEAT (15), THREADS (all cores),
#   DB: a directory with one 'optc tune' database per model (DB/resnet18, DB/gpt2_full, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench
for model in ${MODELS:-resnet18 mobilenetv2 vit:full gpt2:full bert:full}; do
    name=${model/:/_}
    db=()
    if [ -n "${DB:-}" ] && [ -d "$DB/$name" ]; then db=(--db "$DB/$name"); fi
    .venv/bin/optc bench --example "$model" --target cpu --vs ort,torch,torch-compile "${db[@]}" \
        ${THREADS:+--threads "$THREADS"} --repeat "${REPEAT:-15}" --warmup 3 --json "bench/zoo-$name.json"
done
