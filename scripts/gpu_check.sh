#!/usr/bin/env bash
# The GPU check, in one command that ends within 8 minutes on the H200 of the device tool (its 10-minute limit,
# with the machine's start, fits a 15-minute lease). Here first: `bash scripts/gpu_wheels.sh` (fills `.whl`,
# copies the seed configs to `shared/`); then, carrying `.whl` and `shared`, on the GPU machine:
#
#   bash scripts/gpu_check.sh           the stages below, most important first
#   bash scripts/gpu_check.sh --suite   the whole test suite on the CUDA machine (a second command, if time is left)
#   bash scripts/gpu_check.sh --smoke   every stage's code on this CPU with the tiny model and tiny sizes (the
#                                       test suite runs this: tests/test_gpu_check.py), so no typo wastes GPU minutes
#   STAGES="plan preference" CHECK_SECONDS=240 bash scripts/gpu_check.sh
#                                       those stages only, within 240 s: a second command for the stages the first
#                                       one had no time left for (they are said: "skipped: ... left")
#
# Each stage runs under its own budget (seconds) and under what is left of the whole check's 470 s (started
# from the first line, the install included): a stage that would have under 20 s left is skipped and said, and
# the check ends in time whatever the stages take. Each writes its log (and JSON, saved as soon as a contender
# or trial ends) under $OUT and says what it skipped:
#   tests       150  FT_TEST_GPU=1 pytest tests/test_gpu.py: packed rows equal rows alone (five architectures;
#                    LoRA and QLoRA), the chunked loss, the bf16 base, offloading on a 32k row, ft's fused LoRA
#                    update against PEFT's path, Liger's kernels against the model's own layers, chunked norms and
#                    selective checkpointing on a 4k row
#   8b          120  scripts/bench_gpu.py --sizes 8b-8l: Llama 3.1 8B's layers (8 of them), QLoRA with
#                    checkpointing: ft packed and unpacked, TRL packed, the tuned and the plain Trainer; 20 timed
#                    steps each; MFU by the usual count against the measured and the datasheet rate; one step of
#                    ft packed profiled by part (matmul, dequantization, attention, loss, optimizer, ...)
#   1b           90  the same at Llama 3.2 1B (16 layers, LoRA, bf16)
#   context     200  scripts/bench_context.py --trials: at 16k tokens, 8B QLoRA's step time with offloading and
#                    tiled MLP beside ft without them (the target: within 1.15×), and with chunked norms and the
#                    grouped attention backward too (ft-long); Llama 3.1 8B's full 131,072-token context with all
#                    four under a 24 GiB cap (122,880, then 114,688, only while it does not fit: ft plan says 131,072
#                    needs 22.4 GiB, 25.5 without the grouped backward); the plain baseline's fit at 16k; last, at
#                    16k, ft with selective checkpointing (attention kept, not recomputed) beside plain
#                    checkpointing; 8 of the 8B's layers, the cap lowered by what the other 24 would hold
#                    (measured per layer in each trial), each trial alone on the GPU
#   plan        150  scripts/plan_accuracy.py --sizes 1b 8b-8l --lengths 4096: ft plan beside the measured peak
#                    (1B: LoRA, QLoRA, full; 8B-wide, 8 layers: LoRA, QLoRA; each with none, checkpointing,
#                    offloading, selective, partial checkpointing and the grouped attention backward: thirty rows,
#                    six processes at once, as many as the GPU's memory holds)
#   preference   45  scripts/bench_preference.py: ft's DPO beside TRL's DPOTrainer
#   eval         30  scripts/bench_eval.py (batched generation) and scripts/bench_mc.py (multiple choice beside
#                    lm-eval, when lm-eval is there)
#   distill      30  scripts/bench_distill.py: ft's distillation beside TRL's GKDTrainer
#   methods      70  scripts/compare_methods.py --shape 1b: seed 004's table of methods
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$(mktemp -d /tmp/ft-gpu-check.XXXX)}
mkdir -p "$OUT"
started=$(date +%s)
say() { echo "== [$(( $(date +%s) - started )) s] $*" | tee -a "$OUT/summary.log"; }

if [ "$mode" = --smoke ]; then
  PY=${PYTHON:-python3}
  SCALE=4  # a busy 2-core CPU runs the tiny sizes slower than the H200 runs the real ones
  TESTS_ARGS=(-x); SIZES_1B=(tiny); SIZES_8B=(tiny-qlora); ROWS=120; PLAN_ARGS=(--sizes tiny --lengths 128 --methods lora --memory none offloading selective)
  CONTEXT_ARGS=(--size tiny-qlora --as-layers 4 --trials ft-offload-tiled:256 ft:256 baseline:256 ft-long:256 ft-selective:256 --cap-gb 24)
  PREFERENCE_ARGS=(--contenders ft --pairs 16 --batch 4 --steps 2 --hidden 64 --layers 2)
  DISTILL_ARGS=(--contenders ft --rows 16 --batch 4 --steps 2 --hidden 64 --layers 2)
  METHODS_ARGS=(--shape tiny --steps 2 --methods lora prompt_tuning); MC_ROWS=40
else
  PY=python3
  SCALE=1
  TESTS_ARGS=(); SIZES_1B=(1b); SIZES_8B=(8b-8l); ROWS=3000; PLAN_ARGS=(--sizes 1b 8b-8l --lengths 4096 --parallel 6)
  CONTEXT_ARGS=(--size 8b-8l --as-layers 32 --trials ft:16384 ft-offload-tiled:16384 ft-long:16384 ft-long:131072,122880,114688 baseline:16384 ft-selective:16384 --cap-gb 24)
  PREFERENCE_ARGS=(--pairs 512 --batch 16 --steps 20 --hidden 1024 --layers 8)
  DISTILL_ARGS=(--rows 256 --batch 16 --steps 16 --hidden 1024 --layers 4)
  MC_ROWS=400
  METHODS_ARGS=(--shape 1b --steps 12 --methods lora qlora dora ia3 vera loha lokr prompt_tuning prefix_tuning p_tuning_v2 bottleneck full)
  # the machine's torch stays; what it lacks comes from .whl (scripts/gpu_wheels.sh); pip --target writes
  # the package to /tmp/site/ft and the console scripts (ft, lint-imports) to /tmp/site/bin
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.log"
fi
# the versions from the installed packages' metadata (importing the four to ask them costs 5 s)
$PY -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('torch', 'transformers', 'peft', 'bitsandbytes')))" | tee -a "$OUT/summary.log"
say "mode $mode, results in $OUT"

# stage NAME BUDGET COMMAND...: runs COMMAND under its budget, or what is left of the check's (SIGINT, then SIGKILL
# 10 s later), logs to $OUT/NAME.log
for name in ${STAGES:-}; do
  case $name in
    tests|8b|1b|context|plan|preference|eval|distill|methods) ;;
    *) say "STAGES: no stage is called $name (tests 8b 1b context plan preference eval distill methods)"; exit 2 ;;
  esac
done
status=0
limit=${CHECK_SECONDS:-470}
deadline=$(( started + limit * SCALE ))
stage() {
  local name=$1 budget=$(( $2 * SCALE )); shift 2
  if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then
    return  # not asked for (STAGES)
  fi
  local left=$(( deadline - $(date +%s) - 10 ))
  if [ "$left" -lt $(( 20 * SCALE )) ]; then
    say "$name: skipped: ${left} s left of the check's $limit s"; status=1; return
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  say "$name: start (budget $budget s)"
  timeout -s INT -k 10 "$budget" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  tail -n 25 "$OUT/$name.log"
  case $code in
    0) say "$name: done" ;;
    124|137) say "$name: stopped at its budget of $budget s; skipped what had not run (what was measured is in $OUT/$name.json)"; status=1 ;;
    *) say "$name: failed (exit $code)"; status=1 ;;
  esac
}

if [ "$mode" = --suite ]; then
  stage suite 570 $PY -m pytest -q -p no:cacheprovider -n 8 -rs
  exit $status
fi

stage tests 150 env FT_TEST_GPU=1 $PY -m pytest -q -p no:cacheprovider -rs "${TESTS_ARGS[@]}" tests/test_gpu.py
stage 8b 120 $PY scripts/bench_gpu.py --sizes "${SIZES_8B[@]}" --rows $ROWS --out "$OUT/8b.json"
stage 1b 90 $PY scripts/bench_gpu.py --sizes "${SIZES_1B[@]}" --rows $ROWS --out "$OUT/1b.json"
stage context 200 $PY scripts/bench_context.py "${CONTEXT_ARGS[@]}" --out "$OUT/context.json"
stage plan 150 $PY scripts/plan_accuracy.py "${PLAN_ARGS[@]}"
stage preference 45 $PY scripts/bench_preference.py "${PREFERENCE_ARGS[@]}" --out "$OUT/preference.json"
stage eval 30 bash -c "$PY scripts/bench_eval.py --rows 64 --batch 16 && if $PY -c 'import lm_eval' 2>/dev/null; then $PY scripts/bench_mc.py --rows $MC_ROWS --repeats 1; else echo 'bench_mc: skipped (lm_eval is not installed)'; fi"
stage distill 30 $PY scripts/bench_distill.py "${DISTILL_ARGS[@]}" --out "$OUT/distill.json"
stage methods 70 $PY scripts/compare_methods.py "${METHODS_ARGS[@]}" --json "$OUT/methods.json"
say "all stages ended (exit $status)"
exit $status
