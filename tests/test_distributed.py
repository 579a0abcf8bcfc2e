"""Real processes: two ranks over gloo (torchrun, CPU) train packed batches in step with each other."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from train_helpers import make_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_get_the_same_packed_batches(tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), sample_packing=True, sequence_len=256, micro_batch_size=2,
                max_steps=None, num_epochs=1, adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ft", "train", "cfg.yml"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    bins = int(re.search(r"packing train: \d+ rows into (\d+) bins", result.stderr).group(1))
    steps = json.loads((tmp_path / "out/summary.json").read_text())["steps"]
    per_rank = -(-bins // 2)  # the sampler gives each rank the same number of bins
    assert steps == -(-per_rank // 2)
