"""ReLoRA (Axolotl's llama-2/relora.yml): a restart merges LoRA into the base without changing what the model
computes, starts LoRA again and prunes its optimizer state; the run writes the whole model it trained, which
equals its last checkpoint's base and adapter put together; it resumes exactly; the learning rate restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_ft
from train_helpers import build, fixed_batch, make_config

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True, "relora": True,
        "optimizer": "adamw_torch", "learning_rate": 0.01}


def _logits(model, batch):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _step(trainer, model, batch):
    """One optimizer step on `batch`, so that LoRA's B and the optimizer's moments are not zero."""
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    model.train()
    model(**batch).loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()


@pytest.mark.parametrize("quantized", [False, True])
def test_a_restart_keeps_what_the_model_computes_and_starts_lora_again(quantized: bool, tmp_path: Path, tiny_model_dir):
    import torch

    keys = {**LORA, "adapter": "qlora", "load_in_4bit": True} if quantized else LORA
    cfg = make_config(tmp_path, tiny_model_dir("llama"), jagged_restart_steps=3, **keys)
    trainer, model, tokenizer = build(cfg)
    batch = fixed_batch(tokenizer)
    _step(trainer, model, batch)
    relora = trainer.relora
    name, layer = next(iter(relora.layers.items()))
    a_before = layer.lora_A["default"].weight.detach().clone()
    before = _logits(model, batch)
    delta = layer.get_delta_weight("default").detach().clone()
    assert float(delta.abs().max()) > 0
    if quantized:
        from ft.train.relora import _dequantize

        base_before = _dequantize(layer.get_base_layer().weight).cpu()
    else:
        base_before = layer.get_base_layer().weight.detach().clone()
    relora.restart(trainer.optimizer, 1)
    after = _logits(model, batch)
    assert float(layer.lora_B["default"].weight.abs().max()) == 0 and not torch.equal(a_before, layer.lora_A["default"].weight)
    if quantized:  # the 16-bit copy took the update exactly; the layer holds it quantized again
        assert torch.allclose(relora.copies[name], base_before + delta, atol=1e-6)
        from ft.train.relora import _dequantize

        import bitsandbytes.functional as F

        w = layer.get_base_layer().weight
        packed, state = F.quantize_4bit(relora.copies[name].to(w.quant_state.dtype), blocksize=w.blocksize,
                                        compress_statistics=w.compress_statistics, quant_type=w.quant_type)
        assert torch.equal(_dequantize(w).cpu(), F.dequantize_4bit(packed, state))  # bitsandbytes' own quantization
        # of the copy; what the model computes moves by that rounding only (about a tenth, on this tiny model)
        assert float((after - before).abs().max()) <= 0.2 * float(before.abs().max())
    else:  # merged in place: the same function
        assert torch.allclose(layer.get_base_layer().weight, base_before + delta, atol=1e-6)
        assert float((after - before).abs().max()) <= 1e-5 * float(before.abs().max())
    state = trainer.optimizer.state[layer.lora_B["default"].weight]
    zeroed = float((state["exp_avg_sq"] == 0).float().mean())
    assert 0.85 <= zeroed <= 0.95, zeroed  # relora_prune_ratio's default 0.9, by magnitude


@pytest.mark.parametrize("quantized", [False, True])
def test_the_run_writes_the_model_it_trained_and_resumes_to_the_same(quantized: bool, tmp_path: Path, tiny_model_dir):
    """A 4-bit base's output is its 16-bit copy with the last LoRA merged (what the last step trained with,
    dequantized), here with bitsandbytes' 8-bit Adam, whose blocks are pruned as the others."""
    import shutil

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    keys = dict(max_steps=7, save_steps=2, jagged_restart_steps=3, jagged_restart_warmup_steps=2,
                lr_scheduler="constant", **LORA)
    if quantized:
        keys.update(adapter="qlora", load_in_4bit=True, optimizer="adamw_bnb_8bit", lora_r=64, lora_alpha=128)
    make_config(tmp_path, tiny_model_dir("llama"), **keys)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("ReLoRA restart") == 2, result.stderr[-3000:]
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists() and "quantization_config" not in json.loads((out / "config.json").read_text())
    whole = AutoModelForCausalLM.from_pretrained(out)

    # the last checkpoint (step 7): its base as merged at step 6 and its adapter, put together by hand
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    merged = load_file(str(out / "checkpoint-7" / "relora.safetensors"))
    assert len(merged) == 14
    base.load_state_dict(merged, strict=False)
    rebuilt = PeftModel.from_pretrained(base, out / "checkpoint-7")
    from transformers import AutoTokenizer

    batch = fixed_batch(AutoTokenizer.from_pretrained(out))
    want = _logits(rebuilt, batch)
    assert float((_logits(whole, batch) - want).abs().max()) <= 1e-4 * float(want.abs().max())

    # the rate each step trained with: constant × the jagged factor (period 3, warmup 2, anneal 1, floor 0.001):
    # the first period as scheduled; from each restart (before steps 4 and 7) the floor, then half-way, then whole
    rates = [r["learning_rate"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    factor = [1, 1, 1, 0.001, 0.5005, 1, 0.001]
    assert len(rates) == 7 and all(abs(r - 0.01 * f) <= 1e-9 for r, f in zip(rates, factor)), rates

    # resume from step 4 (one restart merged): the run ends with the same whole model
    again = tmp_path / "again"
    shutil.copytree(out / "checkpoint-4", again / "out" / "checkpoint-4")
    make_config(again, tiny_model_dir("llama"), **keys)
    result = run_ft("train", "cfg.yml", cwd=again)
    assert result.returncode == 0 and "read back from" in result.stderr, result.stderr[-3000:]
    resumed, first = load_file(str(again / "out" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(resumed[k], first[k], atol=1e-6) for k in first), "the resumed run ended elsewhere"

    # a run stopped while writing its output (its last checkpoint complete) finishes from it: the same whole model
    last = tmp_path / "last"
    shutil.copytree(out / "checkpoint-7", last / "out" / "checkpoint-7")
    make_config(last, tiny_model_dir("llama"), **keys)
    result = run_ft("train", "cfg.yml", cwd=last)
    assert result.returncode == 0 and "holds the last step already" in result.stderr, result.stderr[-3000:]
    finished = load_file(str(last / "out" / "model.safetensors"))
    assert all(torch.allclose(finished[k], first[k], atol=1e-6) for k in first), "the finished run wrote another model"


@pytest.mark.parametrize("keys, said", [
    ({"relora": True, "adapter": "lora", "jagged_restart_steps": 3, "optimizer": "sgd"}, "prunes Adam's moments"),
    ({"relora": True, "adapter": "lora"}, "set it"),
    ({"relora": True, "jagged_restart_steps": 3}, "set `adapter: lora` or `qlora`"),
    ({"relora": True, "adapter": "lora", "jagged_restart_steps": 3, "peft_use_dora": True}, "`peft_use_dora`"),
    ({"jagged_restart_warmup_steps": 3}, "set `jagged_restart_steps`"),
])
def test_relora_settings_it_cannot_honour_are_refused(keys: dict, said: str, tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, tiny_model_dir("llama"), **keys)
    assert said in str(info.value), str(info.value)
