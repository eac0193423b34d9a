#!/usr/bin/env bash
# Regenerates every committed fixture under test/fixtures/ (models, model golden data, trajectories, loss,
# noise and scheduler golden data). Deterministic: fixed seeds, same code → same files.
#   tools/make_golden.sh            (from anywhere; ~1 hour on 2 busy cores, most of it reference_pipeline.py)
# Needs Debian's python3-torch (1.13), python3-onnx and python3-numpy at /usr/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
run() { echo "+ $*" >&2; nice -n 10 "$@"; }

# Part A: losses, noise, schedulers (independent of the models).
run "$PY" tools/make_loss_golden.py
run "$PY" tools/make_noise_golden.py
run "$PY" tools/make_scheduler_golden.py
run "$PY" tools/make_scheduler_golden.py --config sd21

# Part B, per model family: models first (the model golden data checks that the ONNX files hold the rebuilt
# weights). sd1 → models/tiny-sd + unet-variants, golden/; sd2 → models/tiny-sd2, golden-sd2/; sdxl → tiny-sdxl,
# golden-sdxl/.
for family in sd1 sd2 sdxl; do
  run "$PY" tools/make_reference_models.py --family "$family"
  run "$PY" tools/make_model_golden.py --family "$family"
  run "$PY" tools/reference_pipeline.py --family "$family"
done

du -sh test/fixtures/* >&2
