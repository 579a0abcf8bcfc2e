"""Smaller training options: registries, pad token, continuing an adapter, early stopping, attention."""

from __future__ import annotations

from pathlib import Path

from train_helpers import build, make_config

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}


def test_registered_names_are_transformers_names():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from ft.train.optimizers import OPTIMIZERS
    from ft.train.schedulers import SCHEDULERS

    assert {OPTIMIZERS.get(n).hf_name for n in OPTIMIZERS} <= {o.value for o in OptimizerNames}
    assert {SCHEDULERS.get(n) for n in SCHEDULERS} <= {s.value for s in SchedulerType}


def test_missing_pad_token_gets_a_default(tmp_path: Path, tiny_model_dir, caplog):
    import json
    import shutil

    from ft.config.model import ModelConfig
    from ft.tokenizer.load import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tiny_model_dir("llama"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token")
    config.pop("unk_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(ModelConfig(base_model=str(folder)))
    assert tok.pad_token == tok.eos_token
    assert "no pad token" in caplog.text
    tok = load_tokenizer(ModelConfig(base_model=str(folder), special_tokens={"pad_token": "<pad>"}))
    assert tok.pad_token == "<pad>"


def test_attention_choices():
    from ft.config.model import ModelConfig
    from ft.model.attention import resolve_attention

    base = {"base_model": "m"}
    assert resolve_attention(ModelConfig(**base)) == (None, None)
    assert resolve_attention(ModelConfig(**base, sdp_attention=True))[0] == "sdpa"
    assert resolve_attention(ModelConfig(**base, eager_attention=True))[0] == "eager"
    assert resolve_attention(ModelConfig(**base, attn_implementation="flex_attention"))[0] == "flex_attention"
    impl, warning = resolve_attention(ModelConfig(**base, flash_attention=True))
    assert impl == "sdpa" and "flash-attn is not installed" in warning


def test_continue_from_a_saved_adapter(tmp_path: Path, tiny_model_dir):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_config(tmp_path / "a", tiny_model_dir("llama"), **LORA)
    trainer, model, _ = build(first)
    trainer.train()
    trainer.save_model(first.training.output_dir)
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    second = make_config(tmp_path / "b", tiny_model_dir("llama"), lora_model_dir=first.training.output_dir, **LORA)
    trainer, model, _ = build(second)
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert all(bool((loaded[n] == saved[n]).all()) for n in saved)
    assert all(p.requires_grad for p in loaded.values())


def test_early_stopping_and_group_by_length_run(tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), val_set_size=4, eval_steps=1, early_stopping_patience=1,
                      group_by_length=True, learning_rate=5.0, optimizer="sgd", max_steps=20, **LORA)
    trainer, _, _ = build(cfg)
    assert trainer.args.load_best_model_at_end and trainer.args.save_steps == 1
    trainer.train()
    assert trainer.state.global_step < 20  # the eval loss stopped improving and training stopped
