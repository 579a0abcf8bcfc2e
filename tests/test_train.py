"""Training on one device with tiny models: full, LoRA, QLoRA and 8-bit LoRA really learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_ft
from train_helpers import build, fixed_batch, loss_on, make_config, snapshot

METHODS = {
    "full": {},
    "lora": {"adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True},
    "qlora": {"adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True},
    "lora-8bit": {"adapter": "lora", "load_in_8bit": True, "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_learns_and_touches_only_trainable_params(method, tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), max_steps=6, **METHODS[method])
    trainer, model, tokenizer = build(cfg)
    batch = fixed_batch(tokenizer)
    before_loss = loss_on(model, batch)
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    unchanged = [n for n in trainable if bool((before[n] == after[n]).all())]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved = [n for n in before if n not in trainable and not bool((before[n] == after[n]).all())]
    assert not moved, f"frozen parameters that changed: {moved}"
    if method != "full":
        assert all("lora_" in n for n in trainable)
    assert loss_on(model, batch) < before_loss


def test_cli_run_leaves_model_logs_and_plot(tmp_path: Path, tiny_model_dir):
    from ft.commands.config import load as load_config

    make_config(tmp_path, tiny_model_dir("llama"), val_set_size=4, evals_per_epoch=1, flash_attention=True, **METHODS["lora"])
    assert run_ft("preprocess", "cfg.yml", cwd=tmp_path).returncode == 0
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "prepared dataset found in cache" in result.stderr  # ft train reuses what ft preprocess made
    assert "flash-attn is not installed" in result.stderr and "falling back to sdpa" in result.stderr
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "ft_config.yml",
                 "metrics.jsonl", "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    assert load_config(out / "ft_config.yml").adapter.lora_r == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert len(losses) >= 4 and all(k in losses[0] for k in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "memory_mb"))
    assert any("eval_loss" in r and "perplexity" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and "perplexity" in summary
    assert "trainable parameters:" in result.stderr and "done: 4 steps" in result.stderr


def test_added_tokens_resize_and_train_embeddings(tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), tokens=["<think>"], **METHODS["lora"])
    trainer, model, tokenizer = build(cfg)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n for n in trained) and any("lm_head" in n for n in trained)


def test_nan_loss_stops_with_the_step(tmp_path: Path, tiny_model_dir):
    make_config(tmp_path, tiny_model_dir("llama"), learning_rate=1.0e30, max_grad_norm=0, optimizer="sgd", max_steps=8)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "became nan at step" in result.stderr or "became inf at step" in result.stderr


def test_tokens_seen_are_the_collators_count_without_a_sync_a_step(tmp_path: Path, tiny_model_dir):
    """The Trainer's own token count reads a device value every micro batch (a host sync on a GPU), as its
    non-finite-loss filter would; ft turns both off and adds the collator's count at each training log."""
    cfg = make_config(tmp_path, tiny_model_dir("llama"), max_steps=3, logging_steps=1, gradient_accumulation_steps=2,
                      **METHODS["lora"])
    trainer, _, _ = build(cfg)
    assert trainer.args.include_num_input_tokens_seen == "no" and not trainer.args.logging_nan_inf_filter
    trainer.train()
    assert trainer.real_tokens > 0 and trainer.state.num_input_tokens_seen == trainer.real_tokens


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma2", "phi3"])
def test_other_architectures_train_with_lora(arch, tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir(arch), max_steps=3, **METHODS["lora"])
    trainer, model, tokenizer = build(cfg)
    batch = fixed_batch(tokenizer)
    before = loss_on(model, batch)
    trainer.train()
    assert loss_on(model, batch) < before


@pytest.mark.slow
def test_output_dir_means_the_run_folder_on_every_command(tmp_path: Path, tiny_model_dir):
    """`--output-dir` overrides the config key on merge-lora too; the merged model's place is --merged-dir."""
    make_config(tmp_path, tiny_model_dir("llama"), max_steps=2, **METHODS["lora"])
    assert run_ft("train", "cfg.yml", "--output-dir", "runs/a", cwd=tmp_path).returncode == 0
    result = run_ft("merge-lora", "cfg.yml", "--output-dir", "runs/a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs/a/merged/config.json").is_file()
    assert "--output-dir is the run's output_dir" in result.stderr and "--merged-dir" in result.stderr
    result = run_ft("merge-lora", "cfg.yml", "--output-dir", "runs/a", "--merged-dir", "deploy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "deploy/config.json").is_file()
