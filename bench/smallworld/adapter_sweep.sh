#!/bin/bash
# Train one FDI adapter on a small world through the project's own trainer, with a checkpoint every 100 steps,
# for bench/smallworld/adapter_probe.py (docs/design.md, "The small world"). Constant lr after 30 warm-up steps, so the
# checkpoints of a long run are the short runs' (and a run resumes: EXTRA="--resume latest").
#   bench/smallworld/adapter_sweep.sh WORLD TASK LR STEPS OUT     e.g. ~/.cache/fdi-learns/world-e3f93b62f1 haze 1e-3 600 /tmp/a
# PYTHON=/path/to/venv/bin/python selects the interpreter. Reuses the task FDI (WORLD/fdi/) and the pair list of a
# 100 %-pairs adapter of the world's cache (bench/learns.py).
set -euo pipefail
W=$1; T=$2; LR=$3; S=$4; O=$5
FDI=$(ls "$W"/fdi/"$T"-*.fdi.safetensors | head -1)
LIST=$(ls "$W"/adapters/"$T"-100-*/pairs.csv | head -1)
mkdir -p "$O"
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$PWD \
"${PYTHON:-python}" -m fdi train --sd "$W/sd" --fdi "$FDI" --pairs-file "$LIST" \
  -o "$O/adapter.safetensors" --label "$T" --adapter-config '{"res_blocks": 1, "heads": 4, "se_reduction": 4}' \
  --resolution 64 --max-steps "$S" --batch-size 8 --lr "$LR" --lr-scheduler constant_with_warmup \
  --lr-warmup-steps 30 --num-workers 0 --checkpoint-every 100 --device cpu --log-every 10 --quiet ${EXTRA:-}
