#!/usr/bin/env bash
# Here (no GPU): fill .whl/ with what the GPU machine of the device tool lacks for
# ft, its GPU tests and the whole test suite (../shared/gpu/GPU.md lists what it has). Carry `.whl` in the
# device run (and `shared`, the seed configs copied below), then run scripts/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$(git rev-parse --git-dir)/info"  # fetch-wheels.sh writes the ignore line there
# beyond ft's own needs: the whole suite's (import-linter and its click, grimp; hypothesis and
# sortedcontainers) and DeepSpeed's runtime ones; a collection error would stop the suite there
bash ../shared/gpu/fetch-wheels.sh import-linter==2.17 grimp==3.20 click==8.5.1 hypothesis==6.170.17 sortedcontainers==2.4.0 \
  hjson==3.1.0 einops==0.8.2 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0 \
  sacrebleu==2.6.0 portalocker==4.4.2 colorama==0.4.6 lxml==6.1.3 tabulate==0.10.0 nltk==3.10.4 joblib==1.6.0 six==1.17.0 \
  trl==1.16.0 \
  liger-kernel==0.8.5  # trl: scripts/bench_preference.py only; liger-kernel: liger_* keys (tests/test_gpu.py)
# DeepSpeed is published as source only: build its pure-Python wheel here (its ops compile on first use)
python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8 rouge-score==0.1.2  # rouge-score too: source only
# the seed configs, for the whole suite there (only the checkout travels; tests/conftest.py looks here first)
grep -qx '/shared/' "$(git rev-parse --git-dir)/info/exclude" || echo '/shared/' >> "$(git rev-parse --git-dir)/info/exclude"
rm -rf shared/seed-configs && mkdir -p shared && cp -r ../shared/seed-configs shared/
du -sh .whl
# the device tool carries ignored paths of 64 MiB in all
carried=$(du -sb .whl shared | awk '{s += $1} END {print s}')
if [ "$carried" -gt $(( 64 * 1024 * 1024 )) ]; then
  echo "gpu_wheels.sh: .whl and shared hold $(( carried / 1024 / 1024 )) MiB, more than the 64 MiB the device tool carries" >&2
  exit 1
fi
