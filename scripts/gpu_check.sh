#!/usr/bin/env bash
# GPU check of issue 26 ("Training that is fast where the GPU is"): on one CUDA GPU, in under 10 minutes,
#   1. a fresh venv from this checkout (.venv-gpu, with the dev and distributed extras),
#   2. the GPU's name,
#   3. `bench train --device cuda`: training images/s per model on the fast path, the plain path and the CPU,
#   4. every paper's smoke job graph trained on the GPU through Ray, into an empty cache,
# each command timed, everything written to outputs/gpu_check/<date>.log (and shown).
#
# Usage, from anywhere: bash scripts/gpu_check.sh
# Environment: WORKBENCH_DATA (default: ../shared/data when present, as the Makefile does), PYTHON (default python3),
# SKIP_INSTALL=1 reuses an existing .venv-gpu as it is (a machine without package index access).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${WORKBENCH_DATA:-}" && -d ../shared/data ]]; then
  WORKBENCH_DATA="$(cd ../shared/data && pwd)"
  export WORKBENCH_DATA
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi --query-gpu=name --format=csv,noheader >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi is missing or sees no GPU); run this on a machine with one." >&2
  exit 1
fi

mkdir -p outputs/gpu_check
LOG="outputs/gpu_check/$(date +%Y%m%d-%H%M%S).log"
exec > >(tee -a "$LOG") 2>&1
echo "gpu_check: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') on $(hostname), log $LOG"
echo "WORKBENCH_DATA=${WORKBENCH_DATA:-<unset: torchvision downloads>}"

step() {  # step "what" command...: print, time and run one command (set -e stops the script if it fails)
  echo
  echo "=== $1"
  shift
  echo "+ $*"
  time "$@"
}

PY=.venv-gpu/bin/python
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  step "venv" "${PYTHON:-python3}" -m venv .venv-gpu
  step "install" .venv-gpu/bin/pip install --quiet -e ".[dev,distributed]"
fi
step "GPU" nvidia-smi --query-gpu=name --format=csv
step "CUDA from torch" "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
step "bench train" "$PY" -m workbench bench train --device cuda

CACHE="$(mktemp -d)"
step "jobs: every paper's smoke graph on the GPU (empty cache $CACHE)" env WORKBENCH_CACHE="$CACHE" \
  "$PY" -m workbench jobs run quickstart bdmae lred restore trap_replace --scale smoke --executor ray --device cuda
step "each job's seconds on the GPU" "$PY" -c "import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
for e in events:
    if e['event'] == 'done':
        print(f\"{e['seconds']:9.1f} s  {e['job']}  {e['label']}\")
print(f\"{sum(e['seconds'] for e in events if e['event'] == 'done'):9.1f} s in all\")" "$CACHE/artefacts/.jobs/events.jsonl"
echo
echo "gpu_check: done; log $LOG"
