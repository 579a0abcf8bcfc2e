#!/usr/bin/env bash
# On the GPU machine (the device tool), from the repository root, with `.whl` carried (scripts/gpu_wheels.sh):
# installs ft beside the machine's torch, then runs the named stages in order, each writing its log (and
# JSON figures) under $OUT:
#   gpu-tests   FT_TEST_GPU=1 pytest tests/test_gpu.py: the CUDA tests (real kernels, bf16, 4-bit on CUDA)
#   suite       the whole suite on the CUDA machine (the main suite hides the GPU itself; see conftest.py)
#   throughput  scripts/bench_gpu.py --sizes 1b 8b: padded Trainer vs ft unpacked vs ft packed
#   context     scripts/bench_context.py, with $CONTEXT_ARGS (e.g. "--contenders ft-offload-tiled baseline")
# e.g. bash scripts/gpu_check.sh gpu-tests throughput
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/ft-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site:$PATH
printf '#!/bin/sh\nexec python3 -m ft "$@"\n' > /tmp/site/ft && chmod +x /tmp/site/ft  # pip --target writes no script
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
status=0
for stage in "$@"; do
  echo "== $stage ($(date +%T))"
  case $stage in
    gpu-tests) FT_TEST_GPU=1 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log" ;;
    suite) python3 -m pytest -q -p no:cacheprovider -n 6 2>&1 | tee "$OUT/suite.log" ;;
    throughput) python3 scripts/bench_gpu.py --sizes 1b 8b --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log" ;;
    context) python3 scripts/bench_context.py --out "$OUT/context.json" ${CONTEXT_ARGS:-} 2>&1 | tee "$OUT/context.log" ;;
    *) echo "unknown stage $stage"; false ;;
  esac
  code=${PIPESTATUS[0]}
  echo "== $stage exit $code ($(date +%T))"
  [ "$code" = 0 ] || status=1
done
exit $status
