"""Equivalences that pin training down: accumulation, resume, merge, and train/serve prompt parity."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from compare import relative_difference
from train_helpers import build, fixed_batch, make_config, snapshot

FULL = {"optimizer": "adamw_torch", "learning_rate": 0.001, "lr_scheduler": "constant", "num_epochs": 1}


def _train_weights(tmp: Path, model_dir: Path, **keys) -> dict:
    cfg = make_config(tmp, model_dir, **{**FULL, **keys})
    trainer, model, _ = build(cfg)
    trainer.train()
    return snapshot(model)


def test_micro_batch_4_equals_1_by_accumulation_4(tmp_path: Path, tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _train_weights(tmp_path / "a", model_dir, micro_batch_size=4, gradient_accumulation_steps=1, max_steps=3)
    b = _train_weights(tmp_path / "b", model_dir, micro_batch_size=1, gradient_accumulation_steps=4, max_steps=3)
    base = snapshot(__import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir))
    moved_a, moved_b = ({n: w[n] - base[n] for n in base} for w in (a, b))
    # what is compared is what training changed: the same updates to fp32 round-off (measured: ~2e-5 of each
    # tensor's largest update; Adam divides by sqrt(v), which magnifies the round-off of tiny gradients)
    worst = relative_difference(moved_a, moved_b)
    assert worst < 1e-3, worst
    assert min(float(m.abs().max()) for m in moved_a.values()) > 1e-4  # and training did move every weight


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path, tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    keys = dict(max_steps=6, save_steps=3, micro_batch_size=2)
    whole = _train_weights(tmp_path / "a", model_dir, **keys)
    # the second run starts from the first run's checkpoint at step 3, found automatically in output_dir
    (tmp_path / "b/out").mkdir()
    shutil.copytree(tmp_path / "a/out/checkpoint-3", tmp_path / "b/out/checkpoint-3")
    cfg = make_config(tmp_path / "b", model_dir, **{**FULL, **keys})
    from ft.train.checkpoints import resume_point

    point = resume_point(None, True, cfg.training.output_dir)
    assert point is not None and point.name == "checkpoint-3"
    trainer, model, _ = build(cfg)
    trainer.train(resume_from_checkpoint=str(point))
    assert trainer.state.global_step == 6
    resumed = snapshot(model)
    worst = relative_difference(resumed, whole)
    assert worst < 1e-6, worst


def test_incomplete_checkpoints_are_skipped(tmp_path: Path):
    """Only a checkpoint marked complete (after its files were fsynced) is trusted; the others are removed."""
    from ft.train.checkpoints import mark_complete, newest_checkpoint, resume_point

    for step, files in ((2, ("trainer_state.json", "model.safetensors", "optimizer.pt")), (4, ("trainer_state.json", "model.safetensors"))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    mark_complete(tmp_path / "checkpoint-2", 2)
    assert newest_checkpoint(str(tmp_path)).name == "checkpoint-2"
    assert resume_point(None, True, str(tmp_path)).name == "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()


def test_merged_model_matches_base_plus_adapter(tmp_path: Path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft.commands.merge import run_merge

    model_dir = tiny_model_dir("llama")
    cfg = make_config(tmp_path, model_dir, adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True,
                      learning_rate=0.01, max_steps=4)
    trainer, model, tokenizer = build(cfg)
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    merged_dir = run_merge(cfg, None)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), cfg.training.output_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = fixed_batch(tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        a, b, c = merged(**inputs).logits, with_adapter(**inputs).logits, plain(**inputs).logits
    assert relative_difference([a], [b]) < 1e-5  # tolerance: fp32 re-association of W + BA
    assert relative_difference([a], [c]) > 1e-3  # the adapter did change the model
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_inference_prompt_is_the_training_prompt(tmp_path: Path, tiny_model_dir):
    """The tokens ft inference feeds the model are exactly a training row's tokens before its output."""
    from ft.commands.inference import prompt_text
    from ft.commands.preprocess import prepare_data
    from ft.data.labels import IGNORE
    from ft.tokenizer.load import load_tokenizer
    from train_helpers import alpaca_rows

    cfg = make_config(tmp_path, tiny_model_dir("llama"), shuffle_merged_datasets=False, sequence_len=256)
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, tokenizer)
    ids = prepared.train.column("input_ids")[0].as_py()
    labels = prepared.train.column("labels")[0].as_py()
    prompt_ids = ids[: next(i for i, l in enumerate(labels) if l != IGNORE)]
    row = alpaca_rows()[0]
    text = prompt_text(cfg, tokenizer, row["instruction"], row["input"])
    assert [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids
