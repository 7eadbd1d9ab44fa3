#!/usr/bin/env bash
# The GPU measurements issue 20 keeps asking for, in one device call, each comparison inside it.
#
#   bash bench/gpu_round.sh [tests] [slot] [decode] [blas] [loop] [train] [prefetch] [l2] [longloop]   (default: tests slot loop)
#
#   tests   GPU-marked tests of the kernels, the verification, the engine and the BLAS choice
#   slot    bench/mixed_step.py, --slot-attention all (the default) against off (graphed steps with prompts inside)
#   decode  the decode step at 64 and 128 streams and batch 1, --slot-attention all against off
#   blas    the same step under cuBLAS, cuBLASLt and the timed choice (auto, the default)
#   loop    the closed loop (768 requests, 64 clients), --slot-attention all (the default) against off
#   train   bench/train_bench.py at the 6B shape, compiled (~7 minutes)
#   prefetch bench/l2_prefetch.py: weights asked into L2 while attention runs, against not asking
#   longloop the closed loop over 3,072 requests (the default settings): its start and drain weigh a quarter as much
#   l2      the decode step with --l2-prefetch 16 / 32 MiB a layer against 0, alternated, under cuBLASLt
#
# Full logs go to $OUT (or /tmp/gpu_round); a few summary lines each go to stdout. Put the jieba and
# rouge_chinese packages on PYTHONPATH where the device has no network (docs/PERFORMANCE.md).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 COLUMNS=250 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
logs=${OUT:-/tmp/gpu_round}
mkdir -p "$logs"
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__)"
SB="bench/serving_bench.py --full-size --cuda-graph --compile --repeat 1"

step() {  # name, then the command; its log to $logs/name.log, its wall time after it
  local name=$1
  shift
  echo "=== $name"
  "$@" > "$logs/$name.log" 2>&1 || echo "(exit $?: see $logs/$name.log)"
}
table() { tr -s '│ ' ' ' < "$logs/$1.log" | grep -E "$2" | cut -c1-200; echo "  (t=$((SECONDS - start)) s)"; }

for what in "${@:-tests slot loop}"; do for part in $what; do case $part in
  tests)
    step tests python -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py tests/test_verify.py \
      tests/test_engine.py tests/test_model.py tests/test_blas.py
    table tests "passed|failed|skipped|Error" ;;
  slot)
    for m in all off; do
      step "mixed_step_$m" python bench/mixed_step.py --compile --prompts 1x64,2x64,4x64 --real --reach 384 \
        --interleave 2 --kernels 0 --slot-attention $m
      table "mixed_step_$m" "^ (decode|prefill)|interleaved"
    done ;;
  decode)
    for m in all off; do for s in 64 128; do
      step "decode_${s}_$m" python $SB --streams $s --baseline-streams 1 --slot-attention $m
      table "decode_${s}_$m" "^ engine"
    done; done ;;
  blas)
    for b in cublas cublaslt auto; do
      step "blas_$b" python $SB --baseline-streams 1 --blas $b
      table "blas_$b" "^ engine"
    done ;;
  loop)
    for m in all off; do
      step "loop_$m" python $SB --closed-loop 768 --prefill-with-decode on --prefill-wait-steps 0 --slot-attention $m
      table "loop_$m" "^ on "
      grep -A1 "with decode on, prompt graphs on" "$logs/loop_$m.log" | cut -c1-400
    done ;;
  train)
    step train python bench/train_bench.py --full-size --steps 12 --official-steps 2 --compile --skip-eager
    tail -25 "$logs/train.log"; echo "  (t=$((SECONDS - start)) s)" ;;
  prefetch)
    step prefetch python bench/l2_prefetch.py
    grep -E "^\||rows|Error" "$logs/prefetch.log" | cut -c1-200; echo "  (t=$((SECONDS - start)) s)" ;;
  longloop)
    step longloop python $SB --closed-loop 3072 --prefill-with-decode on --prefill-wait-steps 0
    table longloop "^ on "
    grep -A1 "with decode on, prompt graphs on" "$logs/longloop.log" | cut -c1-400 ;;
  l2)
    n=0
    for m in 0 16 32 0 16 32; do  # BLAS pinned: auto's pick could differ between runs by as much as the effect
      n=$((n + 1))
      echo "--l2-prefetch $m"
      step "l2_${n}_$m" python $SB --baseline-streams 1 --blas cublaslt --l2-prefetch $m
      table "l2_${n}_$m" "^ engine"
    done ;;
  *)
    echo "unknown part $part: use tests, slot, decode, blas, loop, train, prefetch, l2 or longloop" >&2; exit 2 ;;
esac; done; done
