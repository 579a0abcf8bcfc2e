#!/usr/bin/env bash
# The quickstart, end to end on a CPU in about two minutes: build a tiny model, measure it, fine-tune it
# with LoRA, merge the adapter, measure again, and answer one prompt. Run from the repository root.
set -euo pipefail
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
CFG=examples/quickstart/config.yml
rm -rf outputs/quickstart
"$PY" scripts/make_tiny_model.py outputs/tiny-llama
echo "== before fine-tuning (ft eval on test_datasets: greedy answers, exact match and F1)"
"$PY" -m ft eval "$CFG" --base-only
echo "== the same rows as multiple choice (log-likelihood of each of four orders: acc, acc_norm)"
"$PY" -m ft eval "$CFG" --base-only --data examples/quickstart/choices.jsonl
echo "== fine-tuning"
"$PY" -m ft train "$CFG"
"$PY" -m ft merge-lora "$CFG"
echo "== after fine-tuning"
"$PY" -m ft eval "$CFG" --merged
"$PY" -m ft eval "$CFG" --merged --data examples/quickstart/choices.jsonl
echo "== the two runs side by side (paired bootstrap intervals; output_dir/compare)"
"$PY" -m ft eval "$CFG" --compare outputs/quickstart/eval-base outputs/quickstart/eval-merged
echo "== inference (prompt rendered in the training format, answer streamed)"
"$PY" -m ft inference "$CFG" --prompt "Reverse the order of the words." --input "sun moon king" --max-new-tokens 16
