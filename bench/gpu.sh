#!/usr/bin/env bash
# Everything the GPU has to show, in one call (about 8 minutes on one H200):
#   1. the CUDA tests of the Triton kernels,
#   2. bench/gpu_kernels.py (the kernels' own checks and figures),
#   3. the sweep (python -m bench.run --device cuda), with a time budget.
# Raw output goes to bench/results/cuda/ (and is copied to $OUT when that is set, as on the
# lent device machine). Run from the repository root:  bash bench/gpu.sh
# Each step has its own timeout; a failing step is logged and the next one still runs.
set -u
cd "$(dirname "$0")/.."
RES=bench/results/cuda
mkdir -p "$RES"
PY=${PYTHON:-python}
STATUS=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$RES/gpu.log"
  timeout "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$RES/$name.log"
  echo "=== $name exit $rc" | tee -a "$RES/gpu.log"
  [ "$rc" -eq 0 ] || STATUS=1
}

{ date -u; nvidia-smi; $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"; } > "$RES/environment.txt" 2>&1
cat "$RES/environment.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch: nothing measured" | tee -a "$RES/gpu.log"
  exit 2
fi

step test_triton_cuda 120 $PY -m pytest tests/test_triton_cuda.py -q -x -p no:cacheprovider
if [ -f bench/gpu_kernels.py ]; then
  step gpu_kernels 90 env PALU_BENCH_OUT="$RES" $PY -m bench.gpu_kernels
fi
# The sweep starts no new measurement after --budget-s; the timeout is the hard stop.
step sweep 250 $PY -m bench.run --device cuda --budget-s 190 --out "$RES"

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp -r "$RES" "$OUT/"
fi
exit $STATUS
