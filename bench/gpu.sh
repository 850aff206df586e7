#!/usr/bin/env bash
# Everything the GPU has to show, in one call that fits a 10-minute limit (GPU_TOTAL_S, 540 s
# by default, is the budget of all steps together):
#   1. environment: date, nvidia-smi, torch / CUDA / triton versions, the GPU, and the peak
#      bandwidth the GB/s figures are measured against;
#   2. cuda_tests: pytest tests/test_triton_cuda.py (no -x: every test runs), limit GPU_TESTS_S;
#   3. bench/gpu_check.py: smoke test, exactness, timing, torch.compile, bandwidth, tile sweep
#      and trainer smoke test, each section in its own process with its own time limit
#      (GPU_CHECK_SECTIONS=smoke,timing,... runs a subset);
#   4. bench/fsdp_check.py: palu-unlearn under FSDP2 (accelerate, docs/accelerate_fsdp2.yaml),
#      with and without --fused-linear, against the same job on one process (GPU_FSDP_S, 150 s).
# Each step runs under its own timeout and a failing step does not stop the next one.
# Everything goes to ${OUT:-bench/results/cuda}, six files in all, each complete at any moment
# (a run killed at any point keeps what was measured so far):
#   gpu.log          all output of every step, appended as it comes
#   environment.txt  step 1
#   cuda_tests.txt   step 2 (pytest -rA: one line per test)
#   results.json     every section's status and numbers, rewritten after every measurement
#   results.md       the same as tables, rewritten with it
#   sweep.csv        the tile sweep, one row per point as it is measured
#
#   bash bench/gpu.sh             # on a GPU machine (PYTHON=... picks the interpreter)
#   bash bench/gpu.sh --dry-run   # or GPU_DRY_RUN=1: the same steps on the CPU, tiny shapes,
#                                 # Triton interpreter, under a minute; numbers mean nothing
# Exit code: 0 when every step passed, 1 when one failed or timed out (see results.md).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/cuda}
DRY=${GPU_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) echo "usage: bash bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
TOTAL_S=${GPU_TOTAL_S:-540}
TESTS_S=${GPU_TESTS_S:-150}
FSDP_S=${GPU_FSDP_S:-150}  # step 4, kept out of step 3's budget

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu.log
for f in gpu.log environment.txt cuda_tests.txt results.json results.md sweep.csv \
         results.json.tmp results.md.tmp; do
  rm -f "$OUT/$f"
done
OTHER=$(ls -A "$OUT" | wc -l)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DRYFLAG=
if [ "$DRY" = 1 ]; then
  DRYFLAG=--dry-run
  export TRITON_INTERPRET=1  # before triton is first imported, in every process
  export CUDA_VISIBLE_DEVICES=  # CPU only, even on a GPU machine (the CUDA tests then skip)
fi
STATUS=0

step() {  # step NAME LIMIT_S CMD... : output to the terminal, gpu.log and $TEE (if set)
  local name=$1 limit=$2 rc
  shift 2
  echo "=== $name: $(date -u +%H:%M:%S), limit ${limit}s: $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" ${TEE:+"$TEE"}
  rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || STATUS=1
  return "$rc"
}

[ "$OTHER" -eq 0 ] || echo "note: $OUT already holds $OTHER file(s) this script does not write" \
  | tee -a "$LOG"

# 1. The environment (gpu_check.py --environment also starts a fresh results.json).
ENV_CMD='date -u; if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else
  echo "nvidia-smi: not found"; fi; $1 bench/gpu_check.py --environment --out "$2" $3'
TEE=$OUT/environment.txt step environment 90 bash -c "$ENV_CMD" env "$PY" "$OUT" "$DRYFLAG"

# 2. The CUDA tests (all skipped on a CPU).
TEE=$OUT/cuda_tests.txt step cuda_tests "$TESTS_S" \
  $PY -m pytest tests/test_triton_cuda.py -q -rA -p no:cacheprovider
RC=$?
$PY bench/gpu_check.py --out "$OUT" --record-tests "$OUT/cuda_tests.txt" --rc "$RC" 2>&1 \
  | tee -a "$LOG"

# 3. The checks, in what is left of the budget (gpu_check.py enforces it section by section;
#    the timeout here is only the hard stop).
LEFT=$((TOTAL_S - SECONDS - 15 - FSDP_S))
[ "$LEFT" -ge 60 ] || LEFT=60
step gpu_check $((LEFT + 30)) $PY bench/gpu_check.py --out "$OUT" --budget-s "$LEFT" $DRYFLAG \
  ${GPU_CHECK_SECTIONS:+--sections "$GPU_CHECK_SECTIONS"}

# 4. palu-unlearn under FSDP2 through accelerate (GPUs only; prints "skipped" on a CPU).
if [ "$DRY" = 1 ]; then
  echo "=== fsdp: skipped in --dry-run (accelerate runs FSDP on GPUs only)" | tee -a "$LOG"
else
  step fsdp "$FSDP_S" $PY bench/fsdp_check.py
fi

echo "=== done in ${SECONDS}s, exit $STATUS; $(ls -A "$OUT" | wc -l) files in $OUT:" \
  "$(ls -A "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
echo "=== $OUT/results.md"
cat "$OUT/results.md" 2>/dev/null || echo "(no results.md)"
exit $STATUS
