#!/usr/bin/env bash
# Regenerates every committed fixture under test/fixtures/ (models, model golden data, trajectories, loss,
# noise and scheduler golden data). Deterministic: fixed seeds, same code → same files.
#   tools/make_golden.sh            (from anywhere; ~30 minutes on 2 busy cores, most of it reference_pipeline.py)
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

# Part B: models first (the model golden data checks that the ONNX files hold the rebuilt weights).
run "$PY" tools/make_reference_models.py
run "$PY" tools/make_model_golden.py
run "$PY" tools/reference_pipeline.py

du -sh test/fixtures/* >&2
