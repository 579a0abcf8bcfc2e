"""Quantization-aware training (`qat:`, Axolotl's keys; ft.model.qat with torchao): the linear layers but the head
see their weights fake-quantized (int4 in groups: at most 16 values a group), the gradient passes the rounding
straight through, fake_quant_after_n_steps holds it off until that step, and what is saved is a plain model.
The checks that import torchao run in processes of their own (tests/qat_checks.py) with .venv/qat on their path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_ft
from train_helpers import make_config

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".venv/qat"
QAT = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}


@pytest.mark.skipif(not (SITE / "torchao").is_dir(), reason="torchao is not in .venv/qat (README's test command puts it there)")
@pytest.mark.parametrize("check", ["groups_and_head", "trains_and_saves", "fp8_trains_and_saves"])
def test_qat(check: str, tmp_path: Path, tiny_model_dir):
    """groups_and_head: every linear layer but the head fake-quantizes, int4 weights take at most 16 values a
    group of 32, the fake quantizers off give the plain model's logits; trains_and_saves: the weights move through
    the rounding, the quantizers start at fake_quant_after_n_steps, the saved model is the plain architecture
    with the trained weights."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tests/qat_checks.py"), check, str(tmp_path), str(tiny_model_dir("llama"))],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("keys, words", [
    ({"adapter": "lora", "qat": QAT}, "quantization-aware training trains the weights it fake-quantizes"),
    ({"adapter": "qlora", "load_in_4bit": True, "qat": QAT}, "remove `adapter: qlora`"),
    ({"qat": {"weight_dtype": "int3"}}, "`int3` is not a QAT data type"),
    ({"qat": {"activation_dtype": "int4"}}, "int4 activations are not supported"),
    ({"qat": {**QAT, "fake_quant_after_n_steps": 9}, "max_steps": 5}, "the fake quantization would never start"),
    ({"fp8": True, "adapter": "lora"}, "FP8 training (`fp8`) is full fine-tuning"),
    ({"fp8_enable_fsdp_float8_all_gather": True}, "set `fp8: true` with FSDP2"),
])
def test_what_qat_cannot_do_is_refused_by_validate(keys: dict, words: str, tmp_path: Path):
    import yaml

    (tmp_path / "cfg.yml").write_text(yaml.safe_dump({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], **keys}))
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the float4 kernels run on a GPU")
def test_float4_qat_without_a_gpu_is_one_sentence(tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), qat={"weight_dtype": "nvfp4", "activation_dtype": "nvfp4", "group_size": 16})
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "runs float4 kernels, which need a CUDA GPU" in result.stderr, result.stderr[-2000:]
