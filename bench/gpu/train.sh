#!/usr/bin/env bash
# GPU training of the bundled shapes-sd model (issue 6): autoencoder, then text encoder + UNet, in one process,
# within a total wall-clock budget of $1 minutes (default 6) counted from this script's start.
# Needs python3 with torch (CUDA build for the GPU; runs on CPU too, slowly) and numpy; matplotlib optional.
# Writes to $OUT (default build-train/out), at most 8 files, each <= 16 MB:
#   ckpt-ae.pt ckpt-unet.pt ckpt-ema.pt ckpt-optim.pt  checkpoints (rerunning with the same $OUT resumes)
#   loss.json loss.png                                  loss curves
#   train.log                                           nvidia-smi, versions, the training log (+ any traceback)
#   samples.png                                         preview grid from the EMA weights (prompts in train.log)
# Then, on a machine with the repo: /usr/bin/python3 tools/shapes/export.py $OUT/ckpt-ema.pt models/shapes-sd
# Usage: OUT=/path bash bench/gpu/train.sh [MINUTES]      (env: DEVICE=auto|cpu|cuda, BATCH=N, PYTHON=...)
set -euo pipefail
START="$(date +%s.%N)"
MINUTES="${1:-6}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$ROOT/build-train/out}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/train.log"
export PYTHONUNBUFFERED=1

# The first interpreter that has torch: $PYTHON, python3 on PATH (GPU image), Debian's /usr/bin/python3.
PY=""
for cand in "${PYTHON:-}" python3 /usr/bin/python3; do
  if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' >/dev/null 2>&1; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then echo "no python3 with torch found (set PYTHON=...)" | tee -a "$LOG"; exit 1; fi

{
  echo "=== bench/gpu/train.sh $(date -u +%FT%TZ) budget ${MINUTES} min, out $OUTDIR"
  nvidia-smi 2>&1 || echo "nvidia-smi not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} 2>&1 | tee -a "$LOG"

args=(--out "$OUTDIR" --minutes "$MINUTES" --start-time "$START" --device "${DEVICE:-auto}")
if [ -n "${BATCH:-}" ]; then args+=(--batch "$BATCH"); fi
# train.py writes train.log itself; stderr (warnings, a traceback) is appended to it here as well.
set +e
"$PY" tools/shapes/train.py "${args[@]}" 2> >(tee -a "$LOG" >&2)
rc=$?
set -e
wait
echo "=== train.py exit $rc after $(awk "BEGIN {printf \"%.0f\", $(date +%s.%N) - $START}") s" | tee -a "$LOG"
ls -la "$OUTDIR" | tee -a "$LOG"
exit $rc
