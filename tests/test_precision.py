"""What `bf16: true` trains: bf16 compute with fp32 master weights for trainable full-size weights, so that
small updates are kept; `bf16: full` is pure bf16, and the log says which runs and what it costs.

One AdamW step at lr 1e-5 on weights of a pretrained scale (std 0.02) changes nearly every fp32 master weight,
and only the smallest weights when they are bf16 (scripts/bench_precision.py: 96% against 15%).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import build, make_config, snapshot


@pytest.fixture(scope="module")
def pretrained_scale(tmp_path_factory) -> Path:
    from ft.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("scaled"), arch="llama", initializer_range=0.02)


def _one_step(tmp_path: Path, model_dir: Path, caplog, **keys):
    cfg = make_config(tmp_path, model_dir, optimizer="adamw_torch", learning_rate=1e-5, max_steps=1, **keys)
    with caplog.at_level("INFO", logger="ft"):
        trainer, model, _ = build(cfg)
    before = snapshot(model)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    trainer.train()
    after = snapshot(model)
    layers = [n for n in before if ".layers." in n]  # (embedding rows of tokens the batch lacks get no gradient)
    changed = sum(int((after[n] != before[n]).sum()) for n in layers) / sum(before[n].numel() for n in layers)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("precision:"))
    return trainer, dtypes, changed, line


def test_bf16_true_keeps_fp32_master_weights_and_their_updates(tmp_path: Path, pretrained_scale, caplog):
    trainer, dtypes, changed, line = _one_step(tmp_path, pretrained_scale, caplog, bf16=True)
    assert dtypes == {torch.float32} and trainer.args.bf16  # fp32 weights, bf16 autocast compute
    assert changed > 0.9, changed
    assert "bf16 compute, fp32 master weights" in line and "GiB" in line and "`bf16: full`" in line


def test_bf16_full_trains_pure_bf16_and_loses_small_updates(tmp_path: Path, pretrained_scale, caplog):
    trainer, dtypes, changed, line = _one_step(tmp_path, pretrained_scale, caplog, bf16="full")
    assert dtypes == {torch.bfloat16} and trainer.args.bf16
    assert changed < 0.5, changed
    assert line.startswith("precision: pure bf16 (`bf16: full`)")


def test_embeddings_trained_beside_lora_get_fp32_master_weights(tmp_path: Path, tiny_model_dir, caplog):
    """New tokens: the resized embeddings train in full beside LoRA; under `bf16: true` they are fp32."""
    trainer, dtypes, _, _ = _one_step(tmp_path, tiny_model_dir("llama"), caplog, bf16=True, adapter="lora",
                                      lora_target_linear=True, tokens=["<new_token>"])
    assert dtypes == {torch.float32}
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert names and any("embed_tokens" in n for n in names), names
