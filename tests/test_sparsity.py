"""`llmcompressor:` (Axolotl's sparse fine-tuning example): a 2:4 sparse model trains with its zeros kept in the
targeted weights and nowhere else; recipes ft cannot run are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_ft
from train_helpers import make_config

RECIPE = {"finetuning_stage": {"finetuning_modifiers": {"ConstantPruningModifier": {
    "targets": ["re:.*q_proj.weight", "re:.*gate_proj.weight"], "start": 0}}}}


def _two_of_four(folder: Path, out: Path) -> dict:
    """The model of `folder` with every linear weight of its layers 2:4 sparse (the two smallest of each four)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                groups = p.view(-1, 4)
                smallest = groups.abs().argsort(dim=1)[:, :2]
                groups.scatter_(1, smallest, 0.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_sparse_model_keeps_its_zeros_where_the_recipe_says(tmp_path: Path, tiny_model_dir):
    from safetensors.torch import load_file

    before = _two_of_four(tiny_model_dir("llama"), tmp_path / "sparse")
    make_config(tmp_path, tmp_path / "sparse", max_steps=3, learning_rate=0.01, optimizer="adamw_torch",
                llmcompressor={"recipe": RECIPE, "save_compressed": True})
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "llmcompressor: zeros kept in 4 weights" in result.stderr and "save_compressed ignored" in result.stderr
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, was in before.items():
        if not name.endswith("proj.weight"):
            continue
        now, zero = after[name], was == 0
        assert float(zero.float().mean()) == 0.5
        moved = float((now[~zero] - was[~zero]).abs().max())
        assert moved > 1e-4, name  # the weights trained
        if "q_proj" in name or "gate_proj" in name:
            assert bool((now[zero] == 0).all()), name  # targeted: the zeros stay
        else:
            assert float(now[zero].abs().max()) > 1e-4, name  # not targeted: its zeros move as any weight does


@pytest.mark.parametrize("keys, said", [
    ({"llmcompressor": {"recipe": {"stage": {"m": {"GPTQModifier": {"scheme": "W4A16"}}}}}},
     "LLM Compressor's `GPTQModifier` is not supported by ft"),
    ({"llmcompressor": {"recipe": {"stage": {"m": {"ConstantPruningModifier": {"targets": "re:.*", "mask": 1}}}}}},
     "`ConstantPruningModifier.mask` is not a setting ft reads"),
    ({"llmcompressor": {"recipe": "recipe.yaml"}}, "is read written inline"),
    ({"llmcompressor": {"recipe": RECIPE}, "adapter": "lora"}, "`adapter: lora` trains a dense update beside them"),
])
def test_what_ft_cannot_keep_is_refused_by_name(keys: dict, said: str, tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, tiny_model_dir("llama"), **keys)
    assert said in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_targets_that_match_no_weight_stop_the_run(tmp_path: Path, tiny_model_dir):
    recipe = {"s": {"m": {"ConstantPruningModifier": {"targets": ["re:.*qkv_proj.weight"]}}}}
    make_config(tmp_path, tiny_model_dir("llama"), max_steps=1, llmcompressor={"recipe": recipe})
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "match no weight of this model" in result.stderr, result.stderr[-2000:]
